"""cpuid (docs/machine.md "Precise rules > Ports and cpuid")."""

from __future__ import annotations

import pytest

from .conftest import at_ring, regs, run


def test_cpuid_leaf0_max_leaf_1_and_vendor_ringlabcpu32():
    r = regs("""
        mov eax, 0
        mov ecx, 0x5555
        cpuid
        out 0xF4, eax
    """)
    assert r["eax"] == 1
    vendor = b"".join(r[x].to_bytes(4, "little") for x in ("ebx", "edx", "ecx"))
    assert vendor == b"RingLabCPU32"


def test_cpuid_leaf1_hypervisor_bit_clear_natively_and_all_else_zero():
    r = regs("""
        mov eax, 1
        mov ebx, 0x1111
        mov ecx, 0x2222
        mov edx, 0x3333
        cpuid
        out 0xF4, eax
    """)
    assert (r["eax"], r["ebx"], r["ecx"], r["edx"]) == (0, 0, 0, 0)


@pytest.mark.parametrize("leaf", [2, 7, 0x40000000, 0x80000000, 0xFFFFFFFF])
def test_cpuid_other_leaves_read_zero(leaf):
    r = regs(f"""
        mov eax, {leaf:#x}
        mov ebx, 0x1111
        mov ecx, 0x2222
        mov edx, 0x3333
        cpuid
        out 0xF4, eax
    """)
    assert (r["eax"], r["ebx"], r["ecx"], r["edx"]) == (0, 0, 0, 0)


def test_cpuid_leaves_flags_alone():
    r = regs("""
        push 0x8C1
        popf
        mov eax, 0
        cpuid
        out 0xF4, eax
    """)
    assert r["eflags"] == 0x8C1


def test_cpuid_at_ring3_is_innocuous():
    src = at_ring(
        3,
        """
        mov eax, 0
        cpuid
        int 0x30
    """,
    )
    r = run(src)
    assert r["rec"] == {}
    assert r["registers"]["ebx"] == int.from_bytes(b"Ring", "little")
