; bench.s - the `bench` workload (program 0): one bench(OP, ITERATIONS) system call, an
; in-kernel loop of one sensitive operation, for microbenchmarks of what a VMM must intercept.
; -D OP=n: 0 port in (the console's line status, 0x3FD), 1 port out (POST port 0x80), 2 cr8 write, 3 page-table write +
; invlpg (abi.s BENCH_*); default 0.  Default ITERATIONS = 100.
; Output: "bench: op <OP>, <ITERATIONS> iterations, result <r>\n" (r = 0, or -22 for a bad op)

.include "lib.s"

.ifndef OP
.equ OP, BENCH_PORT_IN
.endif
.ifndef ITERATIONS
.equ ITERATIONS, 100
.endif

main:
    mov ebx, OP
    mov ecx, ITERATIONS
    call sys_bench
    mov edx, eax

    mov ebx, msg_a
    call print
    mov eax, OP
    call print_dec
    mov ebx, msg_b
    call print
    mov eax, ITERATIONS
    call print_dec
    mov ebx, msg_c
    call print
    mov eax, edx
    call print_signed
    mov eax, 10
    call putc
    xor eax, eax
    ret

msg_a: .asciz "bench: op "
msg_b: .asciz ", "
msg_c: .asciz " iterations, result "
