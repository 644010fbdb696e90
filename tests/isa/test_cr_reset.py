"""Control registers and reset state (docs/machine.md "State" and "Precise rules > Control registers / Reset")."""

from __future__ import annotations

from .conftest import kernel, regs, run


def test_reset_state_registers_flags_and_stack():
    r = run("""
        out 0xF4, eax
    """)
    reg = r["registers"]
    assert r["exit"]["reason"] == "poweroff"
    for name in ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp"):
        assert reg[name] == 0, name
    assert reg["esp"] == 4 << 20
    assert reg["eflags"] == 0
    assert reg["cs"] == 0
    assert reg["cr0"] == 1
    assert reg["cr2"] == 0
    assert reg["cr3"] == 0


def test_reset_esp_is_top_of_configured_ram():
    r = run(
        """
        mov eax, esp
        out 0xF4, eax
    """,
        memory_size=0x20000,
    )
    assert r["registers"]["eax"] == 0x20000


def test_reset_descriptor_registers_cr8_and_timer_are_zero():
    r = regs("""
        mov [buf], 0xFFFFFFFF
        mov [buf + 4], 0xFFFFFFFF
        mov [buf + 8], 0xFFFFFFFF
        mov [buf + 12], 0xFFFFFFFF
        sgdt [buf]
        sidt [buf + 8]
        mov eax, [buf]
        movzx ebx, byte [buf + 4]
        mov ecx, [buf + 8]
        movzx edx, byte [buf + 12]
        str esi
        mov edi, cr8
        in ebp, 0x40
        out 0xF4, eax
    buf: .space 16
    """)
    reg = r
    assert reg["eax"] == 0 and reg["ebx"] == 0  # gdtr limit 0, base 0
    assert reg["ecx"] == 0 and reg["edx"] == 0  # idtr
    assert reg["esi"] == 0  # tr
    assert reg["edi"] == 0  # cr8
    assert reg["ebp"] == 0  # timer period: off


def test_reset_ram_is_zero_outside_the_image():
    r = regs("""
        mov eax, [0x200000]
        mov ebx, [0x3FFFFC]
        mov ecx, [0x800]
        out 0xF4, eax
    """)
    assert (r["eax"], r["ebx"], r["ecx"]) == (0, 0, 0)


def test_execution_starts_at_entry_label():
    r = run("""
        mov eax, 1
        out 0xF4, eax
    start:
        mov eax, 2
        out 0xF4, eax
    .entry start
    """)
    assert r["exit"]["code"] == 2


def test_execution_starts_at_origin_without_entry():
    r = run("""
        mov eax, 1
        out 0xF4, eax
    start:
        mov eax, 2
        out 0xF4, eax
    """)
    assert r["exit"]["code"] == 1


def test_default_origin_is_0x1000():
    r = regs("""
    here:
        mov eax, here
        out 0xF4, eax
    """)
    assert r["eax"] == 0x1000


def test_cr0_only_wp_and_pg_are_writable_and_pe_reads_1():
    r = regs("""
        mov eax, 0x7FFFFFFE      ; every bit but PG and PE
        mov cr0, eax
        mov ebx, cr0
        mov eax, 0
        mov cr0, eax             ; try to clear PE
        mov ecx, cr0
        out 0xF4, eax
    """)
    assert r["ebx"] == 0x00010001
    assert r["ecx"] == 1


def test_cr0_write_all_ones_with_paging_sets_only_pg_wp_pe():
    r = run(
        kernel(
            """
        mov eax, 0xFFFFFFFF
        mov cr0, eax
        mov ebx, cr0
        out 0xF4, eax
    """,
            paging=True,
        )
    )
    assert r["registers"]["ebx"] == 0x80010001
    assert r["registers"]["cr0"] == 0x80010001


def test_lmsw_cannot_clear_pe_or_touch_wp():
    r = regs("""
        mov eax, 0x10001
        mov cr0, eax             ; WP on
        mov eax, 0
        lmsw eax
        mov ebx, cr0
        mov eax, 0xFFFF
        lmsw eax
        mov ecx, cr0
        out 0xF4, eax
    """)
    assert r["ebx"] == 0x10001
    assert r["ecx"] == 0x10001


def test_cr8_keeps_low_4_bits():
    r = regs("""
        mov eax, 0xFFFFFFFF
        mov cr8, eax
        mov ebx, cr8
        mov eax, 0x25
        mov cr8, eax
        mov ecx, cr8
        out 0xF4, eax
    """)
    assert r["ebx"] == 0xF
    assert r["ecx"] == 5


def test_cr2_is_writable_and_readable():
    # SDM: mov cr2, r writes cr2 (docs/machine.md is silent beyond "last page-fault address")
    r = regs("""
        mov eax, 0x12345678
        mov cr2, eax
        mov ebx, cr2
        out 0xF4, eax
    """)
    assert r["ebx"] == 0x12345678


def test_cr3_reads_back_page_directory_base():
    r = regs("""
        mov eax, 0x5000
        mov cr3, eax
        mov ebx, cr3
        out 0xF4, eax
    """)
    assert r["ebx"] == 0x5000
    assert r["cr3"] == 0x5000


def test_cr_moves_leave_flags():
    r = regs("""
        push 0x8C1
        popf
        mov eax, cr0
        mov cr8, eax
        smsw ebx
        out 0xF4, eax
    """)
    assert r["eflags"] == 0x8C1


def test_mov_r_cs_at_reset_reads_0():
    r = regs("""
        mov ebx, 0x99
        mov ebx, cs
        out 0xF4, eax
    """)
    assert r["ebx"] == 0
