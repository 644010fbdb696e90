; divzero.s - the `divzero` workload, program 0 (init): divide errors, killed and handled.
; First the default: spawn program 1 (divzero_child.s), which divides by zero; the kernel prints
; "pid 2: divide error at 0x..., killed" and ends it with status KILLED_STATUS + 0 = 128, which
; wait() hands back here.  Then init registers a #DE handler of its own (catch, abi.s) and divides
; by zero ITERATIONS times: each time the kernel runs the handler in user mode, which counts the
; fault and resumes after the `div` (Adams & Agesen's divzero nanobenchmark: a fault handled in
; the guest, no process created).  Default ITERATIONS = 3.
; Output: "pid 2: divide error at 0x<eip>, killed\n"                    (the kernel)
;         "divzero: child 2 exited with status 128\n"
;         "divzero: <ITERATIONS> divide errors caught, each resumed after the div\n"
; Registers: ecx = divisions left, edi = 0 (the divisor), esi = the child's pid.

.include "lib.s"

.ifndef ITERATIONS
.equ ITERATIONS, 3
.endif

main:
    mov ebx, 1                      ; program 1: divzero_child.s, killed by its divide error
    call sys_spawn
    mov esi, eax
    mov ebx, eax
    call sys_wait
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

    mov eax, SYS_CATCH              ; catch(CATCH_DE, on_divide_error)
    mov ebx, CATCH_DE
    mov ecx, on_divide_error
    int 0x80
    mov ecx, ITERATIONS
    xor edi, edi
    test ecx, ecx
    jz .report
.divide:
    mov eax, 1
    div edi                         ; #DE: the handler resumes after it
    dec ecx
    jnz .divide
.report:

    mov ebx, msg_c
    call print
    mov eax, [caught]
    call print_dec
    mov ebx, msg_d
    call print
    xor eax, eax
    ret

; The #DE handler: [esp] = the address of the div that faulted; every register as it was there.
on_divide_error:
    inc [caught]
    add [esp], 2                    ; `div r` is 2 bytes: return past it
    ret

msg_a: .asciz "divzero: child "
msg_b: .asciz " exited with status "
msg_c: .asciz "divzero: "
msg_d: .asciz " divide errors caught, each resumed after the div\n"
.align 4
caught: .dword 0
