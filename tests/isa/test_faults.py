"""Exception delivery (docs/machine.md "Interrupts and exceptions" and "Precise rules > Events").

The recording handler prints the frame it finds; see conftest.  Small RAM (``memory_size``) makes
addresses beyond it "physical memory that does not exist" (#MC, vector 18, no error code).
"""

from __future__ import annotations

import pytest

from .conftest import IF, at_ring, frame, gate, kernel, rec_gate, run

SMALL = 0x40000  # 256 KiB: the prelude image fits well below


# ---------------------------------------------------------------- #DE


def test_div_by_zero_raises_de_and_changes_nothing():
    src = kernel("""
        push 0x8C1
        popf
        mov esp, 0x3FF00
        mov eax, 1234
        mov edx, 5678
        mov ebx, 0
    here:
        div ebx
        out 0xF4, eax
    """)
    r = run(src)
    rec = r["rec"]
    assert rec["vec"] == 0
    assert r["exit"]["code"] == 0
    assert rec["esp"] == 0x3FF00 - 12  # no error code
    f = frame(rec, err=False)
    assert f["eip"] == r["sym"]["here"]
    assert f["cs"] == 0
    assert f["eflags"] == 0x8C1
    assert (rec["eax"], rec["edx"]) == (1234, 5678)


def test_div_by_zero_at_ring3_switches_to_esp0():
    src = at_ring(
        3,
        """
        mov ecx, 0
    here:
        div ecx
    """,
    )
    r = run(src)
    rec = r["rec"]
    assert rec["vec"] == 0
    assert rec["esp"] == r["sym"]["rl_kstack0_top"] - 16
    f = frame(rec, err=False)
    assert (f["eip"], f["cs"], f["esp"]) == (r["sym"]["here"], 3, r["sym"]["rl_ustack_top"])


def test_faulting_instruction_does_not_retire():
    # rdtsc returns the time before its own retirement: T. mov retires (T+2 after it).  The div
    # faults and does not retire; delivery retires nothing, so the handler's rdtsc reads T+2.
    src = kernel(
        """
        mov ebx, 0
        rdtsc
        mov esi, eax
        div ebx
    de:
        rdtsc
        sub eax, esi
        out 0xF4, eax
    """,
        gates={0: gate("de")},
    )
    r = run(src)
    assert r["registers"]["eax"] == 2


def test_int_n_retires():
    src = kernel(
        """
        rdtsc
        mov esi, eax
        int 0x22
    h:
        rdtsc
        sub eax, esi
        out 0xF4, eax
    """,
        gates={0x22: gate("h")},
    )
    r = run(src)
    assert r["registers"]["eax"] == 3


# ---------------------------------------------------------------- #GP frame


def test_gp_from_ring3_pushes_old_esp_eflags_cs_eip_and_error_code_on_esp0():
    src = at_ring(
        3,
        """
        mov esp, 0x3E000
    here:
        cli
    """,
        if_=True,
    )
    r = run(src)
    rec = r["rec"]
    assert rec["vec"] == 13
    assert rec["esp"] == r["sym"]["rl_kstack0_top"] - 20
    assert rec["s0"] == 0  # error code
    assert rec["s1"] == r["sym"]["here"]  # eip
    assert rec["s2"] == 3  # cs
    assert rec["s3"] == IF  # eflags
    assert rec["s4"] == 0x3E000  # old esp
    assert rec["hcs"] == 0
    assert not rec["hfl"] & IF


def test_tss_esp0_is_read_at_delivery_time_from_tr():
    src = at_ring(
        3,
        """
        cli
    """,
        pre="    mov [rl_tss + 4], 0x3D000\n",
    )
    r = run(src)
    assert r["rec"]["esp"] == 0x3D000 - 20


def test_ltr_selects_another_tss():
    src = at_ring(
        3,
        """
        cli
    """,
        pre="""
        mov eax, tss2
        ltr eax
    """,
        data="""
    .align 16
    tss2: .dword 0
          .dword 0x3C000
          .space 24
    """,
    )
    r = run(src)
    assert r["rec"]["esp"] == 0x3C000 - 20


@pytest.mark.parametrize(("ring", "label"), [(1, "rl_kstack1_top"), (2, "rl_kstack2_top")])
def test_fault_at_ring3_to_handler_ring_n_uses_tss_esp_n(ring, label):
    src = at_ring(
        3,
        """
        mov esp, 0x3E000
    here:
        vmcall
    """,
        iopl=3,
        gates={6: rec_gate(6, ring=ring)},
    )
    r = run(src)
    rec = r["rec"]
    assert rec["vec"] == 6
    assert rec["hcs"] == ring
    assert rec["esp"] == r["sym"][label] - 16
    f = frame(rec, err=False)
    assert (f["eip"], f["cs"], f["esp"]) == (r["sym"]["here"], 3, 0x3E000)


def test_exception_gate_ring_above_cpl_is_df():
    # #UD at ring 0 through a gate whose ring is 3: #GP(6*8+2) while delivering an exception -> #DF
    src = kernel(
        """
        vmcall
    """,
        gates={6: rec_gate(6, ring=3, dpl=3)},
    )
    r = run(src)
    assert r["rec"]["vec"] == 8
    assert r["rec"]["s0"] == 0  # #DF error code is 0 (SDM)


# ---------------------------------------------------------------- #DF and triple fault


def test_exception_through_not_present_gate_becomes_df_with_error_code_zero():
    src = kernel(
        """
        mov esp, 0x3FF00
        vmcall
    """,
        gates={6: None},
    )
    r = run(src)
    rec = r["rec"]
    assert rec["vec"] == 8, r["console"]
    assert rec["esp"] == 0x3FF00 - 16  # error code pushed
    assert rec["s0"] == 0


def test_exception_beyond_idt_limit_becomes_df():
    # IDT covers vectors 0-13; a #PF (14) at ring 0 cannot be delivered -> #DF (8, within the limit)
    src = kernel(
        """
        mov eax, [0x400000]     ; PDE 1 is not present
    """,
        paging=True,
        idt_limit=14 * 8 - 1,
    )
    r = run(src)
    assert r["rec"]["vec"] == 8, r["console"]
    assert r["rec"]["s0"] == 0


def test_push_fault_while_delivering_exception_is_df():
    # Ring 3 #UD -> gate ring 0 -> TSS esp0 points beyond RAM: the push raises #MC while
    # delivering an exception -> #DF, whose gate runs at ring 3 (no stack switch) on the user stack.
    src = at_ring(
        3,
        """
        mov esp, 0x3E000
        vmcall
    """,
        pre="    mov [rl_tss + 4], 0x80000\n",
        iopl=3,
        gates={8: rec_gate(8, ring=3)},
    )
    r = run(src, memory_size=SMALL)
    rec = r["rec"]
    assert rec["vec"] == 8, r["console"]
    assert rec["hcs"] == 3
    assert rec["esp"] == 0x3E000 - 16
    assert rec["s0"] == 0


def test_fault_while_delivering_df_is_triple_fault_shutdown():
    src = kernel(
        """
        vmcall
    """,
        gates={6: None, 8: None},
    )
    r = run(src)
    assert r["exit"]["reason"] == "shutdown"
    assert r["rec"] == {}


def test_stack_beyond_ram_at_ring0_triple_faults():
    # #UD push -> #MC -> #DF push -> #MC: shutdown
    src = kernel("""
        mov esp, 0x80000
        vmcall
    """)
    r = run(src, memory_size=SMALL)
    assert r["exit"]["reason"] == "shutdown"


def test_fault_while_delivering_int_n_is_delivered_as_itself():
    # int 0x31 at ring 3 switches to esp0 (beyond RAM): #MC, delivered as #MC (not #DF) through
    # a ring-3 #MC gate on the user stack; nothing changed: CPL 3, esp, IF.
    src = at_ring(
        3,
        """
        mov esp, 0x3E000
    here:
        int 0x31
    """,
        pre="    mov [rl_tss + 4], 0x80000\n",
        iopl=3,
        if_=True,
        gates={18: rec_gate(18, ring=3, trap=True)},
    )
    r = run(src, memory_size=SMALL)
    rec = r["rec"]
    assert rec["vec"] == 18, r["console"]
    assert rec["hcs"] == 3
    assert rec["esp"] == 0x3E000 - 12  # esp unchanged by the failed entry; #MC has no error code
    f = frame(rec, err=False)
    assert f["eip"] == r["sym"]["here"]
    assert f["cs"] == 3
    assert f["eflags"] == IF | 0x3000


# ---------------------------------------------------------------- #MC


def test_read_beyond_ram_raises_mc_without_error_code():
    src = kernel("""
        mov esp, 0x3FF00
        mov eax, 0x77
    here:
        mov eax, [0x50000]
    """)
    r = run(src, memory_size=SMALL)
    rec = r["rec"]
    assert rec["vec"] == 18
    assert rec["esp"] == 0x3FF00 - 12
    assert frame(rec, err=False)["eip"] == r["sym"]["here"]
    assert rec["eax"] == 0x77


def test_write_beyond_ram_raises_mc():
    src = kernel("""
    here:
        mov [0x50000], eax
    """)
    r = run(src, memory_size=SMALL)
    assert r["rec"]["vec"] == 18
    assert frame(r["rec"], err=False)["eip"] == r["sym"]["here"]


def test_write_straddling_end_of_ram_raises_mc_and_writes_no_byte():
    # bytes 0x3FFFE..0x40001: the last two do not exist, so the first two must not be written
    src = kernel(
        """
        mov [0x3FFFC], 0x11111111
        mov eax, 0xAABBCCDD
        mov ebx, 0x3FFFE
        mov [ebx], eax
    mc:
        mov eax, [0x3FFFC]
        out 0xF4, eax
    """,
        gates={18: gate("mc")},
    )
    r = run(src, memory_size=SMALL)
    assert r["registers"]["eax"] == 0x11111111


def test_fetch_beyond_ram_raises_mc_with_eip_there():
    src = kernel("""
        jmp 0x50000
    """)
    r = run(src, memory_size=SMALL)
    assert r["rec"]["vec"] == 18
    assert frame(r["rec"], err=False)["eip"] == 0x50000


def test_mc_through_not_present_gate_becomes_df():
    src = kernel(
        """
        mov eax, [0x50000]
    """,
        gates={18: None},
    )
    r = run(src, memory_size=SMALL)
    assert r["rec"]["vec"] == 8


# ---------------------------------------------------------------- a faulting instruction changes nothing


@pytest.mark.parametrize(
    ("code", "esp"),
    [
        ("pop eax", 0x40000),
        ("push eax", 0x40000 + 4),
        ("push 5", 0x40000 + 4),
        ("call 0x2000", 0x40000 + 4),
        ("ret", 0x40000),
    ],
)
def test_stack_instruction_faulting_on_missing_memory_changes_nothing(code, esp):
    # at ring 3 so the #MC handler runs on esp0; the frame's old esp shows the user esp unchanged
    src = at_ring(
        3,
        f"""
        mov eax, 0x1234
        mov esp, {esp:#x}
    here:
        {code}
    """,
    )
    r = run(src, memory_size=SMALL)
    rec = r["rec"]
    assert rec["vec"] == 18, r["console"]
    f = frame(rec, err=False)
    assert f["eip"] == r["sym"]["here"]
    assert f["esp"] == esp
    assert rec["eax"] == 0x1234


def test_faulting_add_to_memory_changes_no_flags():
    src = at_ring(
        3,
        """
        push 0x8C1
        popf
        mov eax, 1
    here:
        add [0x50000], eax
    """,
    )
    r = run(src, memory_size=SMALL)
    f = frame(r["rec"], err=False)
    assert r["rec"]["vec"] == 18
    assert f["eflags"] & 0x8C1 == 0x8C1


def test_fault_mid_straight_line_code_keeps_earlier_effects_only():
    src = kernel("""
        mov eax, 1
        mov ebx, 2
        add eax, ebx
        mov [rl_r_user], eax
        mov ecx, 0
        div ecx
        mov edx, 9
        mov [rl_r_user], 7
    """)
    rec = run(src)["rec"]
    assert rec["vec"] == 0
    assert (rec["eax"], rec["ebx"], rec["ecx"], rec["edx"]) == (3, 2, 0, 0)
    assert rec["user"] == 3


def test_page_fault_mid_straight_line_code_keeps_earlier_stores():
    src = kernel(
        """
        mov [rl_r_user], 0x11
        mov eax, [0x400000]        ; PDE 1 not present
        mov [rl_r_user], 0x22
    """,
        paging=True,
    )
    rec = run(src)["rec"]
    assert rec["vec"] == 14
    assert rec["user"] == 0x11
