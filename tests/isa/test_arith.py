"""Innocuous data and arithmetic instructions: results and CF ZF SF OF (docs/machine.md "Precise rules > Flags").

Programs here need no prelude: they start at the origin at ring 0 with eflags = 0 and end with
``out 0xF4, r`` (power off; ``out`` changes no flags), so the final JSON registers are the result.
``push F; popf`` at ring 0 sets the flags to F beforehand when a test shows a flag is left alone.
"""

from __future__ import annotations

import pytest

from .conftest import ARITH, CF, OF, SF, ZF, arith_flags, regs

# ---------------------------------------------------------------- data movement


def test_mov_register_immediate_and_register_register():
    r = regs("""
        mov eax, 0x12345678
        mov ebx, eax
        mov ecx, -1
        mov edx, 'A'
        out 0xF4, eax
    """)
    assert r["eax"] == 0x12345678
    assert r["ebx"] == 0x12345678
    assert r["ecx"] == 0xFFFFFFFF
    assert r["edx"] == 0x41
    assert r["eflags"] == 0  # mov changes no flags


def test_mov_memory_forms_are_little_endian_dwords():
    r = regs("""
        mov [val], 0x11223344        ; m, imm
        mov eax, [val]               ; r, m
        mov ebx, 0xAABBCCDD
        mov [val2], ebx              ; m, r
        mov ecx, [val2]
        movzx edx, byte [val]        ; lowest address holds the low byte
        movzx esi, byte [val + 3]
        out 0xF4, eax
    val:  .dword 0
    val2: .dword 0
    """)
    assert r["eax"] == 0x11223344
    assert r["ecx"] == 0xAABBCCDD
    assert r["edx"] == 0x44
    assert r["esi"] == 0x11


def test_movzx_byte_zero_extends():
    r = regs("""
        mov eax, 0xFFFFFFFF
        movzx eax, byte [b]
        out 0xF4, eax
    b:  .byte 0x80, 0xFF, 0xFF, 0xFF
    """)
    assert r["eax"] == 0x80


def test_mov_byte_stores_only_the_low_byte():
    r = regs("""
        mov ebx, 0x123456AB
        mov byte [val + 1], ebx
        mov eax, [val]
        out 0xF4, eax
    val: .dword 0x11111111
    """)
    assert r["eax"] == 0x1111AB11


def test_memory_operand_base_plus_and_minus_displacement():
    r = regs("""
        mov ebx, tbl
        mov eax, [ebx + 8]
        mov ecx, tbl + 12
        mov edx, [ecx - 8]
        mov esi, 4
        mov edi, [tbl + esi]          ; [expr + reg] means [reg + expr]
        out 0xF4, eax
    tbl: .dword 10, 20, 30, 40
    """)
    assert r["eax"] == 30
    assert r["edx"] == 20
    assert r["edi"] == 20


def test_unaligned_dword_access_is_allowed():
    r = regs("""
        mov [buf + 1], 0xA1B2C3D4
        mov eax, [buf]
        mov ebx, [buf + 4]
        mov ecx, [buf + 1]
        out 0xF4, eax
    .align 4
    buf: .dword 0, 0
    """)
    assert r["eax"] == 0xB2C3D400
    assert r["ebx"] == 0x000000A1
    assert r["ecx"] == 0xA1B2C3D4


def test_lea_computes_address_without_memory_access():
    # [ebx + 0x7FFFFFF0] is far outside RAM: lea must not touch memory (no #MC).
    r = regs("""
        mov ebx, 0x20
        lea eax, [ebx + 0x7FFFFFF0]
        lea ecx, [ebx - 0x30]
        lea edx, [0x1234]
        out 0xF4, eax
    """)
    assert r["eax"] == 0x80000010
    assert r["ecx"] == 0xFFFFFFF0
    assert r["edx"] == 0x1234
    assert r["eflags"] == 0


def test_xchg_swaps_registers_and_keeps_flags():
    r = regs("""
        push 0x8C1
        popf
        mov eax, 1
        mov ebx, 2
        xchg eax, ebx
        out 0xF4, eax
    """)
    assert (r["eax"], r["ebx"]) == (2, 1)
    assert r["eflags"] & ARITH == CF | ZF | SF | OF


def test_push_register_and_immediate_then_pop_lifo():
    # reset: esp = top of RAM (4 MiB)
    r = regs("""
        mov eax, 7
        push eax
        push 0x99
        pop ebx
        pop ecx
        mov edx, esp
        out 0xF4, eax
    """)
    assert r["ebx"] == 0x99
    assert r["ecx"] == 7
    assert r["edx"] == 4 << 20


def test_push_decrements_esp_then_stores_at_new_esp():
    r = regs("""
        push 0xCAFE
        mov eax, esp
        mov ebx, [esp]
        out 0xF4, eax
    """)
    assert r["eax"] == (4 << 20) - 4
    assert r["ebx"] == 0xCAFE


def test_push_esp_pushes_value_before_decrement_and_pop_esp():
    # SDM: PUSH ESP pushes the value of ESP as it existed before the instruction.
    r = regs("""
        mov esp, 0x8000
        push esp
        pop eax
        out 0xF4, eax
    """)
    assert r["eax"] == 0x8000


# ---------------------------------------------------------------- add / sub / cmp


@pytest.mark.parametrize(
    ("a", "b", "result", "expected"),
    [
        (1, 1, 2, set()),
        (0x7FFFFFFF, 1, 0x80000000, {"SF", "OF"}),
        (0xFFFFFFFF, 1, 0, {"CF", "ZF"}),
        (0x80000000, 0x80000000, 0, {"CF", "ZF", "OF"}),
        (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFE, {"CF", "SF"}),
        (0x80000000, 0xFFFFFFFF, 0x7FFFFFFF, {"CF", "OF"}),
        (0, 0, 0, {"ZF"}),
    ],
)
def test_add_result_and_flags_at_boundaries(a, b, result, expected):
    r = regs(f"""
        mov eax, {a:#x}
        mov ebx, {b:#x}
        add eax, ebx
        out 0xF4, eax
    """)
    assert r["eax"] == result
    assert arith_flags(r["eflags"]) == expected


@pytest.mark.parametrize(
    ("a", "b", "result", "expected"),
    [
        (5, 3, 2, set()),
        (5, 5, 0, {"ZF"}),
        (0, 1, 0xFFFFFFFF, {"CF", "SF"}),
        (0x80000000, 1, 0x7FFFFFFF, {"OF"}),
        (0x7FFFFFFF, 0xFFFFFFFF, 0x80000000, {"CF", "SF", "OF"}),
        (3, 5, 0xFFFFFFFE, {"CF", "SF"}),
        (0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, {"SF"}),
    ],
)
def test_sub_result_and_flags_at_boundaries(a, b, result, expected):
    r = regs(f"""
        mov eax, {a:#x}
        mov ebx, {b:#x}
        sub eax, ebx
        out 0xF4, eax
    """)
    assert r["eax"] == result
    assert arith_flags(r["eflags"]) == expected


def test_cmp_sets_sub_flags_and_writes_nothing():
    r = regs("""
        mov eax, 0x80000000
        cmp eax, 1              ; like sub: 0x7FFFFFFF, OF
        pushf
        pop ebx
        mov [val], 3
        cmp [val], 4            ; m, imm: 3 - 4 borrows
        pushf
        pop ecx
        mov esi, [val]
        out 0xF4, eax
    val: .dword 0
    """)
    assert r["eax"] == 0x80000000
    assert arith_flags(r["ebx"]) == {"OF"}
    assert arith_flags(r["ecx"]) == {"CF", "SF"}
    assert r["esi"] == 3


def test_add_and_sub_every_operand_form():
    r = regs("""
        mov eax, 10
        add eax, 5              ; r, imm  -> 15
        mov [m], 100
        add eax, [m]            ; r, m    -> 115
        add [m], eax            ; m, r    -> 215
        add [m], 1000           ; m, imm  -> 1215
        mov ebx, [m]
        sub ebx, 15             ; r, imm  -> 1200
        sub ebx, [m2]           ; r, m    -> 1193
        mov [m2], 50
        sub [m2], ebx           ; m, r    -> 50 - 1193
        sub [m], 215            ; m, imm  -> 1000
        mov ecx, [m2]
        mov edx, [m]
        out 0xF4, eax
    m:  .dword 0
    m2: .dword 7
    """)
    assert r["eax"] == 115
    assert r["ebx"] == 1193
    assert r["ecx"] == (50 - 1193) & 0xFFFFFFFF
    assert r["edx"] == 1000


def test_add_to_memory_sets_carry():
    r = regs("""
        mov [m], 0xFFFFFFFF
        add [m], 1
        mov eax, [m]
        out 0xF4, eax
    m: .dword 0
    """)
    assert r["eax"] == 0
    assert arith_flags(r["eflags"]) == {"CF", "ZF"}


# ---------------------------------------------------------------- logic


@pytest.mark.parametrize(
    ("op", "a", "b", "result"),
    [
        ("and", 0xF0F0F0F0, 0x0FF00FF0, 0x00F000F0),
        ("or", 0xF0F0F0F0, 0x0FF00FF0, 0xFFF0FFF0),
        ("xor", 0xF0F0F0F0, 0x0FF00FF0, 0xFF00FF00),
    ],
)
def test_logic_ops_clear_cf_and_of_and_set_sf(op, a, b, result):
    r = regs(f"""
        push 0x801              ; CF | OF
        popf
        mov eax, {a:#x}
        {op} eax, {b:#x}
        out 0xF4, eax
    """)
    assert r["eax"] == result
    assert arith_flags(r["eflags"]) == ({"SF"} if result & 0x80000000 else set())


def test_xor_self_sets_zf_and_clears_cf_of():
    r = regs("""
        push 0x881              ; CF | SF | OF
        popf
        mov eax, 1234
        xor eax, eax
        out 0xF4, eax
    """)
    assert r["eax"] == 0
    assert arith_flags(r["eflags"]) == {"ZF"}


def test_test_sets_flags_like_and_but_writes_nothing():
    r = regs("""
        push 0x801
        popf
        mov eax, 0x80000001
        test eax, 0x80000000
        pushf
        pop ebx
        test eax, 2
        pushf
        pop ecx
        mov [m], 5
        test [m], 2                ; m, imm
        pushf
        pop edx
        out 0xF4, eax
    m: .dword 0
    """)
    assert r["eax"] == 0x80000001
    assert arith_flags(r["ebx"]) == {"SF"}
    assert arith_flags(r["ecx"]) == {"ZF"}
    assert arith_flags(r["edx"]) == {"ZF"}


def test_logic_memory_forms():
    r = regs("""
        mov [m], 0x0F
        or [m], 0xF0             ; m, imm  -> 0xFF
        mov eax, 0x3C
        and [m], eax             ; m, r    -> 0x3C
        xor [m], 0xFF            ; m, imm  -> 0xC3
        mov ebx, 0x100
        or ebx, [m]              ; r, m    -> 0x1C3
        xor ebx, eax             ; r, r    -> 0x1FF
        and ebx, [m]             ; r, m    -> 0xC3
        mov ecx, [m]
        out 0xF4, eax
    m: .dword 0
    """)
    assert r["ecx"] == 0xC3
    assert r["ebx"] == 0xC3


def test_not_inverts_and_keeps_every_flag():
    r = regs("""
        push 0x8C1               ; CF ZF SF OF
        popf
        mov eax, 0x0000FFFF
        not eax
        mov [m], 0
        not [m]
        mov ebx, [m]
        out 0xF4, eax
    m: .dword 0
    """)
    assert r["eax"] == 0xFFFF0000
    assert r["ebx"] == 0xFFFFFFFF
    assert r["eflags"] & ARITH == CF | ZF | SF | OF


def test_not_with_clear_flags_sets_none():
    r = regs("""
        mov eax, 0
        not eax                  ; result 0xFFFFFFFF would set SF if not touched flags
        out 0xF4, eax
    """)
    assert r["eax"] == 0xFFFFFFFF
    assert r["eflags"] == 0


# ---------------------------------------------------------------- neg / inc / dec


@pytest.mark.parametrize(
    ("a", "result", "expected"),
    [
        (0, 0, {"ZF"}),
        (5, 0xFFFFFFFB, {"CF", "SF"}),
        (0x80000000, 0x80000000, {"CF", "SF", "OF"}),
        (0xFFFFFFFF, 1, {"CF"}),
    ],
)
def test_neg_sets_cf_when_operand_nonzero(a, result, expected):
    r = regs(f"""
        mov eax, {a:#x}
        neg eax
        out 0xF4, eax
    """)
    assert r["eax"] == result
    assert arith_flags(r["eflags"]) == expected


def test_neg_zero_clears_a_set_cf():
    r = regs("""
        push 1
        popf
        mov eax, 0
        neg eax
        out 0xF4, eax
    """)
    assert arith_flags(r["eflags"]) == {"ZF"}


def test_neg_memory():
    r = regs("""
        mov [m], 1
        neg [m]
        mov eax, [m]
        out 0xF4, eax
    m: .dword 0
    """)
    assert r["eax"] == 0xFFFFFFFF
    assert arith_flags(r["eflags"]) == {"CF", "SF"}


@pytest.mark.parametrize("cf", [0, 1])
def test_inc_wraps_to_zero_and_keeps_cf(cf):
    r = regs(f"""
        push {cf}
        popf
        mov eax, 0xFFFFFFFF
        inc eax
        out 0xF4, eax
    """)
    assert r["eax"] == 0
    assert arith_flags(r["eflags"]) == {"ZF"} | ({"CF"} if cf else set())


def test_inc_max_positive_sets_of_and_sf():
    r = regs("""
        mov eax, 0x7FFFFFFF
        inc eax
        out 0xF4, eax
    """)
    assert r["eax"] == 0x80000000
    assert arith_flags(r["eflags"]) == {"SF", "OF"}


@pytest.mark.parametrize("cf", [0, 1])
def test_dec_zero_wraps_and_keeps_cf(cf):
    r = regs(f"""
        push {cf}
        popf
        mov eax, 0
        dec eax
        out 0xF4, eax
    """)
    assert r["eax"] == 0xFFFFFFFF
    assert arith_flags(r["eflags"]) == {"SF"} | ({"CF"} if cf else set())


def test_dec_min_negative_sets_of():
    r = regs("""
        mov eax, 0x80000000
        dec eax
        out 0xF4, eax
    """)
    assert r["eax"] == 0x7FFFFFFF
    assert arith_flags(r["eflags"]) == {"OF"}


def test_inc_dec_memory_forms():
    r = regs("""
        mov [m], 41
        inc [m]
        inc [m]
        dec [m]
        mov eax, [m]
        mov [m], 1
        dec [m]
        mov ebx, [m]
        out 0xF4, eax
    m: .dword 0
    """)
    assert r["eax"] == 42
    assert r["ebx"] == 0
    assert arith_flags(r["eflags"]) == {"ZF"}


# ---------------------------------------------------------------- shifts


def test_shift_by_zero_leaves_value_and_all_flags():
    r = regs("""
        push 0x8C1               ; CF ZF SF OF
        popf
        mov eax, 0x12345678
        shl eax, 0
        shr eax, 0
        sar eax, 0
        mov ecx, 0
        shl eax, ecx
        out 0xF4, eax
    """)
    assert r["eax"] == 0x12345678
    assert r["eflags"] & ARITH == CF | ZF | SF | OF


def test_shift_count_32_is_masked_to_zero_and_changes_nothing():
    r = regs("""
        push 0x41                ; CF ZF
        popf
        mov eax, 0x12345678
        shl eax, 32
        mov ecx, 32
        shr eax, ecx
        sar eax, ecx
        out 0xF4, eax
    """)
    assert r["eax"] == 0x12345678
    assert r["eflags"] & ARITH == CF | ZF


def test_shl_by_ecx_uses_low_five_bits_only():
    r = regs("""
        mov eax, 1
        mov ecx, 0x23            ; & 31 = 3
        shl eax, ecx
        mov ebx, 1
        shl ebx, 33              ; & 31 = 1
        out 0xF4, eax
    """)
    assert r["eax"] == 8
    assert r["ebx"] == 2
    assert r["ecx"] == 0x23


def test_shl_by_one_out_of_msb_sets_cf_and_of():
    # OF = MSB(result) XOR CF = 0 XOR 1
    r = regs("""
        mov eax, 0x80000000
        shl eax, 1
        out 0xF4, eax
    """)
    assert r["eax"] == 0
    assert arith_flags(r["eflags"]) == {"CF", "ZF", "OF"}


def test_shl_by_one_into_msb_sets_of_without_cf():
    r = regs("""
        mov eax, 0x40000000
        shl eax, 1
        out 0xF4, eax
    """)
    assert r["eax"] == 0x80000000
    assert arith_flags(r["eflags"]) == {"SF", "OF"}


def test_shl_by_one_msb_equal_to_cf_clears_of():
    r = regs("""
        push 0x800               ; OF set beforehand
        popf
        mov eax, 0xC0000000
        shl eax, 1               ; result 0x80000000, CF 1, MSB 1 -> OF 0
        out 0xF4, eax
    """)
    assert r["eax"] == 0x80000000
    assert arith_flags(r["eflags"]) == {"CF", "SF"}


def test_shl_by_n_sets_cf_to_last_bit_out_and_leaves_of():
    r = regs("""
        push 0x800               ; OF set; a multi-bit shift must leave it
        popf
        mov eax, 0x00000003
        shl eax, 31              ; last bit out is bit 1 = 1; result 0x80000000
        pushf
        pop ebx
        push 0                   ; OF clear: stays clear even though MSB^CF would be 0
        popf
        mov ecx, 0x40000001
        shl ecx, 2               ; last bit out: bit 30 = 1; result 4
        out 0xF4, eax
    """)
    assert r["eax"] == 0x80000000
    assert arith_flags(r["ebx"]) == {"CF", "SF", "OF"}
    assert r["ecx"] == 4
    assert arith_flags(r["eflags"]) == {"CF"}


def test_shr_by_one_sets_of_to_old_msb():
    r = regs("""
        mov eax, 0x80000001
        shr eax, 1
        out 0xF4, eax
    """)
    assert r["eax"] == 0x40000000
    assert arith_flags(r["eflags"]) == {"CF", "OF"}


def test_shr_by_one_clears_of_when_old_msb_clear():
    r = regs("""
        push 0x800
        popf
        mov eax, 2
        shr eax, 1
        out 0xF4, eax
    """)
    assert r["eax"] == 1
    assert arith_flags(r["eflags"]) == set()


def test_shr_by_n_is_logical_and_leaves_of():
    r = regs("""
        push 0x800
        popf
        mov eax, 0x80000000
        mov ecx, 31
        shr eax, ecx
        out 0xF4, eax
    """)
    assert r["eax"] == 1
    assert arith_flags(r["eflags"]) == {"OF"}


def test_shr_to_zero_sets_zf_and_cf_from_last_bit():
    r = regs("""
        mov eax, 0x0000000C
        shr eax, 4               ; bits out: 1100 ... last out is bit 3 = 1
        out 0xF4, eax
    """)
    assert r["eax"] == 0
    assert arith_flags(r["eflags"]) == {"CF", "ZF"}


def test_sar_by_one_clears_of_and_keeps_sign():
    r = regs("""
        push 0x800
        popf
        mov eax, 0x80000001
        sar eax, 1
        out 0xF4, eax
    """)
    assert r["eax"] == 0xC0000000
    assert arith_flags(r["eflags"]) == {"CF", "SF"}


def test_sar_by_31_fills_with_sign_and_leaves_of():
    r = regs("""
        push 0x800
        popf
        mov eax, 0x80000000
        sar eax, 31
        mov ebx, 0x7FFFFFFF
        sar ebx, 31
        out 0xF4, eax
    """)
    assert r["eax"] == 0xFFFFFFFF
    assert r["ebx"] == 0
    # last: sar ebx,31 -> 0, CF = bit 30 of 0x7FFFFFFF = 1, ZF; OF left set
    assert arith_flags(r["eflags"]) == {"CF", "ZF", "OF"}


# ---------------------------------------------------------------- imul / div


def test_imul_overflow_sets_cf_of_and_keeps_low_bits():
    r = regs("""
        mov eax, 0x10000
        mov ebx, 0x10000
        imul eax, ebx
        out 0xF4, eax
    """)
    assert r["eax"] == 0
    assert arith_flags(r["eflags"]) == {"CF", "OF"}  # ZF left (eflags started 0)


def test_imul_leaves_sf_and_zf():
    r = regs("""
        push 0x40                ; ZF
        popf
        mov eax, -3
        imul eax, 5              ; -15 fits; SF and ZF are left alone
        out 0xF4, eax
    """)
    assert r["eax"] == (-15) & 0xFFFFFFFF
    assert arith_flags(r["eflags"]) == {"ZF"}


def test_imul_no_overflow_clears_cf_and_of():
    r = regs("""
        push 0x8C1
        popf
        mov eax, -1
        mov ebx, -1
        imul eax, ebx            ; 1
        out 0xF4, eax
    """)
    assert r["eax"] == 1
    assert arith_flags(r["eflags"]) == {"ZF", "SF"}


def test_imul_signed_boundary_two_to_31_overflows_minus_two_to_31_fits():
    r = regs("""
        mov eax, 0x40000000
        imul eax, 2              ; +2^31 does not fit
        pushf
        pop ebx
        mov ecx, 0xC0000000      ; -2^30
        imul ecx, 2              ; -2^31 fits
        out 0xF4, eax
    """)
    assert r["eax"] == 0x80000000
    assert arith_flags(r["ebx"]) == {"CF", "OF"}
    assert r["ecx"] == 0x80000000
    assert arith_flags(r["eflags"]) == set()


def test_imul_register_memory_form():
    r = regs("""
        mov eax, 7
        imul eax, [m]
        out 0xF4, eax
    m: .dword -6
    """)
    assert r["eax"] == (-42) & 0xFFFFFFFF


def test_div_quotient_and_remainder_come_from_old_eax():
    # remainder = 17 % 5 = 2 (from the old eax; from the new eax 3 it would be 3)
    r = regs("""
        mov eax, 17
        mov edx, 0xDEADBEEF      ; div divides eax alone: edx is not a high half
        mov ebx, 5
        div ebx
        out 0xF4, eax
    """)
    assert r["eax"] == 3
    assert r["edx"] == 2


def test_div_is_unsigned():
    r = regs("""
        mov eax, 0xFFFFFFFF
        mov ecx, 2
        div ecx
        out 0xF4, eax
    """)
    assert r["eax"] == 0x7FFFFFFF
    assert r["edx"] == 1


def test_div_by_edx_uses_old_edx_as_divisor():
    r = regs("""
        mov eax, 100
        mov edx, 7
        div edx
        out 0xF4, eax
    """)
    assert r["eax"] == 14
    assert r["edx"] == 2


def test_div_by_eax_itself():
    r = regs("""
        mov eax, 9
        div eax
        out 0xF4, eax
    """)
    assert r["eax"] == 1
    assert r["edx"] == 0


def test_div_leaves_all_flags():
    r = regs("""
        push 0x8C1
        popf
        mov eax, 10
        mov ebx, 3
        div ebx
        out 0xF4, eax
    """)
    assert (r["eax"], r["edx"]) == (3, 1)
    assert r["eflags"] & ARITH == CF | ZF | SF | OF


def test_nop_changes_nothing_but_eip():
    r = regs("""
        nop
        nop
        out 0xF4, eax
    """)
    assert r["eflags"] == 0
    assert r["eax"] == 0


def test_pop_esp_loads_the_popped_value():
    # SDM: POP ESP increments esp before writing the popped value into it
    r = regs("""
        mov esp, 0x8000
        push 0x3000
        pop esp
        mov eax, esp
        out 0xF4, eax
    """)
    assert r["eax"] == 0x3000


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        ("cmp eax, ebx", {"CF", "SF"}),
        ("cmp eax, 6", {"CF", "SF"}),
        ("cmp eax, [six]", {"CF", "SF"}),
        ("cmp [five], ebx", {"CF", "SF"}),
        ("cmp [five], 6", {"CF", "SF"}),
        ("test eax, ebx", set()),
        ("test eax, 2", {"ZF"}),
        ("test eax, [six]", set()),
        ("test [five], ebx", set()),
        ("test [five], 2", {"ZF"}),
    ],
)
def test_cmp_and_test_every_operand_form(form, expected):
    # eax = [five] = 5, ebx = [six] = 6: 5 - 6 borrows (CF SF); 5 & 6 = 4; 5 & 2 = 0
    r = regs(f"""
        mov eax, 5
        mov ebx, 6
        {form}
        out 0xF4, eax
    five: .dword 5
    six:  .dword 6
    """)
    assert arith_flags(r["eflags"]) == expected
    assert (r["eax"], r["ebx"]) == (5, 6)


def test_sub_and_logic_memory_immediate_flags():
    r = regs("""
        mov [m], 0
        sub [m], 1
        pushf
        pop ebx
        mov ecx, [m]
        and [m], 0x7FFFFFFF
        pushf
        pop edx
        mov esi, [m]
        out 0xF4, eax
    m: .dword 0
    """)
    assert arith_flags(r["ebx"]) == {"CF", "SF"}
    assert r["ecx"] == 0xFFFFFFFF
    assert arith_flags(r["edx"]) == set()
    assert r["esi"] == 0x7FFFFFFF


def test_shift_register_by_itself_through_ecx():
    r = regs("""
        mov ecx, 3
        shl ecx, ecx
        out 0xF4, eax
    """)
    assert r["ecx"] == 24


def test_div_smaller_dividend_gives_zero_quotient():
    r = regs("""
        mov eax, 5
        mov ecx, 9
        div ecx
        out 0xF4, eax
    """)
    assert (r["eax"], r["edx"]) == (0, 5)


def test_self_modifying_code_takes_effect_on_next_execution():
    # Run a block once, then copy the bytes of `mov ebx, 2` (new:) over `mov ebx, 1` (old:);
    # both have the same length, whatever the encoding.  The second pass must see the new code.
    r = regs("""
    main:
        mov ecx, 0
        mov edi, 0
    again:
    old:
        mov ebx, 1
    old_end:
        add edi, ebx
        inc ecx
        cmp ecx, 2
        je done
        mov esi, 0
    copy:
        movzx eax, byte [new + esi]
        mov byte [old + esi], eax
        inc esi
        cmp esi, old_end - old
        jne copy
        jmp again
    done:
        out 0xF4, eax
    new:
        mov ebx, 2
    """)
    assert r["edi"] == 3


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        ("add eax, 1", set()),
        ("sub eax, 1", set()),
        ("inc eax", {"CF"}),  # inc keeps CF, recomputes the rest
        ("dec eax", {"CF"}),
        ("neg eax", {"CF", "SF"}),
        ("shl eax, 1", set()),
        ("shr eax, 1", set()),  # OF = old MSB = 0
        ("sar eax, 1", set()),
        ("or eax, 0", set()),
    ],
)
def test_flag_writers_clear_previously_set_flags(op, expected):
    r = regs(f"""
        push 0x8C1              ; CF ZF SF OF all set
        popf
        mov eax, 6
        {op}
        out 0xF4, eax
    """)
    assert arith_flags(r["eflags"]) == expected


def test_store_into_the_next_instruction_in_straight_line_code_takes_effect():
    # copy 8 bytes of `mov ebx, 2; nop x4` over `mov ebx, 1; nop x4` right before executing it
    r = regs("""
        mov eax, [new]
        mov [old], eax
        mov eax, [new + 4]
        mov [old + 4], eax
    old:
        mov ebx, 1
        nop
        nop
        nop
        nop
        out 0xF4, eax
    new:
        mov ebx, 2
        nop
        nop
        nop
        nop
    """)
    assert r["ebx"] == 2
