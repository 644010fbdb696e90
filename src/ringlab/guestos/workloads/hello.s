; hello.s - the `hello` workload (program 0, init): the smallest useful user program.
; Prints a greeting with its pid (from getpid), then exits 0.
; Output: "Hello from ring 3! I am pid 1.\n"

.include "lib.s"

main:
    mov ebx, msg_hello
    call print
    call sys_getpid
    call print_dec
    mov ebx, msg_end
    call print
    xor eax, eax                    ; exit code 0
    ret

msg_hello: .asciz "Hello from ring 3! I am pid "
msg_end:   .asciz ".\n"
