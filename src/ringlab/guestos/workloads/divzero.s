; divzero.s - the `divzero` workload, program 0 (init): user faults the kernel survives.
; ITERATIONS times: spawn program 1 (divzero_child.s), which divides by zero; the kernel prints
; "pid N: divide error at 0x..., killed" and ends it with status KILLED_STATUS + 0 = 128; wait()
; hands that status back here.  Default ITERATIONS = 3.
; Output per child:  "pid <N>: divide error at 0x<eip>, killed\n"          (the kernel)
;                    "divzero: child <N> exited with status 128\n"         (this program)
; then:              "divzero: <ITERATIONS> children killed, kernel survived\n"
; Registers: ecx = children left, esi = the child's pid.

.include "lib.s"

.ifndef ITERATIONS
.equ ITERATIONS, 3
.endif

main:
    mov ecx, ITERATIONS
.child:
    mov ebx, 1                      ; program 1: divzero_child.s
    call sys_spawn
    mov esi, eax
    mov ebx, eax
    call sys_wait                   ; blocks while the child runs and dies
    push eax
    mov ebx, msg_a
    call print
    mov eax, esi
    call print_dec
    mov ebx, msg_b
    call print
    pop eax
    call print_signed
    mov eax, 10
    call putc
    dec ecx
    jnz .child

    mov ebx, msg_c
    call print
    mov eax, ITERATIONS
    call print_dec
    mov ebx, msg_d
    call print
    xor eax, eax
    ret

msg_a: .asciz "divzero: child "
msg_b: .asciz " exited with status "
msg_c: .asciz "divzero: "
msg_d: .asciz " children killed, kernel survived\n"
