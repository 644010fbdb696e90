; compute.s - the `compute` workload (program 0): integer-heavy work, no system calls until the
; end.  A benchmark compares it with the same computation in plain Python.
;
;   fill a 4096-byte buffer: x = 1; per byte x = x * 1103515245 + 12345 (mod 2**32),
;                            byte = (x >> 16) & 0xFF
;   FNV-1a 32-bit over the buffer ROUNDS times, h carried across rounds:
;                            h = 2166136261; per byte h = (h ^ b) * 16777619 (mod 2**32)
;   print "fnv1a=XXXXXXXX\n" (lowercase hex)
;
; -D ROUNDS=n sets the rounds (default 16); -D ITERATIONS=n is accepted as a synonym so every
; benchmark workload takes ITERATIONS.  The buffer is the first page of the demand-zero heap,
; so the run also takes exactly one page fault.
; Registers: esi = cursor, edi = end of buffer, ebx = h, ecx = rounds left, eax = byte / x.

.include "lib.s"

.ifndef ROUNDS
.ifdef ITERATIONS
.equ ROUNDS, ITERATIONS
.else
.equ ROUNDS, 16
.endif
.endif

.equ BUFFER, USER_HEAP
.equ BUFFER_SIZE, 4096

main:
    ; fill the buffer with the LCG's bytes
    mov esi, BUFFER
    mov edi, BUFFER + BUFFER_SIZE
    mov eax, 1                      ; x
.fill:
    imul eax, 1103515245
    add eax, 12345
    mov edx, eax
    shr edx, 16
    mov byte [esi], edx             ; stores the low byte: (x >> 16) & 0xFF
    inc esi
    cmp esi, edi
    jne .fill

    ; FNV-1a over the buffer, ROUNDS times
    mov ebx, 2166136261             ; offset basis
    mov ecx, ROUNDS
.round:
    mov esi, BUFFER
.inner:                             ; this loop's shape is fixed: benchmarks compare it
    movzx eax, byte [esi]
    xor ebx, eax
    imul ebx, 16777619              ; FNV prime, low 32 bits
    inc esi
    cmp esi, edi
    jne .inner
    dec ecx
    jnz .round

    push ebx
    mov ebx, msg_result
    call print
    pop eax
    call print_hex
    mov eax, 10
    call putc
    xor eax, eax
    ret

msg_result: .asciz "fnv1a="
