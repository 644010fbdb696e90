; abi.s - the user/kernel contract of the Ringlab guest OS: constants only, no code or data.
;
; Included by the kernel (kernel.s) AND by every user program (workloads/lib.s), so the two
; sides can never disagree on a syscall number, an error code or the user address-space layout.
; docs/guest-os.md is the prose version of this file.

; ---- system calls: `int 0x80`, number in eax, arguments in ebx, ecx, edx, result in eax ----
; Every register except eax is preserved.  Errors come back as small negative numbers (-errno).
.equ SYSCALL_VECTOR, 0x80
.equ SYS_EXIT,    1     ; exit(code)                does not return
.equ SYS_WRITE,   2     ; write(buf, len)       ->  len, or -EFAULT
.equ SYS_GETPID,  3     ; getpid()              ->  pid
.equ SYS_YIELD,   4     ; yield()               ->  0
.equ SYS_SPAWN,   5     ; spawn(program)        ->  pid, or -EINVAL / -EAGAIN / -ENOMEM
.equ SYS_WAIT,    6     ; wait(pid)             ->  the child's exit code, or -ECHILD
.equ SYS_MAP,     7     ; map(vaddr)            ->  0, or -EINVAL / -EEXIST / -ENOMEM
.equ SYS_UNMAP,   8     ; unmap(vaddr)          ->  0, or -EINVAL
.equ SYS_BENCH,   9     ; bench(op, iterations) ->  0, or -EINVAL
.equ SYS_SLEEP,  10     ; sleep(ticks)          ->  0  (blocks for that many timer ticks)
.equ SYS_CATCH,  11     ; catch(vector, handler) -> 0, or -EINVAL  (a user-mode fault handler)
.equ NSYSCALLS,  12     ; numbers >= this (and 0) return -ENOSYS

; catch(vector, handler): the exceptions a process may handle itself.  When one of them is raised
; in ring 3 and the process registered a handler for it, the kernel does not kill the process: it
; pushes the faulting instruction's address on the user stack and resumes the process at the
; handler, every register as it was.  The handler returns there with `ret` (running the
; instruction again), or past it (`add [esp], <length>` first), or anywhere it stores in [esp].
; handler 0 restores the default (the process is killed).
.equ CATCH_DE,    0     ; divide error
.equ CATCH_UD,    6     ; invalid opcode
.equ CATCH_GP,   13     ; general protection

; bench(op, n) operations: an in-kernel loop of n times one sensitive operation
.equ BENCH_PORT_IN,  0  ; in  eax, 0x3FD (the console's line status)
.equ BENCH_PORT_OUT, 1  ; out 0x80, eax
.equ BENCH_CR8,      2  ; mov cr8, eax
.equ BENCH_PTE,      3  ; write a PTE, then invlpg its address
.equ BENCH_CALLRET,  4  ; call a leaf function, which returns (ret: an indirect branch)
.equ BENCH_OPS,      5

; errors (returned negated, Linux numbering so they are familiar)
.equ ECHILD, 10         ; wait: no such child of the caller
.equ EAGAIN, 11         ; spawn: the process table is full
.equ ENOMEM, 12         ; spawn/map: out of physical frames
.equ EFAULT, 14         ; write: the buffer is not mapped user memory
.equ EEXIST, 17         ; map: the page is already mapped
.equ EINVAL, 22         ; bad argument (program number, address, bench op, catch vector)
.equ ENOSYS, 38         ; unknown system call number

; A process killed by an exception exits with KILLED_STATUS + vector (128 = divide error,
; 134 = invalid opcode, 141 = general protection, 142 = page fault), like a shell's 128 + signal.
.equ KILLED_STATUS, 128

; ---- the user address space (PDE 1: one page table covers it) ----
.equ USER_BASE,  0x00400000   ; programs are linked here (lib.s does `.org USER_BASE`)
.equ USER_HEAP,  0x00500000   ; [USER_HEAP, USER_TOP): demand-zero heap and stack, and map/unmap
.equ USER_TOP,   0x00800000   ; the initial user esp; the stack grows down into the heap region
.equ PAGE_SIZE,  4096
