; callret.s - the `callret` workload (program 0): ITERATIONS call/ret pairs, pure user-mode
; control transfer with no kernel involvement.  Default ITERATIONS = 1000.
; Output: "callret: <ITERATIONS> calls\n"
; Registers: ecx = calls left.

.include "lib.s"

.ifndef ITERATIONS
.equ ITERATIONS, 1000
.endif

main:
    mov ecx, ITERATIONS
.loop:
    call leaf
    dec ecx
    jnz .loop

    mov ebx, msg_a
    call print
    mov eax, ITERATIONS
    call print_dec
    mov ebx, msg_b
    call print
    xor eax, eax
    ret

leaf:
    ret

msg_a: .asciz "callret: "
msg_b: .asciz " calls\n"
