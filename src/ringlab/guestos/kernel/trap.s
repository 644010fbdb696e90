; trap.s - interrupt and exception entry, the trap frame, and what each vector does.
;
; Every vector has a stub that makes the stack uniform (a dummy error code where the CPU pushes
; none, then the vector number) and jumps to trap_common, which saves the general registers and
; calls trap_dispatch with the frame (F_* offsets, defs.s).  All return through trap_return,
; which is also where a brand-new process "returns" to ring 3 for the first time (sched.s).
;
; Policy:
;   timer (32)      count the tick, wake sleepers; from ring 3, preempt (round robin).  The
;                   kernel itself is never preempted: a tick in kernel mode sets need_resched
;                   and the process is preempted on its way back to ring 3.
;   int 0x80        system call (syscall.s)
;   #PF (14)        ring 3, not-present page in [USER_HEAP, USER_TOP): demand-zero a fresh
;                   frame and retry; otherwise like any other exception
;   exceptions      from ring 3: the process's own handler when it registered one for the
;                   vector (catch: #DE #UD #GP), resumed in user mode; else print "pid N:
;                   <what> at 0x<eip>, killed" and exit the process with KILLED_STATUS +
;                   vector; from ring 0: kernel panic

; ---- stubs ----
trap_de:
    push 0
    push VEC_DE
    jmp trap_common
trap_ud:
    push 0
    push VEC_UD
    jmp trap_common
trap_df:                            ; the CPU pushed an error code
    push VEC_DF
    jmp trap_common
trap_gp:                            ; the CPU pushed an error code
    push VEC_GP
    jmp trap_common
trap_pf:                            ; the CPU pushed an error code
    push VEC_PF
    jmp trap_common
trap_mc:
    push 0
    push VEC_MC
    jmp trap_common
trap_timer:
    push 0
    push VEC_TIMER
    jmp trap_common
trap_syscall:
    push 0
    push SYSCALL_VECTOR
    ; fall through

; ---- common entry and exit ----
trap_common:
    push eax
    push ecx
    push edx
    push ebx
    push ebp
    push esi
    push edi
    mov eax, esp                    ; the frame
    call trap_dispatch
trap_return:
    pop edi
    pop esi
    pop ebp
    pop ebx
    pop edx
    pop ecx
    pop eax
    add esp, 8                      ; vector and error code
    PV_IRET

; trap_dispatch(eax = frame)
trap_dispatch:
    push ebx
    mov ebx, eax
    mov eax, [ebx + F_VEC]
    cmp eax, SYSCALL_VECTOR
    je .syscall
    cmp eax, VEC_TIMER
    je .timer
    cmp eax, VEC_PF
    je .page_fault
    call exception                  ; returns only when a user handler takes the fault
    jmp .return
.syscall:
    call syscall_dispatch
    jmp .return
.timer:
    call timer_interrupt
    jmp .return
.page_fault:
    call page_fault
.return:
    ; Going back to ring 3 after a tick arrived while we were in the kernel: preempt now
    ; (Linux's need_resched check on the way back to user mode), so a process that spends its
    ; time in system calls is preempted like one that computes.
    mov eax, [ebx + F_CS]
    cmp eax, USER_CS
    jne .out
    cmp [need_resched], 0
    je .out
    call schedule
.out:
    pop ebx
    ret

; ---- the timer ----
; timer_interrupt(ebx = frame).  Interrupt gate: IF = 0 here.
timer_interrupt:
    inc [ticks]
    call wake_sleepers
    cmp [idling], 0                 ; the idle loop in schedule() was waiting for this tick
    jne .done
    mov eax, [ebx + F_CS]
    cmp eax, USER_CS
    jne .in_kernel
    call schedule                   ; preempt: the current process stays runnable
    ret
.in_kernel:
    mov [need_resched], 1           ; never preempt the kernel: trap_dispatch does it on the
.done:                              ; way back to ring 3
    ret

; ---- page faults ----
; page_fault(ebx = frame)
page_fault:
    PV_READ_CR2 eax
    mov [fault_addr], eax
    mov ecx, [ebx + F_CS]
    cmp ecx, USER_CS
    jne exception                    ; a fault in the kernel: panic
    test [ebx + F_ERR], PTE_P       ; error bit 0: the page was present (a protection fault)
    jnz exception
    cmp eax, USER_HEAP              ; only the heap/stack region is demand-zero
    jb exception
    cmp eax, USER_TOP
    jae exception
    call frame_alloc                ; zeroed
    test eax, eax
    jz exception                    ; out of memory: the process dies of its page fault
    mov edx, [fault_addr]
    and edx, PAGE_MASK
    call map_current_page           ; retry the faulting instruction on return
    ret

; ---- exceptions that are not handled: a user handler, else kill the process, or panic ----
; exception(ebx = frame).  Returns only when the process's own handler takes the fault.
exception:
    mov eax, [ebx + F_CS]
    cmp eax, USER_CS
    jne kernel_fault
    call deliver_to_user
    test eax, eax
    jnz .kill
    ret                             ; trap_return resumes the process in its handler
.kill:
    mov eax, msg_pid
    call kputs
    mov eax, [current]
    mov eax, [eax + P_PID]
    call kput_dec
    mov eax, msg_colon
    call kputs
    call describe_fault             ; "<what> at 0x<eip>[ accessing 0x<addr>]"
    mov eax, msg_killed
    call kputs
    mov eax, [ebx + F_VEC]
    add eax, KILLED_STATUS
    call do_exit                    ; never returns

; deliver_to_user(ebx = frame from ring 3) -> eax = 0 when the process's handler for the vector
; (catch, syscall.s) takes it: the faulting eip is pushed on the user stack and the frame resumes
; at the handler; 1 when there is no handler, or the 4 bytes below the user esp are not mapped
; user memory (the process is killed then, as without a handler).
deliver_to_user:
    push esi
    push edi
    mov eax, [ebx + F_VEC]
    call catch_slot
    test eax, eax
    jz .none
    mov edi, [current]
    add edi, eax
    mov edi, [edi]                  ; the handler
    test edi, edi
    jz .none
    mov esi, [ebx + F_ESP]
    sub esi, 4
    mov eax, esi
    mov edx, 4
    call user_range_ok              ; the kernel never faults on a user pointer
    test eax, eax
    jz .none
    mov eax, [ebx + F_EIP]
    mov [esi], eax                  ; where it faulted: the handler's return address
    mov [ebx + F_ESP], esi
    mov [ebx + F_EIP], edi
    xor eax, eax
    jmp .out
.none:
    mov eax, 1
.out:
    pop edi
    pop esi
    ret

; catch_slot(eax = vector) -> eax = offset of its user handler in struct proc, 0 if the vector
; cannot be caught
catch_slot:
    cmp eax, CATCH_DE
    je .de
    cmp eax, CATCH_UD
    je .ud
    cmp eax, CATCH_GP
    je .gp
    xor eax, eax
    ret
.de:
    mov eax, P_CATCH_DE
    ret
.ud:
    mov eax, P_CATCH_UD
    ret
.gp:
    mov eax, P_CATCH_GP
    ret

; kernel_fault(ebx = frame): the kernel itself faulted.  Report it and power off with
; POWEROFF_PANIC: a kernel that faulted cannot be trusted to go on.
kernel_fault:
    mov eax, msg_panic
    call kputs
    call describe_fault
    mov eax, msg_error
    call kputs
    mov eax, [ebx + F_ERR]
    call kput_hex
    mov eax, msg_close
    call kputs
    mov eax, POWEROFF_PANIC
    jmp power_off

; describe_fault(ebx = frame): prints "<name> at 0x<eip>", plus " accessing 0x<cr2>" for #PF.
describe_fault:
    mov eax, [ebx + F_VEC]
    call exception_name
    call kputs
    mov eax, msg_at
    call kputs
    mov eax, [ebx + F_EIP]
    call kput_hex
    cmp [ebx + F_VEC], VEC_PF
    jne .done
    mov eax, msg_accessing
    call kputs
    mov eax, [fault_addr]
    call kput_hex
.done:
    ret

; exception_name(eax = vector) -> eax = asciz name
exception_name:
    mov edx, exception_names
.next:
    mov ecx, [edx]
    cmp ecx, 0xFFFFFFFF             ; end of the table: a vector we do not name
    je .found
    cmp ecx, eax
    je .found
    add edx, 8
    jmp .next
.found:
    mov eax, [edx + 4]
    ret

; panic(eax = asciz reason): a kernel invariant broke.  Never returns.
panic:
    push eax
    mov eax, msg_panic
    call kputs
    pop eax
    call kputs
    mov eax, msg_newline
    call kputs
    mov eax, POWEROFF_PANIC
    jmp power_off
