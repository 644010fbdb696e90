; data.s - the kernel's tables, variables and messages.

.align 4
; ---- gates: vector, handler, attributes; -1 ends the table (boot.s idt_init) ----
gate_table:
    .dword VEC_DE,         trap_de,      GATE_KERNEL
    .dword VEC_UD,         trap_ud,      GATE_KERNEL
    .dword VEC_DF,         trap_df,      GATE_KERNEL
    .dword VEC_GP,         trap_gp,      GATE_KERNEL
    .dword VEC_PF,         trap_pf,      GATE_KERNEL
    .dword VEC_MC,         trap_mc,      GATE_KERNEL
    .dword VEC_TIMER,      trap_timer,   GATE_KERNEL
    .dword SYSCALL_VECTOR, trap_syscall, GATE_SYSCALL
    .dword 0xFFFFFFFF

; ---- system calls by number (abi.s SYS_*) ----
syscall_table:
    .dword sys_none                 ; 0
    .dword sys_exit                 ; 1  SYS_EXIT
    .dword sys_write                ; 2  SYS_WRITE
    .dword sys_getpid               ; 3  SYS_GETPID
    .dword sys_yield                ; 4  SYS_YIELD
    .dword sys_spawn                ; 5  SYS_SPAWN
    .dword sys_wait                 ; 6  SYS_WAIT
    .dword sys_map                  ; 7  SYS_MAP
    .dword sys_unmap                ; 8  SYS_UNMAP
    .dword sys_bench                ; 9  SYS_BENCH
    .dword sys_sleep                ; 10 SYS_SLEEP
    .dword sys_catch                ; 11 SYS_CATCH

; ---- exception names: vector, string; -1 ends it (its string names anything else) ----
exception_names:
    .dword VEC_DE, name_de
    .dword VEC_UD, name_ud
    .dword VEC_DF, name_df
    .dword VEC_GP, name_gp
    .dword VEC_PF, name_pf
    .dword VEC_MC, name_mc
    .dword 0xFFFFFFFF, name_other

; ---- variables ----
mem_top:        .dword 0            ; end of the memory the kernel manages
free_list:      .dword 0            ; first free frame, 0 = none
free_count:     .dword 0
frames_total:   .dword 0            ; free frames after boot: all must be back at power-off
current:        .dword 0            ; the running process's slot (0 before the first switch)
next_pid:       .dword 1            ; init is pid 1
ticks:          .dword 0            ; timer interrupts so far
idling:         .dword 0            ; 1 while schedule() waits in `sti; hlt`
need_resched:   .dword 0            ; a tick hit kernel mode: preempt on the way back to ring 3
fault_addr:     .dword 0            ; cr2 of the page fault being handled
numbuf:         .space 12           ; kput_hex / kput_dec scratch

; the IDT descriptor for lidt: 16-bit limit, 32-bit base
idt_desc:
    .word IDT_ENTRIES * 8 - 1
    .dword idt

; ---- strings ----
hex_digits:     .ascii "0123456789abcdef"
msg_pid:        .asciz "pid "
msg_colon:      .asciz ": "
msg_at:         .asciz " at 0x"
msg_accessing:  .asciz " accessing 0x"
msg_killed:     .asciz ", killed\n"
msg_panic:      .asciz "kernel panic: "
msg_error:      .asciz " (error 0x"
msg_close:      .asciz ")\n"
msg_newline:    .asciz "\n"
msg_no_init:    .asciz "cannot start init (program 0)"
msg_zombie_ran: .asciz "an exited process was scheduled"
msg_leak:       .asciz "kernel: "
msg_frames:     .asciz " frames leaked\n"
name_de:        .asciz "divide error"
name_ud:        .asciz "invalid opcode"
name_df:        .asciz "double fault"
name_gp:        .asciz "general protection fault"
name_pf:        .asciz "page fault"
name_mc:        .asciz "machine check"
name_other:     .asciz "exception"

; ---- the task state segment: esp0 at +4 (docs/machine.md); 104 bytes like x86's ----
.align 4
tss:            .space 104

; ---- the process table ----
.align 4
procs:          .space NPROC * P_SIZE
procs_end:

; ---- page-aligned structures ----
.align 4096
idt:            .space IDT_ENTRIES * 8  ; 2 KiB
boot_stack:     .space 2048             ; the boot stack fills the IDT's page
boot_stack_top:
kpt:            .space PAGE_SIZE        ; the kernel page table, shared by every address space
boot_pgdir:     .space PAGE_SIZE        ; kernel-only page directory: boot, and exiting processes
kstacks:        .space NPROC * KSTACK_SIZE  ; one kernel stack per process slot
