; sched.s - processes: slots, spawn, exit, wait, sleep, and the round-robin scheduler.
;
; A process is a slot in `procs` (struct proc, defs.s) with its own page directory and a static
; kernel stack.  A process that is not running is always suspended inside switch_to on its own
; kernel stack, so switching is: save callee-saved registers, swap esp, load cr3 and TSS.esp0.
; A new process's stack is forged to "return" from switch_to into trap_return, which irets to
; its entry point in ring 3.
;
; The run queue is the slot table itself, scanned round robin from the current slot.  It is
; shared with the timer handler (which wakes sleepers), so every change to a slot's state is made
; with interrupts off through PV_IRQ_SAVE / PV_IRQ_RESTORE, Linux's local_irq_save/restore.

; proc_spawn(eax = program number, edx = parent slot or 0) -> eax = pid | -EINVAL/-EAGAIN/-ENOMEM
proc_spawn:
    push ebx
    push esi
    push edi
    push ebp
    cmp eax, [program_count]
    jae .einval
    shl eax, 4                      ; PROG_ENTRY_SIZE = 16
    lea esi, [eax + program_table]  ; esi = the program's table entry
    mov ebp, edx                    ; ebp = parent
    call proc_alloc_slot            ; -> eax = slot in ST_EMBRYO, or 0
    test eax, eax
    jz .eagain
    mov ebx, eax                    ; ebx = the new slot
    mov [ebx + P_PARENT], ebp
    call new_address_space          ; ebx = slot -> eax = 0 or -ENOMEM
    test eax, eax
    jnz .fail
    ; Load the program: one fresh frame per page, copied from the kernel image.
    xor edi, edi                    ; edi = offset into the program
.page:
    cmp edi, [esi + PROG_SIZE]
    jae .loaded
    call frame_alloc
    test eax, eax
    jz .enomem
    mov ebp, eax                    ; ebp = the frame (kernel-addressable: identity map)
    mov edx, [esi + PROG_VADDR]
    add edx, edi
    mov ecx, eax
    mov eax, ebx
    call set_user_pte               ; (slot, vaddr, frame): map it user read/write
    ; copy min(PAGE_SIZE, size - offset) bytes, a dword at a time (sizes are multiples of 4)
    mov ecx, [esi + PROG_SIZE]
    sub ecx, edi
    cmp ecx, PAGE_SIZE
    jbe .count_ok
    mov ecx, PAGE_SIZE
.count_ok:
    mov edx, [esi + PROG_DATA]
    add edx, edi
.copy:
    mov eax, [edx]
    mov [ebp], eax
    add edx, 4
    add ebp, 4
    sub ecx, 4
    jnz .copy
    add edi, PAGE_SIZE
    jmp .page
.loaded:
    ; Forge the kernel stack: switch_to's saved context (edi esi ebx ebp = 0, return address =
    ; trap_return), then a trap frame that irets to the entry point in ring 3 with IF = 1 and
    ; esp = USER_TOP (the stack is demand-zero: its first push faults a page in).
    mov edi, [ebx + P_KTOP]
    sub edi, SWITCH_FRAME + F_SIZE_USER
    mov [ebx + P_KESP], edi
    mov ecx, (SWITCH_FRAME + F_SIZE_USER) / 4
    mov edx, edi
    xor eax, eax
.zero:
    mov [edx], eax
    add edx, 4
    dec ecx
    jnz .zero
    mov [edi + 16], trap_return
    mov eax, [esi + PROG_ENTRY]
    mov [edi + SWITCH_FRAME + F_EIP], eax
    mov [edi + SWITCH_FRAME + F_CS], USER_CS
    mov [edi + SWITCH_FRAME + F_EFLAGS], EFLAGS_IF
    mov [edi + SWITCH_FRAME + F_ESP], USER_TOP
    ; publish it: a pid, and onto the run queue
    PV_IRQ_SAVE ecx
    mov eax, [next_pid]
    inc [next_pid]
    mov [ebx + P_PID], eax
    mov [ebx + P_STATE], ST_RUNNABLE
    PV_IRQ_RESTORE ecx
    jmp .out
.enomem:
    mov eax, 0 - ENOMEM
.fail:                              ; eax = -errno; undo everything built so far
    push eax
    mov eax, ebx
    call free_address_space
    mov [ebx + P_STATE], ST_FREE
    pop eax
    jmp .out
.einval:
    mov eax, 0 - EINVAL
    jmp .out
.eagain:
    mov eax, 0 - EAGAIN
.out:
    pop ebp
    pop edi
    pop esi
    pop ebx
    ret

; proc_alloc_slot() -> eax = a free slot, now ST_EMBRYO with its fields cleared, or 0
proc_alloc_slot:
    push ecx
    PV_IRQ_SAVE ecx
    mov eax, procs
.next:
    cmp [eax + P_STATE], ST_FREE
    je .found
    add eax, P_SIZE
    cmp eax, procs_end
    jne .next
    xor eax, eax
    jmp .out
.found:
    mov [eax + P_STATE], ST_EMBRYO
    mov [eax + P_PID], 0
    mov [eax + P_PARENT], 0
    mov [eax + P_PGDIR], 0
    mov [eax + P_UPT], 0
    mov [eax + P_EXIT], 0
    mov [eax + P_CATCH_DE], 0
    mov [eax + P_CATCH_UD], 0
    mov [eax + P_CATCH_GP], 0
.out:
    PV_IRQ_RESTORE ecx
    pop ecx
    ret

; do_exit(eax = exit code): the current process ends.  Never returns.
do_exit:
    PV_CLI                          ; nothing may run on this stack after it is given up
    mov ebx, [current]
    mov [ebx + P_EXIT], eax
    ; Leave our own address space (load the kernel-only one), then free it all.
    mov eax, boot_pgdir
    PV_LOAD_CR3 eax
    mov eax, ebx
    call free_address_space
    ; Children: the exited ones are freed (nobody will wait for them), the live ones are
    ; orphaned (they will vanish on exit).
    mov edi, procs
.child:
    cmp [edi + P_PARENT], ebx
    jne .next_child
    mov [edi + P_PARENT], 0
    cmp [edi + P_STATE], ST_ZOMBIE
    jne .next_child
    mov [edi + P_STATE], ST_FREE
.next_child:
    add edi, P_SIZE
    cmp edi, procs_end
    jne .child
    ; Become a zombie for the parent's wait(), waking it if it waits for us; or vanish.
    mov eax, [ebx + P_PARENT]
    test eax, eax
    jz .orphan
    mov [ebx + P_STATE], ST_ZOMBIE
    cmp [eax + P_STATE], ST_WAITING
    jne .switch
    mov ecx, [eax + P_WAITPID]
    cmp ecx, [ebx + P_PID]
    jne .switch
    mov [eax + P_STATE], ST_RUNNABLE
    jmp .switch
.orphan:
    mov [ebx + P_STATE], ST_FREE
.switch:
    call schedule                   ; we are not runnable: this never returns
    mov eax, msg_zombie_ran
    jmp panic

; proc_wait(eax = pid) -> eax = the child's exit code | -ECHILD
; Blocks until that child of the caller has exited, then frees its slot.
proc_wait:
    push esi
    push edi
    ; find the child: a used slot with this pid whose parent is the caller
    mov edx, [current]
    mov edi, procs
.find:
    cmp [edi + P_STATE], ST_FREE
    je .next
    cmp [edi + P_PID], eax
    jne .next
    cmp [edi + P_PARENT], edx
    je .found
.next:
    add edi, P_SIZE
    cmp edi, procs_end
    jne .find
    mov eax, 0 - ECHILD
    jmp .out
.found:
    PV_IRQ_SAVE esi
.check:
    cmp [edi + P_STATE], ST_ZOMBIE
    je .reap
    mov edx, [current]              ; block until do_exit wakes us
    mov [edx + P_STATE], ST_WAITING
    mov ecx, [edi + P_PID]
    mov [edx + P_WAITPID], ecx
    call schedule
    jmp .check
.reap:
    mov eax, [edi + P_EXIT]
    mov [edi + P_STATE], ST_FREE
    PV_IRQ_RESTORE esi
.out:
    pop edi
    pop esi
    ret

; proc_sleep(eax = ticks): block the caller for that many timer ticks (0: just yield).
proc_sleep:
    push esi
    PV_IRQ_SAVE esi
    test eax, eax
    jz .yield
    add eax, [ticks]
    mov edx, [current]
    mov [edx + P_WAKE], eax
    mov [edx + P_STATE], ST_SLEEPING
.yield:
    call schedule
    PV_IRQ_RESTORE esi
    pop esi
    ret

; wake_sleepers(): make every sleeper whose tick has come runnable.  Called by the timer
; handler (IF = 0).
wake_sleepers:
    mov eax, procs
    mov edx, [ticks]
.next:
    cmp [eax + P_STATE], ST_SLEEPING
    jne .skip
    cmp edx, [eax + P_WAKE]
    jb .skip
    mov [eax + P_STATE], ST_RUNNABLE
.skip:
    add eax, P_SIZE
    cmp eax, procs_end
    jne .next
    ret

; schedule(): run the next runnable process after the current one, round robin; return when
; the caller is chosen again.  With nothing runnable: idle (`sti; hlt` until a tick) while some
; process is still alive (sleeping, waiting), or power off when none is.
schedule:
    push ebx
    push esi
    push edi
    PV_IRQ_SAVE esi
    mov [need_resched], 0           ; whoever runs next gets a fresh start
    mov ebx, [current]
    test ebx, ebx
    jnz .scan
    mov ebx, procs_end - P_SIZE     ; at boot there is no current: start the scan at slot 0
.scan:
    mov edi, ebx
    mov ecx, NPROC
.next:
    add edi, P_SIZE
    cmp edi, procs_end
    jne .check
    mov edi, procs
.check:
    cmp [edi + P_STATE], ST_RUNNABLE
    je .found
    dec ecx
    jnz .next
    ; nothing runnable
    call any_alive
    test eax, eax
    jz .all_exited
    mov [idling], 1                 ; the timer handler must not schedule from the idle loop
    PV_SAFE_HALT
    PV_CLI
    mov [idling], 0
    jmp .scan
.found:
    mov eax, [current]
    cmp edi, eax
    je .same
    mov edx, edi
    call switch_to                  ; returns when someone switches back to us
.same:
    PV_IRQ_RESTORE esi
    pop edi
    pop esi
    pop ebx
    ret
.all_exited:
    mov eax, POWEROFF_OK
    jmp power_off

; any_alive() -> eax = 1 when some process may still run (runnable, embryo, blocked), else 0
any_alive:
    mov eax, procs
.next:
    cmp [eax + P_STATE], ST_FREE
    je .skip
    cmp [eax + P_STATE], ST_ZOMBIE
    je .skip
    mov eax, 1
    ret
.skip:
    add eax, P_SIZE
    cmp eax, procs_end
    jne .next
    xor eax, eax
    ret

; switch_to(eax = previous slot or 0, edx = next slot): IF = 0.  Saves the callee-saved
; registers on the previous kernel stack and resumes next where it left off (or, for a new
; process, in trap_return).
switch_to:
    push ebp
    push ebx
    push esi
    push edi
    test eax, eax
    jz .load
    mov [eax + P_KESP], esp
.load:
    mov [current], edx
    mov ecx, [edx + P_PGDIR]
    PV_LOAD_CR3 ecx
    mov ecx, [edx + P_KTOP]
    PV_SET_ESP0 ecx                 ; traps from ring 3 land on next's kernel stack
    mov esp, [edx + P_KESP]
    pop edi
    pop esi
    pop ebx
    pop ebp
    ret

; power_off(eax = exit code): the end.  A clean shutdown (code 0) first checks that every
; frame came back to the allocator; a leak turns it into POWEROFF_LEAK.
power_off:
    PV_CLI
    test eax, eax
    jnz .off
    mov eax, [free_count]
    cmp eax, [frames_total]
    je .clean
    mov eax, msg_leak
    call kputs
    mov eax, [frames_total]
    sub eax, [free_count]
    call kput_dec
    mov eax, msg_frames
    call kputs
    mov eax, POWEROFF_LEAK
    jmp .off
.clean:
    xor eax, eax
.off:
    PV_POWEROFF eax
    PV_HALT                         ; IF = 0: stops the machine should power-off be ignored
