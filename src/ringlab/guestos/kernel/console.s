; console.s - the console (port 0x3F8) and the kernel's printing helpers.
;
; Every byte goes out through console_write, which holds interrupts off for the whole buffer
; (PV_IRQ_SAVE / PV_IRQ_RESTORE, as Linux's console lock is taken with spin_lock_irqsave), so a
; message is never split by an interrupt.  No helper touches anything but eax, ecx, edx.

; console_write(eax = buf, edx = len): buf is kernel memory or user memory already checked by
; user_range_ok.
console_write:
    push esi
    push ebx
    test edx, edx
    jz .done
    mov esi, eax
    PV_IRQ_SAVE ebx
.byte:
    movzx eax, byte [esi]
    PV_CONSOLE_PUTC eax
    inc esi
    dec edx
    jnz .byte
    PV_IRQ_RESTORE ebx
.done:
    pop ebx
    pop esi
    ret

; kputs(eax = asciz string)
kputs:
    mov edx, eax
.len:
    movzx ecx, byte [edx]
    test ecx, ecx
    jz .write
    inc edx
    jmp .len
.write:
    sub edx, eax                    ; length
    jmp console_write

; kput_hex(eax = value): 8 lowercase hex digits
kput_hex:
    mov edx, eax
    mov ecx, numbuf + 8
.digit:
    dec ecx
    mov eax, edx
    and eax, 15
    movzx eax, byte [eax + hex_digits]
    mov byte [ecx], eax
    shr edx, 4
    cmp ecx, numbuf
    jne .digit
    mov eax, numbuf
    mov edx, 8
    jmp console_write

; kput_dec(eax = value): unsigned decimal
kput_dec:
    push ebx
    mov ebx, numbuf + 12
    mov ecx, 10
.digit:
    dec ebx
    div ecx                         ; eax = eax / 10, edx = eax % 10
    add edx, '0'
    mov byte [ebx], edx
    test eax, eax
    jnz .digit
    mov eax, ebx
    mov edx, numbuf + 12
    sub edx, ebx
    pop ebx
    jmp console_write
