; pvops.s - the paravirt-ops layer: the ONLY place the kernel names a sensitive or privileged
; instruction.
;
; Every operation a hypervisor must see or emulate (interrupt flag, iret, descriptor tables,
; task register, cr0/cr2/cr3/cr8, TLB flushes, page-table writes, the kernel stack pointer in
; the TSS, port I/O, hlt) is a macro here; the rest of the kernel uses only these macros and
; innocuous instructions.  This is Linux's pv_ops idea: one kernel source, two flavours:
;
;   stock     (this file's .else branch)  the real instructions, so the kernel runs on bare
;             RL-32 and, unmodified, under trap-and-emulate, binary translation and VT-x.
;   paravirt  (-D PARAVIRT)  hypercalls (`int 0x82`, number in eax, arguments in ebx ecx edx)
;             and the shared page instead, for the pv technique (docs/pv-abi.md).  The kernel
;             runs in ring 1; the hypervisor owns ring 0, the real IDT, the TSS and IF.
;
; Macro arguments are registers (or an immediate port / a label where the name says so), never
; memory operands, so a hypercall version can pass them in registers.  The stock macros clobber
; nothing but their named outputs.

.ifdef PARAVIRT
; ======== paravirt: the pv ABI of docs/pv-abi.md (modelled on Xen's) ========
.equ KERNEL_RING, 1

.equ HYPERVISOR_set_trap_table, 0
.equ HYPERVISOR_mmu_update,     1
.equ HYPERVISOR_stack_switch,   3
.equ HYPERVISOR_multicall,      13
.equ HYPERVISOR_set_timer_op,   15
.equ HYPERVISOR_xen_version,    17
.equ HYPERVISOR_console_io,     18
.equ HYPERVISOR_iret,           23
.equ HYPERVISOR_mmuext_op,      26
.equ HYPERVISOR_sched_op,       29
.equ HYPERVISOR_physdev_op,     33
.equ MMUEXT_NEW_BASEPTR,        5
.equ MMUEXT_INVLPG_LOCAL,       7
.equ MMUEXT_SET_CR0,            64
.equ SCHEDOP_block,             1
.equ SCHEDOP_shutdown,          2
.equ SHUTDOWN_poweroff,         0
.equ SHUTDOWN_crash,            3
.equ PHYSDEVOP_port_out,        0
.equ PHYSDEVOP_port_in,         1

; The shared page (Xen's shared_info/vcpu_info): the hypervisor finds it by its label.
.equ PV_VIF,      0               ; virtual IF: 0x200 = events enabled, 0 = masked
.equ PV_PENDING,  4               ; non-zero: the hypervisor holds an event (a timer tick)
.equ PV_CR2,      8               ; the address of the last page fault delivered
.equ PV_TPR,      12              ; the task priority (cr8): no hypercall needed
.equ PV_SCRATCH,  44              ; PV_IN's result travels here
.equ PV_LAZY,     48              ; non-zero: page-table updates are queued (lazy MMU mode)
.equ PV_QLEN,     52              ; queued updates
.equ PV_QUEUE,    64              ; the queue: (ptr, val) pairs, one mmu_update flushes it
.equ PV_QMAX,     256
    jmp kernel_entry              ; (the image starts here: step over the page and helpers)
.align 4096
pv_shared:
    .space 4096

; pv_set_pte([esp+4] = ptr, [esp+8] = val): one page-table update, queued in lazy MMU mode
; (Linux's arch_enter_lazy_mmu_mode), else one mmu_update.  Every register is kept.
pv_set_pte:
    push eax
    push ebx
    push ecx
    push edx
    cmp [pv_shared + PV_LAZY], 0
    je .now
    mov ecx, [pv_shared + PV_QLEN]
    cmp ecx, PV_QMAX
    jb .queue
    call pv_flush_ptes
    mov ecx, 0
.queue:
    mov eax, [esp + 20]
    mov edx, [esp + 24]
    shl ecx, 3
    mov ebx, pv_shared + PV_QUEUE
    add ebx, ecx
    mov [ebx], eax
    mov [ebx + 4], edx
    mov ecx, [pv_shared + PV_QLEN]
    inc ecx
    mov [pv_shared + PV_QLEN], ecx
    jmp .done
.now:
    lea ebx, [esp + 20]
    mov ecx, 1
    mov edx, 0
    mov eax, HYPERVISOR_mmu_update
    int 0x82
.done:
    pop edx
    pop ecx
    pop ebx
    pop eax
    ret

; pv_flush_ptes: hand the queued updates to the hypervisor in one batch.  Clobbers eax-edx.
pv_flush_ptes:
    mov ecx, [pv_shared + PV_QLEN]
    cmp ecx, 0
    je .empty
    mov ebx, pv_shared + PV_QUEUE
    mov edx, 0
    mov eax, HYPERVISOR_mmu_update
    int 0x82
    mov [pv_shared + PV_QLEN], 0
.empty:
    ret

; ---- the interrupt flag: plain stores into the shared page, no hypercall ----
; Re-enabling checks for an event the hypervisor held and asks for it (xen_version is the
; cheapest hypercall; events are delivered on the way back from any hypercall).
.macro PV_CHECK_EVENTS
    cmp [pv_shared + PV_PENDING], 0
    je .no_event\@
    push eax
    mov eax, HYPERVISOR_xen_version
    int 0x82
    pop eax
.no_event\@:
.endm
.macro PV_CLI
    mov [pv_shared + PV_VIF], 0
.endm
.macro PV_STI
    mov [pv_shared + PV_VIF], 0x200
    PV_CHECK_EVENTS
.endm
.macro PV_IRQ_SAVE reg
    mov \reg, [pv_shared + PV_VIF]
    mov [pv_shared + PV_VIF], 0
.endm
.macro PV_IRQ_RESTORE reg
    mov [pv_shared + PV_VIF], \reg
    cmp \reg, 0
    je .masked\@
    PV_CHECK_EVENTS
.masked\@:
.endm

; ---- hypercall helpers: arguments in ebx, ecx, edx; every register but the output kept ----
.macro PV_HYPERCALL1 nr, a1
    push eax
    push ebx
    mov ebx, \a1
    mov eax, \nr
    int 0x82
    pop ebx
    pop eax
.endm
.macro PV_HYPERCALL2 nr, a1, a2
    push eax
    push ebx
    push ecx
    mov ecx, \a2
    mov ebx, \a1
    mov eax, \nr
    int 0x82
    pop ecx
    pop ebx
    pop eax
.endm
.macro PV_HYPERCALL3 nr, a1, a2, a3
    push eax
    push ebx
    push ecx
    push edx
    mov edx, \a3
    mov ecx, \a2
    mov ebx, \a1
    mov eax, \nr
    int 0x82
    pop edx
    pop ecx
    pop ebx
    pop eax
.endm

; ---- halting ----
.macro PV_SAFE_HALT
    PV_HYPERCALL1 HYPERVISOR_sched_op, SCHEDOP_block
.endm
.macro PV_HALT
    PV_HYPERCALL2 HYPERVISOR_sched_op, SCHEDOP_shutdown, SHUTDOWN_crash
.endm

; ---- returning from a trap: Xen's HYPERVISOR_iret (eax saved on the frame, never returns) ----
.macro PV_IRET
    push eax
    mov eax, HYPERVISOR_iret
    int 0x82
.endm

; ---- descriptor tables and the kernel stack ----
.macro PV_LIDT desc
    PV_HYPERCALL1 HYPERVISOR_set_trap_table, \desc
.endm
; No TSS under pv: the hypervisor owns it; the kernel stack is set with stack_switch.
.macro PV_LTR reg
.endm
.macro PV_SET_ESP0 reg
    PV_HYPERCALL1 HYPERVISOR_stack_switch, \reg
.endm

; ---- control registers, TLB and page tables ----
.macro PV_WRITE_CR0 reg
    PV_HYPERCALL2 HYPERVISOR_mmuext_op, MMUEXT_SET_CR0, \reg
.endm
.macro PV_READ_CR2 reg
    mov \reg, [pv_shared + PV_CR2]
.endm
.macro PV_LOAD_CR3 reg
    PV_HYPERCALL2 HYPERVISOR_mmuext_op, MMUEXT_NEW_BASEPTR, \reg
.endm
.macro PV_WRITE_CR8 reg
    mov [pv_shared + PV_TPR], \reg
.endm
.macro PV_INVLPG reg
    PV_HYPERCALL2 HYPERVISOR_mmuext_op, MMUEXT_INVLPG_LOCAL, \reg
.endm
; One validated update (mmu_update takes a batch; in lazy MMU mode they are queued).
.macro PV_SET_PTE ptr, val
    push \val
    push \ptr
    call pv_set_pte
    add esp, 8
.endm
; A run of page-table writes nothing reads back until the end: batch them.
.macro PV_LAZY_MMU_BEGIN
    mov [pv_shared + PV_LAZY], 1
.endm
.macro PV_LAZY_MMU_END
    push eax
    push ebx
    push ecx
    push edx
    call pv_flush_ptes
    pop edx
    pop ecx
    pop ebx
    pop eax
    mov [pv_shared + PV_LAZY], 0
.endm

; ---- devices ----
.macro PV_OUT port, reg
    PV_HYPERCALL3 HYPERVISOR_physdev_op, PHYSDEVOP_port_out, \port, \reg
.endm
.macro PV_IN reg, port
    push eax
    push ebx
    push ecx
    mov ecx, \port
    mov ebx, PHYSDEVOP_port_in
    mov eax, HYPERVISOR_physdev_op
    int 0x82
    mov [pv_shared + PV_SCRATCH], eax
    pop ecx
    pop ebx
    pop eax
    mov \reg, [pv_shared + PV_SCRATCH]
.endm
; console_io(CONSOLEIO_write = 0, count, buffer): the byte is passed on the stack.
.macro PV_CONSOLE_PUTC reg
    push \reg
    push eax
    push ebx
    push ecx
    push edx
    lea edx, [esp + 16]
    mov ecx, 1
    mov ebx, 0
    mov eax, HYPERVISOR_console_io
    int 0x82
    pop edx
    pop ecx
    pop ebx
    pop eax
    add esp, 4
.endm
.macro PV_TIMER_SET reg
    PV_HYPERCALL1 HYPERVISOR_set_timer_op, \reg
.endm
.macro PV_POWEROFF reg
    PV_HYPERCALL3 HYPERVISOR_sched_op, SCHEDOP_shutdown, SHUTDOWN_poweroff, \reg
.endm

.else
; ======== stock: the native instructions ========
; The ring the kernel runs in: its IDT gates name it (bits 0-1 of a gate's attributes).
; A paravirt kernel runs in ring 1 under the hypervisor.
.equ KERNEL_RING, 0

; ---- the interrupt flag ----
; Linux's local_irq_disable / local_irq_enable.
.macro PV_CLI
    cli
.endm
.macro PV_STI
    sti
.endm

; local_irq_save(flags) / local_irq_restore(flags): the flags word travels in a register.
; The stock kernel does what Linux does on x86: pushf/popf.  popf is sensitive but unprivileged:
; in ring 1 under a trap-and-emulate VMM it silently leaves IF alone and the guest misbehaves.
.macro PV_IRQ_SAVE reg
    pushf
    pop \reg
    cli
.endm
.macro PV_IRQ_RESTORE reg
    push \reg
    popf
.endm

; ---- halting ----
; Idle: enable interrupts and wait for the next one (Linux's safe_halt).
.macro PV_SAFE_HALT
    sti
    hlt
.endm
; Stop for good (IF is 0 here, so hlt stops the machine).
.macro PV_HALT
    hlt
.endm

; ---- returning from a trap ----
.macro PV_IRET
    iret
.endm

; ---- descriptor tables and the task state segment ----
; \desc is the label of a 6-byte descriptor (16-bit limit, 32-bit base).
.macro PV_LIDT desc
    lidt [\desc]
.endm
.macro PV_LTR reg
    ltr \reg
.endm
; The kernel stack used on entry from ring 3 (TSS.esp0).  Natively a plain store into the TSS;
; a paravirt kernel tells the hypervisor (Xen's stack_switch).
.macro PV_SET_ESP0 reg
    mov [tss + 4], \reg
.endm

; ---- control registers, TLB and page tables ----
.macro PV_WRITE_CR0 reg
    mov cr0, \reg
.endm
.macro PV_READ_CR2 reg
    mov \reg, cr2
.endm
.macro PV_LOAD_CR3 reg
    mov cr3, \reg
.endm
.macro PV_WRITE_CR8 reg
    mov cr8, \reg
.endm
; \reg holds the linear address whose TLB entry to drop.
.macro PV_INVLPG reg
    invlpg [\reg]
.endm
; set_pte: store the entry \val at the page-table (or page-directory) slot whose address is in
; \ptr.  Every page-table write goes through here (Xen validates these as mmu_update).
.macro PV_SET_PTE ptr, val
    mov [\ptr], \val
.endm
; Lazy MMU mode (Linux's arch_enter/leave_lazy_mmu_mode): nothing to batch natively.
.macro PV_LAZY_MMU_BEGIN
.endm
.macro PV_LAZY_MMU_END
.endm

; ---- devices ----
; Generic port I/O with an immediate port.
.macro PV_OUT port, reg
    out \port, \reg
.endm
.macro PV_IN reg, port
    in \reg, \port
.endm
; One byte (the low byte of \reg) to the console.
.macro PV_CONSOLE_PUTC reg
    out 0x3F8, \reg
.endm
; Timer period in retired instructions (0 = off).
.macro PV_TIMER_SET reg
    out 0x40, \reg
.endm
; Power off; the exit code is the low byte of \reg.
.macro PV_POWEROFF reg
    out 0xF4, \reg
.endm

.endif
