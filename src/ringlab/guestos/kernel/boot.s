; boot.s - from reset to the first user process.
;
; Reset leaves us in ring 0 with paging off, IF = 0 and esp = the top of RAM (docs/machine.md), which is
; how the kernel learns the memory size.  Boot order: memory size, IDT, TSS, paging, the frame
; allocator, process slots, init (program 0), the timer, then the scheduler, which never returns
; (it powers the machine off when the last process exits).

kernel_entry:
    mov [mem_top], esp              ; reset esp = top of RAM
    mov esp, boot_stack_top
    ; mem_top = min(RAM rounded down to a page, KMEM_MAX): the kernel's one identity page table
    ; covers 4 MiB, so memory beyond that is left unused.
    mov eax, [mem_top]
    and eax, PAGE_MASK
    cmp eax, KMEM_MAX
    jbe .size_ok
    mov eax, KMEM_MAX
.size_ok:
    mov [mem_top], eax

    call idt_init
    call tss_init
    call paging_init
    call frames_init
    call procs_init

.ifdef KERNEL_SELFTEST_PANIC
    ; Self-test: page 0 is never mapped, so this kernel-mode load faults and must panic.
    mov eax, [0]
.endif

    ; init = program 0, without a parent
    xor eax, eax
    xor edx, edx
    call proc_spawn
    test eax, eax
    js .no_init
    ; The timer goes on last: nothing can be preempted before a process exists.
    mov eax, TIMER_PERIOD
    PV_TIMER_SET eax
    call schedule                   ; switches to init; never comes back to the boot stack
.no_init:
    mov eax, msg_no_init
    jmp panic

; idt_init: install the gates listed in gate_table, then load the IDT.  Vectors not listed stay
; not-present, so `int n` on them from ring 3 raises #GP and kills the caller.
idt_init:
    push esi
    mov esi, gate_table
.next:
    mov eax, [esi]                  ; vector, -1 ends the table
    cmp eax, 0xFFFFFFFF
    je .load
    shl eax, 3                      ; 8 bytes per gate
    add eax, idt
    mov edx, [esi + 4]              ; handler address
    mov [eax], edx
    mov edx, [esi + 8]              ; attributes
    mov [eax + 4], edx
    add esi, 12
    jmp .next
.load:
    PV_LIDT idt_desc
    pop esi
    ret

; tss_init: load the task register.  TSS.esp0 is set on every switch (switch_to).
tss_init:
    mov eax, tss
    PV_LTR eax
    ret

; paging_init: identity-map [PAGE_SIZE, mem_top) supervisor-only in kpt, hook kpt into the
; kernel-only page directory, load it and turn paging on (with WP, so the kernel too honours
; read-only pages).  kpt[0] stays 0: page 0 is the null-pointer guard.
paging_init:
    push edi
    mov edi, kpt + 4
    mov eax, PAGE_SIZE + PTE_KERNEL
    PV_LAZY_MMU_BEGIN               ; a thousand PTE writes: a paravirt kernel batches them
.fill:
    cmp eax, [mem_top]              ; (frame | flags) < mem_top  <=>  frame < mem_top
    jae .filled
    PV_SET_PTE edi, eax
    add eax, PAGE_SIZE
    add edi, 4
    jmp .fill
.filled:
    PV_LAZY_MMU_END
    mov edi, boot_pgdir
    mov eax, kpt + PTE_KERNEL
    PV_SET_PTE edi, eax
    mov eax, boot_pgdir
    PV_LOAD_CR3 eax
    mov eax, CR0_PE + CR0_WP + CR0_PG
    PV_WRITE_CR0 eax
    pop edi
    ret

; procs_init: give every process slot its static kernel stack.
procs_init:
    mov eax, procs
    mov edx, kstacks + KSTACK_SIZE
.slot:
    mov [eax + P_KTOP], edx
    add edx, KSTACK_SIZE
    add eax, P_SIZE
    cmp eax, procs_end
    jne .slot
    ret
