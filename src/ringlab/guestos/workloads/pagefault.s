; pagefault.s - the `pagefault` workload (program 0): touch ITERATIONS fresh pages of the
; demand-zero heap, one page fault each (the kernel allocates and zeroes a frame, maps it, and
; the load is retried).  Each page is read first (it must be zero) and then written.
; Default ITERATIONS = 32; at most 767 (the heap below the stack page) and the free frames.
; Output: "pagefault: <ITERATIONS> fresh pages, zero-filled\n" ("NOT zero-filled" on a bug)
; Registers: edi = page address, ecx = pages left, edx = OR of everything read.

.include "lib.s"

.ifndef ITERATIONS
.equ ITERATIONS, 32
.endif

main:
    mov edi, USER_HEAP
    mov ecx, ITERATIONS
    xor edx, edx
.touch:
    mov eax, [edi]                  ; page fault: not present -> fresh zeroed frame
    or edx, eax
    mov [edi], edi                  ; now present and writable: no fault
    add edi, PAGE_SIZE
    dec ecx
    jnz .touch

    mov ebx, msg_a
    call print
    mov eax, ITERATIONS
    call print_dec
    mov ebx, msg_zero
    test edx, edx
    jz .report
    mov ebx, msg_dirty
.report:
    call print
    xor eax, eax
    ret

msg_a:     .asciz "pagefault: "
msg_zero:  .asciz " fresh pages, zero-filled\n"
msg_dirty: .asciz " fresh pages, NOT zero-filled\n"
