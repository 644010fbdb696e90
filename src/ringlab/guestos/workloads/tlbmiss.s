; tlbmiss.s - the `tlbmiss` workload (program 0): PAGES pages of the demand-zero heap, more than
; the TLB holds (64 entries by default), each written once and then read ITERATIONS rounds in
; turn, one load per page: once the pages are mapped, every load is a TLB miss and a page walk,
; and nothing else (no fault, no exit, no system call).  What it measures is the walk: 2 memory
; references natively and under shadow paging, 8 under nested paging.
; Default PAGES = 128, ITERATIONS = 16; PAGES at most 767 (the heap below the stack page).
; Output: "tlbmiss: <ITERATIONS> rounds over <PAGES> pages, sum <S>\n" where page k holds k, so
; S = ITERATIONS * PAGES * (PAGES - 1) / 2 (mod 2^32, as an unsigned decimal).
; Registers: edi = page address, ebx = pages left in the round, ecx = rounds left, edx = sum.

.include "lib.s"

.ifndef PAGES
.equ PAGES, 128
.endif
.ifndef ITERATIONS
.equ ITERATIONS, 16
.endif

main:
    mov edi, USER_HEAP              ; first touch: page k holds k (one page fault each)
    xor eax, eax
.fill:
    mov [edi], eax
    add edi, PAGE_SIZE
    inc eax
    cmp eax, PAGES
    jne .fill

    xor edx, edx
    mov ecx, ITERATIONS
.round:
    mov edi, USER_HEAP
    mov ebx, PAGES
.load:
    add edx, [edi]                  ; a page the TLB no longer holds: a miss and a walk
    add edi, PAGE_SIZE
    dec ebx
    jnz .load
    dec ecx
    jnz .round

    push edx
    mov ebx, msg_a
    call print
    mov eax, ITERATIONS
    call print_dec
    mov ebx, msg_b
    call print
    mov eax, PAGES
    call print_dec
    mov ebx, msg_c
    call print
    pop eax
    call print_dec
    mov eax, 10
    call putc
    xor eax, eax
    ret

msg_a: .asciz "tlbmiss: "
msg_b: .asciz " rounds over "
msg_c: .asciz " pages, sum "
