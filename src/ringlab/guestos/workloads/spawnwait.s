; spawnwait.s - the `spawnwait` workload, program 0 (init): ITERATIONS times spawn program 1
; (spawnwait_child.s, which exits with its own pid as status) and wait() for it: process
; creation, a first run, exit and reaping per iteration.  Default ITERATIONS = 10.
; Output: "spawnwait: <ITERATIONS> children, status sum <S>\n", S = sum of the children's pids
;         (2 + 3 + ... + ITERATIONS + 1): each wait() returned the right child's status.
; Registers: ecx = children left, edx = status sum.

.include "lib.s"

.ifndef ITERATIONS
.equ ITERATIONS, 10
.endif

main:
    mov ecx, ITERATIONS
    xor edx, edx
.child:
    mov ebx, 1                      ; program 1: spawnwait_child.s
    call sys_spawn
    mov ebx, eax
    call sys_wait
    add edx, eax
    dec ecx
    jnz .child

    mov ebx, msg_a
    call print
    mov eax, ITERATIONS
    call print_dec
    mov ebx, msg_b
    call print
    mov eax, edx
    call print_dec
    mov eax, 10
    call putc
    xor eax, eax
    ret

msg_a: .asciz "spawnwait: "
msg_b: .asciz " children, status sum "
