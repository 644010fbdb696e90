; kernel.s - the Ringlab guest kernel for RL-32 (docs/machine.md): top-level file.
;
; A small Unix-like kernel: per-process address spaces, round-robin preemption on the timer,
; demand paging, process spawn/wait/exit, and user faults that kill only the process.
; docs/guest-os.md describes it; ringlab_guest/build.py assembles it.
;
; Build: build.py assembles this file's text with, appended, a generated tail that defines
;   program_count    .dword: how many user programs are embedded
;   program_table    one PROG_ENTRY_SIZE entry per program (see defs.s PROG_*)
;   kernel_end       page-aligned end of the image: physical frames from here on are free
; so the kernel cannot be assembled alone.  -D PARAVIRT selects the (not yet built) paravirt
; flavour (see pvops.s); -D TIMER_PERIOD=n sets the tick; -D KERNEL_SELFTEST_PANIC makes the kernel
; fault on purpose after boot (tests use it to see a panic).
;
; Physical memory (identity-mapped, supervisor-only, in every address space through PDE 0):
;   0x00000000  page 0: never mapped, so a kernel null-pointer access faults (and panics)
;   0x00001000  kernel code, data, static kernel stacks, the embedded user programs
;   kernel_end  free frames, up to min(RAM size, 4 MiB), handed out by frame_alloc
; Each process's address space adds PDE 1 (user): its program at USER_BASE and the demand-zero
; heap/stack region [USER_HEAP, USER_TOP) (abi.s).
;
; Register conventions (every kernel file):
;   - functions take arguments in eax, edx, ecx (in that order) and return in eax;
;   - eax, ecx, edx are caller-saved; ebx, esi, edi, ebp are callee-saved;
;   - trap handlers receive the trap frame's address in ebx (F_* offsets, defs.s);
;   - esp is the current process's kernel stack (or the boot stack before the first switch).
;   - every sensitive/privileged instruction is a PV_* macro (pvops.s), nothing else.

.org 0x1000
.entry kernel_entry

.include "pvops.s"
.include "abi.s"
.include "defs.s"

.include "boot.s"
.include "trap.s"
.include "syscall.s"
.include "sched.s"
.include "mm.s"
.include "console.s"
.include "data.s"
; build.py appends the generated program table and `kernel_end` here.
