; pvops.s - the paravirt-ops layer: the ONLY place the kernel names a sensitive or privileged
; instruction.
;
; Every operation a hypervisor must see or emulate (interrupt flag, iret, descriptor tables,
; task register, cr0/cr2/cr3/cr8, TLB flushes, page-table writes, the kernel stack pointer in
; the TSS, port I/O, hlt) is a macro here; the rest of the kernel uses only these macros and
; innocuous instructions.  This is Linux's pv_ops idea: one kernel source, two flavours:
;
;   stock     (this file's native branch)  the real instructions, so the kernel runs on bare
;             RL-32 and, unmodified, under trap-and-emulate, binary translation and VT-x.
;   paravirt  (-D PARAVIRT)  hypercalls (`int 0x82`, number in eax) instead, for the pv
;             technique.  NOT BUILT YET: the pv technique's issue replaces the stub below with
;             `.ifdef PARAVIRT <hypercall macros> .else <the macros below> .endif`.
;
; Macro arguments are registers (or an immediate port / a label where the name says so), never
; memory operands, so a hypercall version can pass them in registers.  The stock macros clobber
; nothing but their named outputs.

.ifdef PARAVIRT
    ; Deliberately unresolvable: selecting the paravirt flavour before it exists must fail
    ; assembly with this name in the message, never produce a silently native kernel.
    .dword paravirt_flavour_not_built_yet
.endif

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
