"""I/O ports (docs/machine.md "Devices" and "Precise rules > Ports and cpuid")."""

from __future__ import annotations

import pytest

from .conftest import regs, run


def test_console_out_writes_the_low_byte_of_the_register():
    r = run("""
        mov eax, 0x12345648     ; 'H'
        out 0x3F8, eax
        mov eax, 0x169          ; 'i'
        out 0x3F8, eax
        out 0xF4, eax
    """)
    assert r["console"] == "Hi"
    assert r["exit"]["reason"] == "poweroff"


@pytest.mark.parametrize("reg", ["eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp"])
def test_any_register_may_carry_console_data(reg):
    r = run(f"""
        mov {reg}, 0x5A         ; 'Z'
        out 0x3F8, {reg}
        mov eax, 0
        out 0xF4, eax
    """)
    assert r["console"] == "Z"


def test_console_out_through_edx_port():
    r = run("""
        mov edx, 0x3F8
        mov esi, 'k'
        out edx, esi
        out 0xF4, eax
    """)
    assert r["console"] == "k"


def test_console_bytes_decode_as_latin1():
    r = run("""
        mov eax, 0xE9
        out 0x3F8, eax
        mov eax, 0xFF
        out 0x3F8, eax
        mov eax, 0
        out 0x3F8, eax
        out 0xF4, eax
    """)
    assert r["console"] == "\xe9\xff\x00"


def test_console_in_returns_input_bytes_then_all_ones():
    r = regs(
        """
        in eax, 0x3F8
        in ebx, 0x3F8
        in ecx, 0x3F8
        in esi, 0x3F8
        in edi, 0x3F8
        out 0xF4, eax
    """,
        input=b"h\xe9i",
    )
    assert r["eax"] == ord("h")
    assert r["ebx"] == 0xE9  # a byte, not sign-extended
    assert r["ecx"] == ord("i")
    assert r["esi"] == 0xFFFFFFFF
    assert r["edi"] == 0xFFFFFFFF


def test_console_in_without_input_returns_all_ones():
    r = regs("""
        in ebp, 0x3F8
        mov edx, 0x3F8
        in esi, edx
        out 0xF4, eax
    """)
    assert r["ebp"] == 0xFFFFFFFF
    assert r["esi"] == 0xFFFFFFFF


def test_console_echo_with_edx_port():
    r = run(
        """
    main:
        mov edx, 0x3F8
    .l: in eax, edx
        cmp eax, -1
        je .done
        out edx, eax
        jmp .l
    .done:
        out 0xF4, eax
    """,
        input=b"echo!",
    )
    assert r["console"] == "echo!"


def test_post_port_out_has_no_effect_and_in_reads_zero():
    r = regs("""
        mov eax, 0x41
        out 0x80, eax
        mov ebx, 0x1234
        in ebx, 0x80
        out 0xF4, eax
    """)
    assert r["ebx"] == 0
    assert r["eax"] == 0x41


def test_power_port_in_reads_zero():
    r = regs("""
        mov ebx, 7
        in ebx, 0xF4
        out 0xF4, eax
    """)
    assert r["ebx"] == 0


def test_unknown_port_in_returns_all_ones_and_out_is_ignored():
    r = run("""
        mov eax, 0x41
        out 0x1234, eax
        out 0x3F9, eax
        out 0x41, eax
        in ebx, 0x1234
        mov edx, 0xFFFF
        in ecx, edx
        in esi, 0x81
        out 0xF4, eax
    """)
    assert r["exit"]["reason"] == "poweroff"
    assert r["console"] == ""
    reg = r["registers"]
    assert (reg["ebx"], reg["ecx"], reg["esi"]) == (0xFFFFFFFF,) * 3


@pytest.mark.parametrize(("value", "code"), [(0, 0), (7, 7), (0x1FF, 0xFF), (0xABCD12, 0x12), (0x100, 0)])
def test_power_off_exit_code_is_low_byte(value, code):
    r = run(f"""
        mov esi, {value:#x}
        out 0xF4, esi
        mov eax, 0
        out 0x3F8, eax
    """)
    assert r["exit"]["reason"] == "poweroff"
    assert r["exit"]["code"] == code
    assert r["console"] == ""  # nothing runs after power off


def test_power_off_through_edx_port():
    r = run("""
        mov edx, 0xF4
        mov edi, 42
        out edx, edi
    """)
    assert (r["exit"]["reason"], r["exit"]["code"]) == ("poweroff", 42)


def test_in_and_out_leave_flags():
    r = regs("""
        push 0x8C1
        popf
        in eax, 0x3F8
        out 0x80, eax
        out 0xF4, eax
    """)
    assert r["eflags"] == 0x8C1
