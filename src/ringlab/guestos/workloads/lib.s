; lib.s - the user-mode runtime every Ringlab user program includes first.
;
;   .include "lib.s"        ; then define `main`: eax = main's exit code
;
; It links the program at USER_BASE, provides the entry point (_start: call main, flush the
; output, exit with main's eax), system-call wrappers and line-buffered printing.
;
; Register conventions (user programs):
;   - syscall wrappers take the syscall's own argument registers (ebx, ecx, edx) and return
;     in eax, like the kernel ABI (abi.s): `mov ebx, 2; call sys_spawn`;
;   - printing helpers take their argument in eax (print_dec, print_hex, putc) or ebx (print);
;   - every lib function preserves every register except eax.
; Output is line-buffered: print* collect bytes and one write() sends each whole line, so a
; line of one process is never split by another's when the timer preempts them.

.include "../kernel/abi.s"

.org USER_BASE
.entry _start

_start:
    call main
    call flush
    mov ebx, eax
    mov eax, SYS_EXIT
    int 0x80                        ; does not return

; ---- system calls ----
sys_exit:                           ; ebx = code
    call flush
    mov eax, SYS_EXIT
    int 0x80
sys_write:                          ; ebx = buf, ecx = len -> eax = len | -EFAULT
    mov eax, SYS_WRITE
    int 0x80
    ret
sys_getpid:                         ; -> eax = pid
    mov eax, SYS_GETPID
    int 0x80
    ret
sys_yield:
    mov eax, SYS_YIELD
    int 0x80
    ret
sys_spawn:                          ; ebx = program number -> eax = pid | -errno
    mov eax, SYS_SPAWN
    int 0x80
    ret
sys_wait:                           ; ebx = pid -> eax = exit code | -ECHILD
    mov eax, SYS_WAIT
    int 0x80
    ret
sys_map:                            ; ebx = page-aligned vaddr -> eax = 0 | -errno
    mov eax, SYS_MAP
    int 0x80
    ret
sys_unmap:                          ; ebx = page-aligned vaddr -> eax = 0 | -EINVAL
    mov eax, SYS_UNMAP
    int 0x80
    ret
sys_bench:                          ; ebx = op, ecx = iterations -> eax = 0 | -EINVAL
    mov eax, SYS_BENCH
    int 0x80
    ret
sys_sleep:                          ; ebx = ticks
    mov eax, SYS_SLEEP
    int 0x80
    ret

; ---- line-buffered output ----
; putc(eax = byte): append; a newline or a full buffer sends the line.
putc:
    push ebx
    mov ebx, [out_len]
    mov byte [ebx + out_buf], eax
    inc ebx
    mov [out_len], ebx
    cmp eax, 10
    je .send
    cmp ebx, OUT_BUF_SIZE
    jne .done
.send:
    call flush
.done:
    pop ebx
    ret

; flush(): write what is buffered
flush:
    push eax
    push ebx
    push ecx
    mov ecx, [out_len]
    test ecx, ecx
    jz .done
    mov ebx, out_buf
    call sys_write
    mov [out_len], 0
.done:
    pop ecx
    pop ebx
    pop eax
    ret

; print(ebx = asciz string)
print:
    push ebx
.next:
    movzx eax, byte [ebx]
    test eax, eax
    jz .done
    call putc
    inc ebx
    jmp .next
.done:
    pop ebx
    ret

; print_hex(eax = value): 8 lowercase hex digits, no prefix
print_hex:
    push ebx
    push ecx
    mov ebx, eax
    mov ecx, 8
.digit:
    mov eax, ebx
    shr eax, 28                     ; most significant nibble first
    movzx eax, byte [eax + hex_digits]
    call putc
    shl ebx, 4
    dec ecx
    jnz .digit
    pop ecx
    pop ebx
    ret

; print_dec(eax = value): unsigned decimal
print_dec:
    push ebx
    push ecx
    push edx
    mov ebx, dec_buf + 10
    mov ecx, 10
.digit:
    dec ebx
    div ecx                         ; eax = eax / 10, edx = eax % 10
    add edx, '0'
    mov byte [ebx], edx
    test eax, eax
    jnz .digit
.emit:
    movzx eax, byte [ebx]
    call putc
    inc ebx
    cmp ebx, dec_buf + 10
    jne .emit
    pop edx
    pop ecx
    pop ebx
    ret

; print_signed(eax = value): signed decimal (error codes read better as -14 than 4294967282)
print_signed:
    test eax, eax
    jns print_dec
    push eax
    mov eax, '-'
    call putc
    pop eax
    neg eax
    jmp print_dec

.equ OUT_BUF_SIZE, 128
hex_digits: .ascii "0123456789abcdef"
.align 4
out_len:    .dword 0
out_buf:    .space OUT_BUF_SIZE
dec_buf:    .space 12
.align 4
; programs continue here (main, their data)
