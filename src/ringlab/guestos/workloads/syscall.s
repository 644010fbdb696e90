; syscall.s - the `syscall` workload (program 0): ITERATIONS getpid() system calls in a tight
; loop, the cheapest round trip into the kernel and back.  Default ITERATIONS = 1000.
; Output: "syscall: <ITERATIONS> getpid calls, pid 1\n"
; Registers: ecx = calls left, edx = the pid seen.

.include "lib.s"

.ifndef ITERATIONS
.equ ITERATIONS, 1000
.endif

main:
    mov ecx, ITERATIONS
.loop:
    mov eax, SYS_GETPID             ; the system call inlined: no wrapper call/ret per iteration
    int 0x80
    dec ecx
    jnz .loop
    mov edx, eax

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

msg_a: .asciz "syscall: "
msg_b: .asciz " getpid calls, pid "
