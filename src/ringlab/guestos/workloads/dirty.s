; dirty.s - the `dirty` workload (program 0): a writable working set for live migration.  Each
; timer tick it writes one word in each of PAGES heap pages (dirtying them), then sleeps until
; the next tick; ITERATIONS ticks in all.  Its dirty rate is PAGES pages per tick: what decides
; how fast pre-copy converges (docs/migration.md).  The first round faults the pages in.
; Default PAGES = 16, ITERATIONS = 20; PAGES at most 700 (the heap below the stack page).
; Output: "dirty: <ITERATIONS> ticks of <PAGES> pages, sum <sum>\n", the sum of the last words
; written (ITERATIONS in each page: PAGES * ITERATIONS).
; Registers: esi = round, edi = page address, ecx = pages left in the round.

.include "lib.s"

.ifndef PAGES
.equ PAGES, 16
.endif
.ifndef ITERATIONS
.equ ITERATIONS, 20
.endif

main:
    xor esi, esi
.round:
    inc esi
    mov edi, USER_HEAP
    mov ecx, PAGES
.page:
    mov [edi], esi                  ; one word per page: the page is dirty
    add edi, PAGE_SIZE
    dec ecx
    jnz .page
    mov ebx, 1
    call sys_sleep                  ; until the next tick
    cmp esi, ITERATIONS
    jb .round

    mov edi, USER_HEAP              ; the sum of the last words written
    mov ecx, PAGES
    xor edx, edx
.sum:
    add edx, [edi]
    add edi, PAGE_SIZE
    dec ecx
    jnz .sum

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
    mov eax, edx
    call print_dec
    mov ebx, newline
    call print
    xor eax, eax
    ret

msg_a:   .asciz "dirty: "
msg_b:   .asciz " ticks of "
msg_c:   .asciz " pages, sum "
newline: .asciz "\n"
