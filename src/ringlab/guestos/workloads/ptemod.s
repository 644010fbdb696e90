; ptemod.s - the `ptemod` workload (program 0): ITERATIONS times map() a page, write to it,
; unmap() it: two page-table updates and two TLB flushes in the kernel per iteration.
; Default ITERATIONS = 100.
; Output: "ptemod: <ITERATIONS> map/write/unmap cycles, 0 errors\n"
; Registers: ecx = cycles left, edx = errors, ebx = the page.

.include "lib.s"

.ifndef ITERATIONS
.equ ITERATIONS, 100
.endif

.equ PAGE, USER_HEAP + 0x100000

main:
    mov ecx, ITERATIONS
    xor edx, edx
    mov ebx, PAGE
.loop:
    call sys_map
    test eax, eax
    jz .mapped
    inc edx
.mapped:
    mov eax, [ebx]                  ; a fresh page reads as zero
    or edx, eax
    mov [ebx], ecx                  ; and is writable
    call sys_unmap
    test eax, eax
    jz .unmapped
    inc edx
.unmapped:
    dec ecx
    jnz .loop

    mov ebx, msg_a
    call print
    mov eax, ITERATIONS
    call print_dec
    mov ebx, msg_b
    call print
    mov eax, edx
    call print_dec
    mov ebx, msg_c
    call print
    xor eax, eax
    ret

msg_a: .asciz "ptemod: "
msg_b: .asciz " map/write/unmap cycles, "
msg_c: .asciz " errors\n"
