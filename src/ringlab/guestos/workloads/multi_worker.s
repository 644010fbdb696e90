; multi_worker.s - program 1 of the `multi` workload: ITERATIONS steps (default 3) of WORK
; iterations of an LCG (default 30000, 4 instructions each: about 120,000 instructions, more than
; one 100,000-instruction timer tick), printing "worker <pid>: step <k>\n" after each step.
; It never yields: only the timer takes the CPU away.
; Registers: esi = pid, edi = step, ecx = work left, edx = the LCG state.

.include "lib.s"

.ifndef ITERATIONS
.equ ITERATIONS, 3
.endif
.ifndef WORK
.equ WORK, 30000
.endif

main:
    call sys_getpid
    mov esi, eax
    mov edi, 1
    mov edx, esi                    ; LCG seed
.step:
    mov ecx, WORK
.spin:
    imul edx, 1103515245
    add edx, 12345
    dec ecx
    jnz .spin

    mov ebx, msg_a
    call print
    mov eax, esi
    call print_dec
    mov ebx, msg_b
    call print
    mov eax, edi
    call print_dec
    mov eax, 10
    call putc
    inc edi
    cmp edi, ITERATIONS + 1
    jne .step
    xor eax, eax
    ret

msg_a: .asciz "worker "
msg_b: .asciz ": step "
