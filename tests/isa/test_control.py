"""Control flow: jmp, every jcc (aliases included), call and ret through labels and registers."""

from __future__ import annotations

import pytest

from .conftest import CF, OF, SF, ZF, regs

CONDITIONS = {
    "je": lambda c, z, s, o: z,
    "jz": lambda c, z, s, o: z,
    "jne": lambda c, z, s, o: not z,
    "jnz": lambda c, z, s, o: not z,
    "jl": lambda c, z, s, o: s != o,
    "jle": lambda c, z, s, o: z or s != o,
    "jg": lambda c, z, s, o: not z and s == o,
    "jge": lambda c, z, s, o: s == o,
    "jb": lambda c, z, s, o: c,
    "jc": lambda c, z, s, o: c,
    "jbe": lambda c, z, s, o: c or z,
    "ja": lambda c, z, s, o: not c and not z,
    "jae": lambda c, z, s, o: not c,
    "jnc": lambda c, z, s, o: not c,
    "js": lambda c, z, s, o: s,
    "jns": lambda c, z, s, o: not s,
    "jo": lambda c, z, s, o: o,
    "jno": lambda c, z, s, o: not o,
}


def _combo_flags(k: int) -> tuple[int, tuple[bool, bool, bool, bool]]:
    c, z, s, o = bool(k & 1), bool(k & 2), bool(k & 4), bool(k & 8)
    return (CF if c else 0) | (ZF if z else 0) | (SF if s else 0) | (OF if o else 0), (c, z, s, o)


@pytest.mark.parametrize("mnemonic", sorted(CONDITIONS))
def test_jcc_taken_exactly_when_its_condition_holds_for_all_16_flag_combinations(mnemonic):
    # For each combination k of CF ZF SF OF (set with popf at ring 0), bit k of eax records
    # whether the jump was taken:
    #     push F_k / popf / jcc .t_k / jmp .n_k / .t_k: or eax, 1<<k / .n_k:
    parts = ["main:", "    mov eax, 0"]
    expected = 0
    for k in range(16):
        value, cond = _combo_flags(k)
        parts += [
            f"    push {value:#x}",
            "    popf",
            f"    {mnemonic} .t{k}",
            f"    jmp .n{k}",
            f".t{k}: or eax, {1 << k:#x}",
            f".n{k}:",
        ]
        if CONDITIONS[mnemonic](*cond):
            expected |= 1 << k
    parts.append("    out 0xF4, eax")
    r = regs("\n".join(parts))
    assert r["eax"] == expected, f"{mnemonic}: taken mask {r['eax']:#06x}, expected {expected:#06x}"


def test_signed_and_unsigned_conditions_after_cmp():
    r = regs("""
    main:
        mov eax, 0
        mov ebx, -1
        cmp ebx, 1
        jl .a            ; -1 < 1 signed: taken
        or eax, 1
    .a: cmp ebx, 1
        jb .b            ; 0xFFFFFFFF < 1 unsigned: not taken
        or eax, 2
    .b: cmp ebx, 1
        ja .c            ; taken
        or eax, 4
    .c: cmp ebx, -1
        je .d            ; taken
        or eax, 8
    .d: out 0xF4, eax
    """)
    assert r["eax"] == 2


def test_jmp_label_and_register():
    r = regs("""
        mov eax, 1
        jmp over
        mov eax, 99
    over:
        mov ebx, target
        jmp ebx
        mov eax, 98
    target:
        add eax, 1
        out 0xF4, eax
    """)
    assert r["eax"] == 2


def test_call_label_pushes_four_bytes_and_ret_pops_them():
    r = regs("""
        mov esp, 0x8000
        call sub1
    after:
        mov ecx, esp
        out 0xF4, eax
    sub1:
        mov eax, [esp]       ; the return address
        mov ebx, esp
        ret
    """)
    assert r["ebx"] == 0x8000 - 4
    assert r["ecx"] == 0x8000


def test_call_return_address_is_next_instruction():
    r = regs("""
        mov esp, 0x8000
        call sub1
    after:
        mov edx, after
        out 0xF4, eax
    sub1:
        mov eax, [esp]
        ret
    """)
    assert r["eax"] == r["edx"]


def test_call_through_register():
    r = regs("""
        mov esp, 0x8000
        mov ebx, sub1
        call ebx
    after:
        mov edx, after
        out 0xF4, eax
    sub1:
        mov eax, [esp]
        mov ecx, 77
        ret
    """)
    assert r["eax"] == r["edx"]
    assert r["ecx"] == 77


def test_ret_jumps_to_any_pushed_address():
    r = regs("""
        mov esp, 0x8000
        push there
        ret
        mov eax, 1
    there:
        mov eax, 2
        out 0xF4, eax
    """)
    assert r["eax"] == 2


def test_counted_loop_with_dec_jnz():
    r = regs("""
    main:
        mov ecx, 10
        mov eax, 0
    .l: add eax, ecx
        dec ecx
        jnz .l
        out 0xF4, eax
    """)
    assert r["eax"] == 55
