; mm.s - physical frames and address spaces.
;
; Frames: every page from kernel_end to mem_top sits on a free list threaded through the free
; frames themselves (the first dword of a free frame holds the next one's address; 0 ends the
; list).  The kernel reaches any frame at its physical address through the identity map, so
; allocation is O(1) plus zeroing.  free_count / frames_total let power_off detect leaks.
;
; Address spaces: a page directory whose PDE 0 is the shared kernel page table (kpt,
; supervisor-only) and whose PDE 1 is the process's user page table, covering
; [USER_BASE, USER_TOP).  Page-table writes go through PV_SET_PTE, TLB flushes through
; PV_INVLPG.  A process's frames are its page directory, its user page table and every frame
; its user page table maps; exit and unmap give them back.

; frames_init(): put [kernel_end, mem_top) on the free list, highest first, so that the lowest
; frames are handed out first (deterministic, readable addresses).
frames_init:
    mov eax, [mem_top]
.next:
    sub eax, PAGE_SIZE
    cmp eax, kernel_end
    jb .done
    mov edx, [free_list]
    mov [eax], edx
    mov [free_list], eax
    inc [free_count]
    jmp .next
.done:
    mov eax, [free_count]
    mov [frames_total], eax
    ret

; frame_alloc() -> eax = a zeroed frame, or 0 when memory is exhausted
frame_alloc:
    push ecx
    push edx
    PV_IRQ_SAVE ecx
    mov eax, [free_list]
    test eax, eax
    jz .out
    mov edx, [eax]
    mov [free_list], edx
    dec [free_count]
.out:
    PV_IRQ_RESTORE ecx
    test eax, eax
    jz .ret
    ; zero it, 4 dwords per iteration
    mov edx, eax
    mov ecx, eax
    add ecx, PAGE_SIZE
    push eax
    xor eax, eax
.zero:
    mov [edx], eax
    mov [edx + 4], eax
    mov [edx + 8], eax
    mov [edx + 12], eax
    add edx, 16
    cmp edx, ecx
    jne .zero
    pop eax
.ret:
    pop edx
    pop ecx
    ret

; frame_free(eax = frame)
frame_free:
    push ecx
    push edx
    PV_IRQ_SAVE ecx
    mov edx, [free_list]
    mov [eax], edx
    mov [free_list], eax
    inc [free_count]
    PV_IRQ_RESTORE ecx
    pop edx
    pop ecx
    ret

; new_address_space(ebx = slot) -> eax = 0 | -ENOMEM.  Fills P_PGDIR and P_UPT as it goes, so
; free_address_space can undo a partial one.
new_address_space:
    push edi
    call frame_alloc
    test eax, eax
    jz .enomem
    mov [ebx + P_PGDIR], eax
    mov edi, eax
    mov eax, kpt + PTE_KERNEL       ; PDE 0: the kernel, supervisor-only
    PV_SET_PTE edi, eax
    call frame_alloc
    test eax, eax
    jz .enomem
    mov [ebx + P_UPT], eax
    add edi, 4
    add eax, PTE_USER               ; PDE 1: the user page table
    PV_SET_PTE edi, eax
    xor eax, eax
    pop edi
    ret
.enomem:
    mov eax, 0 - ENOMEM
    pop edi
    ret

; free_address_space(eax = slot): give back every frame the slot's user page table maps, the
; user page table and the page directory.  The slot's address space must not be loaded in cr3.
free_address_space:
    push ebx
    push esi
    push edi
    mov ebx, eax
    mov esi, [ebx + P_UPT]
    test esi, esi
    jz .pgdir
    mov edi, esi
    add edi, PAGE_SIZE
.pte:
    mov eax, [esi]
    test eax, PTE_P
    jz .next_pte
    and eax, PAGE_MASK
    call frame_free
.next_pte:
    add esi, 4
    cmp esi, edi
    jne .pte
    mov eax, [ebx + P_UPT]
    call frame_free
    mov [ebx + P_UPT], 0
.pgdir:
    mov eax, [ebx + P_PGDIR]
    test eax, eax
    jz .done
    call frame_free
    mov [ebx + P_PGDIR], 0
.done:
    pop edi
    pop esi
    pop ebx
    ret

; pte_address(eax = slot, edx = user vaddr) -> eax = address of the vaddr's entry in the slot's
; user page table
pte_address:
    mov eax, [eax + P_UPT]
    shr edx, 12
    and edx, 0x3FF
    shl edx, 2
    add eax, edx
    ret

; set_user_pte(eax = slot, edx = user vaddr, ecx = frame): map vaddr -> frame, user read/write.
; No TLB flush: for an address space that is not loaded (spawn), or one followed by invlpg.
set_user_pte:
    push edi
    call pte_address
    mov edi, eax
    add ecx, PTE_USER
    PV_SET_PTE edi, ecx
    pop edi
    ret

; map_current_page(eax = frame, edx = page-aligned user vaddr): map it in the running process.
map_current_page:
    push esi
    mov esi, edx
    mov ecx, eax
    mov eax, [current]
    call set_user_pte
    PV_INVLPG esi
    pop esi
    ret

; user_page_ok(eax = vaddr) -> eax = 0 | -EINVAL: a page-aligned address in the map/unmap region
user_page_ok:
    test eax, 0xFFF
    jnz .bad
    cmp eax, USER_HEAP
    jb .bad
    cmp eax, USER_TOP
    jae .bad
    xor eax, eax
    ret
.bad:
    mov eax, 0 - EINVAL
    ret

; user_map(eax = vaddr) -> 0 | -EINVAL | -EEXIST | -ENOMEM: a fresh zeroed page at vaddr
user_map:
    push esi
    push edi
    mov esi, eax
    call user_page_ok
    test eax, eax
    jnz .out
    mov eax, [current]
    mov edx, esi
    call pte_address
    mov edi, eax
    test [edi], PTE_P
    jnz .eexist
    call frame_alloc
    test eax, eax
    jz .enomem
    mov edx, esi
    call map_current_page
    xor eax, eax
    jmp .out
.eexist:
    mov eax, 0 - EEXIST
    jmp .out
.enomem:
    mov eax, 0 - ENOMEM
.out:
    pop edi
    pop esi
    ret

; user_unmap(eax = vaddr) -> 0 | -EINVAL: drop the page at vaddr and free its frame
user_unmap:
    push esi
    push edi
    mov esi, eax
    call user_page_ok
    test eax, eax
    jnz .out
    mov eax, [current]
    mov edx, esi
    call pte_address
    mov edi, eax
    mov eax, [edi]
    test eax, PTE_P
    jz .einval
    xor ecx, ecx
    PV_SET_PTE edi, ecx
    PV_INVLPG esi                   ; the old translation must go before the frame is reused
    and eax, PAGE_MASK
    call frame_free
    xor eax, eax
    jmp .out
.einval:
    mov eax, 0 - EINVAL
.out:
    pop edi
    pop esi
    ret

; user_range_ok(eax = buf, edx = len) -> eax = 1 when [buf, buf + len) is all mapped user memory
; of the current process, else 0.  Checks the page table itself (present and user), so the
; kernel never faults on a user pointer: kernel addresses, holes and unmapped heap pages are
; refused.  len = 0 is always fine.
user_range_ok:
    push esi
    push edi
    test edx, edx
    jz .yes
    mov esi, eax                    ; esi = first byte
    mov edi, eax
    add edi, edx                    ; edi = one past the last byte
    jc .no                          ; wrapped around 4 GiB
    cmp esi, USER_BASE
    jb .no
    cmp edi, USER_TOP
    ja .no
    and esi, PAGE_MASK
.page:
    mov eax, [current]
    mov edx, esi
    call pte_address
    mov eax, [eax]
    and eax, PTE_P + PTE_U
    cmp eax, PTE_P + PTE_U
    jne .no
    add esi, PAGE_SIZE
    cmp esi, edi
    jb .page
.yes:
    mov eax, 1
    jmp .out
.no:
    xor eax, eax
.out:
    pop edi
    pop esi
    ret
