; divzero_child.s - program 1 of the `divzero` workload: divides by zero at `fault_here`.
; The kernel kills it (#DE from ring 3); it never reaches its exit.

.include "lib.s"

main:
    mov eax, 1
    xor ecx, ecx
fault_here:                         ; build.py reads this label for the expected kill message
    div ecx                         ; #DE
    xor eax, eax
    ret
