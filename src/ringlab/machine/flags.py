"""Flag arithmetic, shared by the interpreter and the block compiler.

Each ``flags_*`` function takes the current ``eflags`` and the operands of one instruction and
returns ``eflags`` with the bits that instruction writes replaced (docs/machine.md "Precise rules >
Flags", the SDM elsewhere).  The block compiler calls these same functions when it
materialises flags it kept lazily, so both paths agree bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = [
    "ARITH",
    "CF",
    "CONDITIONS",
    "EFLAGS_MASK",
    "IF",
    "IOPL",
    "OF",
    "SF",
    "ZF",
    "condition",
    "flags_add",
    "flags_dec",
    "flags_imul",
    "flags_inc",
    "flags_logic",
    "flags_neg",
    "flags_sar",
    "flags_shl",
    "flags_shr",
    "flags_sub",
]

M = 0xFFFFFFFF
CF = 1 << 0
ZF = 1 << 6
SF = 1 << 7
IF = 1 << 9
OF = 1 << 11
IOPL = 3 << 12
ARITH = CF | ZF | SF | OF
EFLAGS_MASK = CF | ZF | SF | IF | OF | IOPL
"""The bits that exist; every other bit reads as 0."""
_NOT_ARITH = ~ARITH
_NOT_ZSO = ~(ZF | SF | OF)
_NOT_ZSC = ~(ZF | SF | CF)
_NOT_CO = ~(CF | OF)


def _zs(r: int) -> int:
    # SF is bit 7 of eflags and bit 31 of the result: shift it down by 24.
    return ZF if r == 0 else (r >> 24) & SF


def flags_add(fl: int, a: int, b: int) -> int:
    s = a + b
    r = s & M
    return (fl & _NOT_ARITH) | (s >> 32) | _zs(r) | ((((a ^ r) & (b ^ r)) >> 20) & OF)


def flags_sub(fl: int, a: int, b: int) -> int:
    r = (a - b) & M
    return (fl & _NOT_ARITH) | (a < b) | _zs(r) | ((((a ^ b) & (a ^ r)) >> 20) & OF)


def flags_logic(fl: int, r: int) -> int:
    """and, or, xor, test: CF = OF = 0."""
    return (fl & _NOT_ARITH) | _zs(r)


def flags_inc(fl: int, a: int) -> int:
    r = (a + 1) & M
    return (fl & _NOT_ZSO) | _zs(r) | (OF if r == 0x80000000 else 0)


def flags_dec(fl: int, a: int) -> int:
    r = (a - 1) & M
    return (fl & _NOT_ZSO) | _zs(r) | (OF if a == 0x80000000 else 0)


def flags_neg(fl: int, a: int) -> int:
    r = -a & M
    return (fl & _NOT_ARITH) | (a != 0) | _zs(r) | (OF if a == 0x80000000 else 0)


def flags_imul(fl: int, product: int) -> int:
    """CF = OF = the signed product does not fit in 32 bits; SF and ZF are left."""
    fits = -0x80000000 <= product <= 0x7FFFFFFF
    return (fl & _NOT_CO) | (0 if fits else CF | OF)


def _shift_flags(fl: int, r: int, cf: int, count: int, of: int) -> int:
    fl = (fl & _NOT_ZSC) | cf | _zs(r)
    if count == 1:  # OF is defined only for 1-bit shifts; otherwise it is left unchanged
        fl = (fl & ~OF) | (OF if of else 0)
    return fl


def flags_shl(fl: int, a: int, count: int) -> int:
    if count == 0:
        return fl
    r = (a << count) & M
    cf = (a >> (32 - count)) & 1
    return _shift_flags(fl, r, cf, count, (r >> 31) ^ cf)


def flags_shr(fl: int, a: int, count: int) -> int:
    if count == 0:
        return fl
    return _shift_flags(fl, a >> count, (a >> (count - 1)) & 1, count, a >> 31)


def flags_sar(fl: int, a: int, count: int) -> int:
    if count == 0:
        return fl
    sa = a - ((a & 0x80000000) << 1)
    return _shift_flags(fl, (sa >> count) & M, (sa >> (count - 1)) & 1, count, 0)


CONDITIONS: dict[str, Callable[[int], bool]] = {
    "e": lambda f: bool(f & ZF),
    "ne": lambda f: not f & ZF,
    "l": lambda f: bool(f & SF) != bool(f & OF),
    "le": lambda f: bool(f & ZF) or bool(f & SF) != bool(f & OF),
    "g": lambda f: not f & ZF and bool(f & SF) == bool(f & OF),
    "ge": lambda f: bool(f & SF) == bool(f & OF),
    "b": lambda f: bool(f & CF),
    "be": lambda f: bool(f & (CF | ZF)),
    "a": lambda f: not f & (CF | ZF),
    "ae": lambda f: not f & CF,
    "s": lambda f: bool(f & SF),
    "ns": lambda f: not f & SF,
    "o": lambda f: bool(f & OF),
    "no": lambda f: not f & OF,
}
"""Canonical jcc condition name (``isa.JCC`` values) -> test on eflags."""

CONDITION_READS: dict[str, int] = {
    "e": ZF,
    "ne": ZF,
    "l": SF | OF,
    "ge": SF | OF,
    "le": ZF | SF | OF,
    "g": ZF | SF | OF,
    "b": CF,
    "ae": CF,
    "be": CF | ZF,
    "a": CF | ZF,
    "s": SF,
    "ns": SF,
    "o": OF,
    "no": OF,
}
"""Which flags each condition reads (the block compiler's liveness analysis)."""


def condition(cc: str, fl: int) -> bool:
    return CONDITIONS[cc](fl)
