; io.s - the `io` workload (program 0): ITERATIONS console writes of one 48-byte line each, by
; write() directly (no line buffering), so each iteration is one system call and 48 port writes
; in the kernel.  Default ITERATIONS = 20.
; Output: ITERATIONS x "io: the quick brown fox jumps over the lazy dog\n",
;         then "io: <ITERATIONS> writes done\n"
; Registers: edx = writes left.

.include "lib.s"

.ifndef ITERATIONS
.equ ITERATIONS, 20
.endif

main:
    mov edx, ITERATIONS
    mov ebx, line
    mov ecx, line_end - line
.loop:
    call sys_write
    dec edx
    jnz .loop

    mov ebx, msg_a
    call print
    mov eax, ITERATIONS
    call print_dec
    mov ebx, msg_b
    call print
    xor eax, eax
    ret

line:  .ascii "io: the quick brown fox jumps over the lazy dog\n"
line_end:
msg_a: .asciz "io: "
msg_b: .asciz " writes done\n"
