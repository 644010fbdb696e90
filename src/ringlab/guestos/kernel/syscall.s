; syscall.s - the system call layer: `int 0x80`, number in eax, arguments in ebx, ecx, edx.
;
; syscall_dispatch looks the number up in syscall_table and stores the handler's eax into the
; frame's eax, which trap_return hands back to the caller; every other register is restored
; unchanged.  Handlers get the frame in ebx and read their arguments from it (F_EBX, F_ECX,
; F_EDX).  The gate is a trap gate: handlers run with IF = 1 and may be interrupted by the timer
; (which never preempts the kernel).  A bad argument is an error code, never a kernel fault: user
; pointers are checked against the caller's page table before the kernel touches them.

; syscall_dispatch(ebx = frame)
syscall_dispatch:
    mov eax, [ebx + F_EAX]
    cmp eax, NSYSCALLS              ; unsigned: negative numbers are huge, so also -ENOSYS
    jae .enosys
    shl eax, 2
    add eax, syscall_table
    mov eax, [eax]
    call eax
    mov [ebx + F_EAX], eax
    ret
.enosys:
    mov [ebx + F_EAX], 0 - ENOSYS
    ret

; number 0 is no system call (a zeroed eax is a classic bug)
sys_none:
    mov eax, 0 - ENOSYS
    ret

; exit(code): never returns
sys_exit:
    mov eax, [ebx + F_EBX]
    call do_exit

; write(buf, len) -> len | -EFAULT
sys_write:
    mov eax, [ebx + F_EBX]
    mov edx, [ebx + F_ECX]
    call user_range_ok
    test eax, eax
    jz .efault
    mov eax, [ebx + F_EBX]
    mov edx, [ebx + F_ECX]
    call console_write
    mov eax, [ebx + F_ECX]
    ret
.efault:
    mov eax, 0 - EFAULT
    ret

; getpid() -> pid
sys_getpid:
    mov eax, [current]
    mov eax, [eax + P_PID]
    ret

; yield() -> 0: let the next runnable process have the CPU
sys_yield:
    call schedule
    xor eax, eax
    ret

; spawn(program) -> pid | -EINVAL | -EAGAIN | -ENOMEM
sys_spawn:
    mov eax, [ebx + F_EBX]
    mov edx, [current]
    call proc_spawn
    ret

; wait(pid) -> exit code | -ECHILD
sys_wait:
    mov eax, [ebx + F_EBX]
    call proc_wait
    ret

; map(vaddr) -> 0 | -EINVAL | -EEXIST | -ENOMEM
sys_map:
    mov eax, [ebx + F_EBX]
    call user_map
    ret

; unmap(vaddr) -> 0 | -EINVAL
sys_unmap:
    mov eax, [ebx + F_EBX]
    call user_unmap
    ret

; sleep(ticks) -> 0
sys_sleep:
    mov eax, [ebx + F_EBX]
    call proc_sleep
    xor eax, eax
    ret

; catch(vector, handler) -> 0 | -EINVAL: from now on, the exception `vector` (CATCH_DE, CATCH_UD,
; CATCH_GP) raised in ring 3 runs `handler` (a user address; 0 = kill again) instead of killing the
; process (trap.s, deliver_to_user)
sys_catch:
    mov eax, [ebx + F_EBX]
    call catch_slot
    test eax, eax
    jz .einval
    mov ecx, [ebx + F_ECX]
    test ecx, ecx
    jz .set                         ; 0: the default again
    cmp ecx, USER_BASE
    jb .einval
    cmp ecx, USER_TOP
    jae .einval
.set:
    mov edx, [current]
    add edx, eax
    mov [edx], ecx
    xor eax, eax
    ret
.einval:
    mov eax, 0 - EINVAL
    ret

; bench(op, iterations) -> 0 | -EINVAL
; A microbenchmark: `iterations` times one sensitive operation, in a tight kernel loop, so its
; cost per iteration is the operation plus two innocuous instructions (dec, jnz).
sys_bench:
    mov eax, [ebx + F_EBX]          ; op
    mov ecx, [ebx + F_ECX]          ; iterations
    test ecx, ecx
    jz .ok                          ; zero iterations: nothing to do
    cmp eax, BENCH_PORT_IN
    je .port_in
    cmp eax, BENCH_PORT_OUT
    je .port_out
    cmp eax, BENCH_CR8
    je .cr8
    cmp eax, BENCH_PTE
    je .pte
    cmp eax, BENCH_CALLRET
    je .callret
    mov eax, 0 - EINVAL
    ret
.callret:
    call .leaf                      ; a direct call, and the leaf's ret: an indirect branch
    dec ecx
    jnz .callret
    jmp .ok
.leaf:
    ret
.port_in:
    PV_IN eax, PORT_LSR
    dec ecx
    jnz .port_in
    jmp .ok
.port_out:
    xor eax, eax
.port_out_loop:
    PV_OUT PORT_POST, eax
    dec ecx
    jnz .port_out_loop
    jmp .ok
.cr8:
    xor eax, eax                    ; task priority 0: the value every kernel runs at
.cr8_loop:
    PV_WRITE_CR8 eax
    dec ecx
    jnz .cr8_loop
    jmp .ok
.pte:
    ; kpt[0], the entry of the never-mapped page 0, rewritten with its own value (not present)
    ; and flushed: a real page-table write plus TLB flush that changes no mapping.
    push edi
    mov edi, kpt
    xor eax, eax
    xor edx, edx                    ; the linear address the entry maps: 0
.pte_loop:
    PV_SET_PTE edi, eax
    PV_INVLPG edx
    dec ecx
    jnz .pte_loop
    pop edi
.ok:
    xor eax, eax
    ret
