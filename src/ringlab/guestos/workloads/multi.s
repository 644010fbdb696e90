; multi.s - the `multi` workload, program 0 (init): several processes sharing the CPU.
; Sleeps one tick first (nothing else exists yet, so the kernel idles in `sti; hlt`), spawns
; WORKERS copies of program 1 (multi_worker.s), which never yield, and waits for them all.
; The timer preempts the workers round robin, so their progress lines interleave; the output
; is deterministic because the timer counts retired instructions.
; -D WORKERS=n (default 3, at most 8); multi_worker.s takes ITERATIONS (steps) and WORK.
; Output: the workers' "worker <pid>: step <k>" lines, then "multi: <WORKERS> workers done\n".
; Registers: ecx = counter, esi = pointer into pids.

.include "lib.s"

.ifndef WORKERS
.equ WORKERS, 3
.endif

main:
    mov ebx, 1
    call sys_sleep

    mov ecx, WORKERS
    mov esi, pids
.spawn:
    mov ebx, 1                      ; program 1: multi_worker.s
    call sys_spawn
    mov [esi], eax
    add esi, 4
    dec ecx
    jnz .spawn

    mov ecx, WORKERS
    mov esi, pids
.wait:
    mov ebx, [esi]
    call sys_wait
    add esi, 4
    dec ecx
    jnz .wait

    mov ebx, msg_a
    call print
    mov eax, WORKERS
    call print_dec
    mov ebx, msg_b
    call print
    xor eax, eax
    ret

msg_a: .asciz "multi: "
msg_b: .asciz " workers done\n"
.align 4
pids:  .space 4 * 8
