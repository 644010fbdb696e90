"""Instruction classes at every ring (docs/machine.md "Instruction classes" and "Precise rules > cs and iret").

Programs use the conftest prelude: ``at_ring(n, code, iopl=..)`` builds an IDT and a TSS at ring 0
and irets to ``user:`` at ring n.  ``int 0x30`` (DPL 3) powers off with the caller's eax, leaving the
caller's other general registers in the JSON; a fault runs the recording handler (ring 0), which
prints the frame it found (``frame(rec, err=...)``) and powers off with exit code = vector.
"""

from __future__ import annotations

import pytest

from .conftest import IF, at_ring, frame, gate, kernel, rec_gate, run, to_ring

PRIVILEGED = [
    ("hlt", ""),
    ("lgdt [rl_idtr]", ""),
    ("lidt [rl_idtr]", ""),
    ("ltr eax", "mov eax, rl_tss"),
    ("lmsw eax", "mov eax, 0x10001"),
    ("invlpg [0x1000]", ""),
    ("mov cr0, eax", "mov eax, 0x00010001"),
    ("mov cr3, eax", "mov eax, 0x3000"),
    ("mov cr8, eax", "mov eax, 5"),
    ("mov eax, cr0", "mov eax, 0x1111"),
    ("mov eax, cr2", "mov eax, 0x1111"),
    ("mov eax, cr3", "mov eax, 0x1111"),
    ("mov eax, cr8", "mov eax, 0x1111"),
]


@pytest.mark.parametrize("ring", [1, 2, 3])
@pytest.mark.parametrize(("instr", "setup"), PRIVILEGED, ids=[p[0] for p in PRIVILEGED])
def test_privileged_instruction_at_cpl_above_0_raises_gp0_even_with_iopl_3(instr, setup, ring):
    src = at_ring(
        ring,
        f"""
        {setup}
        mov esi, 0x5A5A
    fault_here:
        {instr}
        mov esi, 0xBAD
        int 0x30
    """,
        iopl=3,
    )
    r = run(src)
    rec = r["rec"]
    assert rec["vec"] == 13, r["console"]
    f = frame(rec, err=True)
    assert f["err"] == 0
    assert f["eip"] == r["sym"]["fault_here"]  # a fault saves the faulting instruction's eip
    assert f["cs"] == ring
    assert f["eflags"] == 0x3000
    assert f["esp"] == r["sym"]["rl_ustack_top"]  # ring switch: old esp pushed
    assert rec["esp"] == r["sym"]["rl_kstack0_top"] - 20  # TSS esp0, 5 dwords pushed
    assert rec["esi"] == 0x5A5A
    if setup.startswith("mov eax, 0x1111"):
        assert rec["eax"] == 0x1111  # the faulting read wrote nothing


def test_privileged_instructions_run_at_ring0():
    r = run(
        kernel("""
        lgdt [gd]
        mov eax, rl_tss
        ltr eax
        mov eax, 0x10001
        lmsw eax
        invlpg [0x1000]
        mov eax, cr0
        mov ebx, 7
        mov cr8, ebx
        mov ecx, cr8
        mov edx, cr2
        mov esi, cr3
        out 0xF4, eax
    .align 4
    gd: .word 0x17
        .dword 0x5000
    """)
    )
    assert r["exit"]["reason"] == "poweroff", r["console"]
    reg = r["registers"]
    assert reg["eax"] == 1  # lmsw loads only the low 16 bits, where only PE (reads 1) exists
    assert reg["ecx"] == 7
    assert reg["edx"] == 0
    assert reg["esi"] == 0


IOPL_INSTRS = [
    ("cli", ""),
    ("sti", ""),
    ("in eax, 0x80", ""),
    ("out 0x80, eax", ""),
    ("in eax, edx", "mov edx, 0x80"),
    ("out edx, eax", "mov edx, 0x80"),
]


@pytest.mark.parametrize("iopl", [0, 1, 2, 3])
@pytest.mark.parametrize("ring", [1, 2, 3])
@pytest.mark.parametrize(("instr", "setup"), IOPL_INSTRS, ids=[p[0] for p in IOPL_INSTRS])
def test_iopl_sensitive_instruction_faults_iff_cpl_above_iopl(instr, setup, ring, iopl):
    src = at_ring(
        ring,
        f"""
        {setup}
        mov ebx, 0
    here:
        {instr}
        mov ebx, 0x600D
        int 0x30
    """,
        iopl=iopl,
    )
    r = run(src)
    if ring > iopl:
        assert r["rec"]["vec"] == 13, r["console"]
        f = frame(r["rec"], err=True)
        assert (f["err"], f["eip"], f["cs"]) == (0, r["sym"]["here"], ring)
    else:
        assert r["rec"] == {}, r["console"]
        assert r["exit"]["reason"] == "poweroff"
        assert r["registers"]["ebx"] == 0x600D


def test_cli_sti_in_out_work_at_ring0_with_iopl_0():
    r = run(
        kernel("""
        sti
        pushf
        pop ebx
        cli
        pushf
        pop ecx
        in eax, 0x80
        out 0x80, eax
        out 0xF4, eax
    """)
    )
    assert r["exit"]["reason"] == "poweroff"
    assert r["registers"]["ebx"] & IF
    assert not r["registers"]["ecx"] & IF


# ---------------------------------------------------------------- pushf / popf


def test_popf_at_ring3_leaves_if_unchanged_silently():
    # CPL 3 > IOPL 0: popf of 0 must not clear IF, and must not trap.
    src = at_ring(
        3,
        """
        push 0x8C1             ; CF ZF SF OF, IF clear
        popf
        pushf
        pop ebx
        int 0x30
    """,
        if_=True,
    )
    r = run(src)
    assert r["rec"] == {}
    assert r["registers"]["ebx"] == 0x8C1 | IF


def test_popf_at_ring3_cannot_set_if():
    src = at_ring(
        3,
        """
        push 0x200
        popf
        pushf
        pop ebx
        int 0x30
    """,
    )
    r = run(src)
    assert r["rec"] == {}
    assert r["registers"]["ebx"] == 0


@pytest.mark.parametrize("ring", [1, 2, 3])
def test_popf_at_cpl_not_above_iopl_changes_if_but_never_iopl(ring):
    # IOPL = ring: popf may change IF; at CPL > 0 the IOPL bits are kept whatever is popped.
    src = at_ring(
        ring,
        """
        push 0x0201            ; IF + CF, IOPL 0
        popf
        pushf
        pop ebx
        push 0x3000            ; IOPL 3, IF 0
        popf
        pushf
        pop ecx
        int 0x30
    """,
        iopl=ring,
    )
    r = run(src)
    assert r["rec"] == {}
    assert r["registers"]["ebx"] == 0x0201 | ring << 12
    assert r["registers"]["ecx"] == ring << 12


@pytest.mark.parametrize("ring", [1, 2])
def test_popf_at_ring_above_iopl_keeps_if_and_iopl(ring):
    src = at_ring(
        ring,
        """
        push 0x3001            ; try IOPL 3 and IF 0, set CF
        popf
        pushf
        pop ebx
        int 0x30
    """,
        iopl=ring - 1,
        if_=True,
    )
    r = run(src)
    assert r["registers"]["ebx"] == 0x0001 | IF | (ring - 1) << 12


def test_popf_at_ring0_sets_iopl_and_if_and_other_bits_read_zero():
    r = run(
        kernel("""
        push 0xFFFFFFFF
        popf
        pushf
        pop ebx
        push 0x1000
        popf
        pushf
        pop ecx
        out 0xF4, eax
    """)
    )
    # CF 0x1 ZF 0x40 SF 0x80 IF 0x200 OF 0x800 IOPL 0x3000; every other bit reads 0
    assert r["registers"]["ebx"] == 0x3AC1
    assert r["registers"]["ecx"] == 0x1000


def test_pushf_at_ring3_shows_real_if_and_iopl():
    src = at_ring(
        3,
        """
        pushf
        pop ebx
        int 0x30
    """,
        iopl=2,
        if_=True,
    )
    r = run(src)
    assert r["registers"]["ebx"] == IF | 0x2000


# ---------------------------------------------------------------- sgdt sidt str smsw mov r,cs


@pytest.mark.parametrize("ring", [0, 1, 2, 3])
def test_sgdt_sidt_str_smsw_mov_cs_show_real_values_without_trapping(ring):
    src = at_ring(
        ring,
        """
        mov [buf + 4], 0xFFFFFFFF
        mov [buf2 + 4], 0xFFFFFFFF
        sgdt [buf]
        sidt [buf2]
        str ebx
        smsw ecx
        mov edx, cs
        mov eax, [buf]          ; limit | base low 16 << 16
        mov esi, [buf + 2]      ; base
        movzx edi, byte [buf + 6]   ; untouched: the descriptor is 6 bytes
        mov ebp, [buf2 + 2]
        int 0x31                ; record: eax..ebp land in rec
    .align 4
    buf:  .space 8
    buf2: .space 8
    gd:   .word 0x1234
          .dword 0x00ABCDEF
    """,
        pre="    lgdt [gd]\n",
        iopl=3,
    )
    r = run(src)
    rec = r["rec"]
    assert rec["vec"] == 0x31, r["console"]
    assert rec["eax"] == 0xCDEF1234
    assert rec["esi"] == 0x00ABCDEF
    assert rec["edi"] == 0xFF
    assert rec["ebp"] == r["sym"]["rl_idt"]
    assert rec["ebx"] == r["sym"]["rl_tss"]
    assert rec["ecx"] == 1  # low 16 bits of cr0: PE only (paging off, WP is bit 16)
    assert rec["edx"] == ring


def test_sidt_limit_is_the_real_limit():
    r = run(
        kernel("""
        sidt [buf]
        movzx eax, byte [buf]
        movzx ebx, byte [buf + 1]
        out 0xF4, eax
    buf: .space 8
    """)
    )
    assert r["registers"]["eax"] | r["registers"]["ebx"] << 8 == 64 * 8 - 1


def test_smsw_shows_pe_and_never_pg_or_wp():
    r = run(
        kernel(
            """
        smsw eax
        mov ebx, cr0
        out 0xF4, eax
    """,
            paging=True,
            wp=True,
        )
    )
    assert r["registers"]["eax"] == 1
    assert r["registers"]["ebx"] == 0x80010001


# ---------------------------------------------------------------- int n


@pytest.mark.parametrize("ring", [0, 1, 2, 3])
@pytest.mark.parametrize("dpl", [0, 1, 2, 3])
def test_int_n_checks_gate_dpl_against_cpl(ring, dpl):
    src = at_ring(
        ring,
        """
    here:
        int 0x22
    after:
        int 0x30
    """,
        iopl=3,
        gates={0x22: rec_gate(0x22, dpl=dpl)},
    )
    r = run(src)
    rec = r["rec"]
    if dpl < ring:
        assert rec["vec"] == 13, r["console"]
        f = frame(rec, err=True)
        assert f["err"] == 0x22 * 8 + 2
        assert f["eip"] == r["sym"]["here"]  # the int did not retire
    else:
        assert rec["vec"] == 0x22, r["console"]
        f = frame(rec, err=False)
        assert f["eip"] == r["sym"]["after"]  # int n retires: the saved eip is the next one
        assert f["cs"] == ring


@pytest.mark.parametrize("ring", [1, 2, 3])
def test_int_n_to_inner_ring_switches_to_tss_stack_and_pushes_old_esp(ring):
    src = at_ring(
        ring,
        """
        mov esp, 0x3FF00
        int 0x31
    after:
    """,
        iopl=3,
        if_=True,
    )
    r = run(src)
    rec = r["rec"]
    f = frame(rec, err=False)
    assert f["eip"] == r["sym"]["after"]
    assert f["cs"] == ring
    assert f["eflags"] == IF | 0x3000
    assert f["esp"] == 0x3FF00
    assert rec["esp"] == r["sym"]["rl_kstack0_top"] - 16
    assert rec["hcs"] == 0
    assert not rec["hfl"] & IF  # interrupt gate cleared IF
    assert rec["hfl"] & 0x3000 == 0x3000  # IOPL kept


def test_int_n_gate_ring_1_from_ring_3_uses_esp1():
    src = at_ring(
        3,
        """
        int 0x22
    after:
    """,
        iopl=3,
        gates={0x22: rec_gate(0x22, dpl=3, ring=1)},
    )
    r = run(src)
    rec = r["rec"]
    assert rec["hcs"] == 1
    assert rec["esp"] == r["sym"]["rl_kstack1_top"] - 16
    assert frame(rec, err=False)["esp"] == r["sym"]["rl_ustack_top"]


def test_int_n_gate_ring_2_from_ring_3_uses_esp2():
    src = at_ring(
        3,
        """
        int 0x22
    """,
        iopl=3,
        gates={0x22: rec_gate(0x22, dpl=3, ring=2)},
    )
    r = run(src)
    assert r["rec"]["hcs"] == 2
    assert r["rec"]["esp"] == r["sym"]["rl_kstack2_top"] - 16


@pytest.mark.parametrize("ring", [0, 1, 2, 3])
def test_int_n_same_ring_pushes_three_dwords_on_current_stack(ring):
    src = at_ring(
        ring,
        """
        mov esp, 0x3FF00
        int 0x22
    after:
    """,
        iopl=3,
        gates={0x22: rec_gate(0x22, dpl=3, ring=ring)},
    )
    r = run(src)
    rec = r["rec"]
    assert rec["hcs"] == ring
    assert rec["esp"] == 0x3FF00 - 12
    f = frame(rec, err=False)
    assert (f["eip"], f["cs"]) == (r["sym"]["after"], ring)


@pytest.mark.parametrize(("ring", "gate_ring"), [(0, 1), (0, 3), (1, 2), (2, 3)])
def test_int_n_gate_ring_above_cpl_raises_gp_vector_error_code(ring, gate_ring):
    src = at_ring(
        ring,
        """
    here:
        int 0x22
        int 0x30
    """,
        iopl=3,
        gates={0x22: rec_gate(0x22, dpl=3, ring=gate_ring)},
    )
    r = run(src)
    rec = r["rec"]
    assert rec["vec"] == 13, r["console"]
    f = frame(rec, err=True)
    assert f["err"] == 0x22 * 8 + 2
    assert f["eip"] == r["sym"]["here"]
    assert f["cs"] == ring


def test_int_n_to_not_present_gate_raises_gp_vector_error_code():
    r = run(
        kernel(
            """
    here:
        int 0x23
    """,
            gates={0x23: gate("rl_h_13", present=False)},
        )
    )
    f = frame(r["rec"], err=True)
    assert r["rec"]["vec"] == 13
    assert f["err"] == 0x23 * 8 + 2
    assert f["eip"] == r["sym"]["here"]


def test_int_n_beyond_idt_limit_raises_gp_vector_error_code():
    r = run(
        kernel(
            """
    here:
        int 0x23
    """,
            idt_limit=0x23 * 8 - 1,  # vectors 0 .. 0x22 only
        )
    )
    f = frame(r["rec"], err=True)
    assert r["rec"]["vec"] == 13
    assert f["err"] == 0x23 * 8 + 2
    assert f["eip"] == r["sym"]["here"]


def test_int_n_last_vector_within_idt_limit_is_delivered():
    r = run(
        kernel(
            """
        int 0x23
    """,
            idt_limit=0x23 * 8 + 7,
            gates={0x23: rec_gate(0x23)},
        )
    )
    assert r["rec"]["vec"] == 0x23


@pytest.mark.parametrize("vector", [8, 13, 14])
def test_int_n_of_exception_vector_pushes_no_error_code(vector):
    r = run(
        kernel(f"""
        mov esp, 0x3FF00
        int {vector}
    after:
    """)
    )
    rec = r["rec"]
    assert rec["vec"] == vector
    assert rec["esp"] == 0x3FF00 - 12
    f = frame(rec, err=False)
    assert (f["eip"], f["cs"], f["eflags"]) == (r["sym"]["after"], 0, 0)


def test_trap_gate_keeps_if_interrupt_gate_clears_it():
    src = kernel(
        """
        sti
        int 0x22
    """,
        gates={0x22: rec_gate(0x22, trap=True)},
    )
    r = run(src)
    assert r["rec"]["hfl"] & IF
    assert frame(r["rec"], err=False)["eflags"] & IF
    src = kernel(
        """
        sti
        int 0x22
    """,
        gates={0x22: rec_gate(0x22, trap=False)},
    )
    r = run(src)
    assert not r["rec"]["hfl"] & IF
    assert frame(r["rec"], err=False)["eflags"] & IF


# ---------------------------------------------------------------- iret


def test_iret_cs_is_popped_value_and_3():
    # cs 0x1B is a typical x86 user selector: only its low 2 bits survive, CPL 3.
    src = kernel("""
        push rl_ustack_top
        push 0
        push 0x1B
        push user
        iret
    user:
        mov ebx, cs
        int 0x30
    """)
    r = run(src)
    assert r["registers"]["ebx"] == 3


@pytest.mark.parametrize(("ring", "target"), [(3, 0), (3, 2), (2, 1), (1, 0)])
def test_iret_to_inner_ring_raises_gp0_and_changes_nothing(ring, target):
    src = at_ring(
        ring,
        f"""
        push 0x11111111         ; would-be esp
        push 0
        push {target}
        push somewhere
        mov ebx, esp
    here:
        iret
    somewhere:
        int 0x30
    """,
        iopl=3,
    )
    r = run(src)
    rec = r["rec"]
    assert rec["vec"] == 13, r["console"]
    f = frame(rec, err=True)
    assert (f["err"], f["eip"], f["cs"]) == (0, r["sym"]["here"], ring)
    assert f["esp"] == rec["ebx"]  # nothing was popped


def test_iret_to_same_ring_pops_three_dwords():
    src = at_ring(
        3,
        """
        mov esp, 0x3FF00
        push 0x0001             ; eflags: CF
        push 3
        push next
        iret
    next:
        mov ebx, esp
        pushf
        pop ecx
        int 0x30
    """,
    )
    r = run(src)
    assert r["registers"]["ebx"] == 0x3FF00
    assert r["registers"]["ecx"] == 1


def test_iret_at_ring3_above_iopl_restores_neither_if_nor_iopl():
    src = at_ring(
        3,
        """
        push 0x3201             ; IOPL 3, IF, CF
        push 3
        push next
        iret
    next:
        pushf
        pop ebx
        int 0x30
    """,
    )
    r = run(src)
    assert r["registers"]["ebx"] == 0x0001


def test_iret_at_ring3_with_iopl3_restores_if_but_not_iopl():
    src = at_ring(
        3,
        """
        push 0x0201             ; IOPL 0, IF, CF
        push 3
        push next
        iret
    next:
        pushf
        pop ebx
        int 0x30
    """,
        iopl=3,
    )
    r = run(src)
    assert r["registers"]["ebx"] == 0x3201


def test_iret_from_ring1_above_iopl_to_ring3_keeps_if_and_iopl():
    src = at_ring(
        1,
        """
        push rl_ustack_top - 0x100
        push 0x3201             ; tries IOPL 3 and IF
        push 3
        push user3
        iret
    user3:
        pushf
        pop ebx
        mov ecx, cs
        mov edx, esp
        int 0x30
    """,
    )
    r = run(src)
    assert r["registers"]["ebx"] == 0x0001
    assert r["registers"]["ecx"] == 3
    assert r["registers"]["edx"] == r["sym"]["rl_ustack_top"] - 0x100


def test_iret_from_ring1_within_iopl_to_ring3_restores_if_not_iopl():
    src = at_ring(
        1,
        """
        push rl_ustack_top - 0x100
        push 0x0201
        push 3
        push user3
        iret
    user3:
        pushf
        pop ebx
        int 0x30
    """,
        iopl=1,
    )
    r = run(src)
    assert r["registers"]["ebx"] == 0x1201


def test_iret_at_ring0_restores_if_and_iopl():
    src = kernel("""
        push 0x3200
        push 0
        push next
        iret
    next:
        pushf
        pop ebx
        cli
        out 0xF4, eax
    """)
    r = run(src)
    assert r["registers"]["ebx"] == 0x3200


def test_iret_from_ring0_to_ring3_loads_esp_from_frame():
    src = kernel(
        to_ring(3, "user", esp="0x3EF00")
        + """
    user:
        mov ebx, esp
        mov ecx, cs
        int 0x30
    """
    )
    r = run(src)
    assert r["registers"]["ebx"] == 0x3EF00
    assert r["registers"]["ecx"] == 3


# ---------------------------------------------------------------- vmcall / #UD


@pytest.mark.parametrize("ring", [0, 3])
def test_vmcall_raises_ud_natively(ring):
    src = at_ring(
        ring,
        """
    here:
        vmcall
        int 0x30
    """,
        iopl=3,
    )
    r = run(src)
    assert r["rec"]["vec"] == 6, r["console"]
    f = frame(r["rec"], err=False)
    assert (f["eip"], f["cs"]) == (r["sym"]["here"], ring)


def test_undefined_opcode_raises_ud_without_error_code():
    src = kernel("""
        mov esp, 0x3FF00
    here:
        .byte 0
    """)
    r = run(src)
    assert r["rec"]["vec"] == 6
    assert r["rec"]["esp"] == 0x3FF00 - 12
    assert frame(r["rec"], err=False)["eip"] == r["sym"]["here"]


def test_exceptions_ignore_gate_dpl():
    # #UD at ring 3 through a DPL-0 gate: only int n checks DPL.
    src = at_ring(
        3,
        """
    here:
        vmcall
    """,
    )
    r = run(src)
    assert r["rec"]["vec"] == 6
    assert frame(r["rec"], err=False)["cs"] == 3


def test_lidt_sidt_round_trip_full_16_bit_limit_and_32_bit_base():
    r = run(
        kernel("""
        lidt [d]
        sidt [buf]
        lidt [rl_idtr]
        mov eax, [buf]
        mov ebx, [buf + 2]
        out 0xF4, eax
    .align 4
    d:   .word 0xFFFF
         .dword 0xFFFFFFFF
    buf: .space 8
    """)
    )
    assert r["registers"]["eax"] == 0xFFFFFFFF
    assert r["registers"]["ebx"] == 0xFFFFFFFF


def test_iret_at_ring0_with_all_ones_eflags_keeps_only_existing_bits():
    src = kernel("""
        push 0xFFFFFFFF
        push 0
        push next
        iret
    next:
        pushf
        pop ebx
        out 0xF4, eax
    """)
    assert run(src)["registers"]["ebx"] == 0x3AC1


def test_fault_at_ring2_to_ring1_handler_uses_esp1():
    src = at_ring(
        2,
        """
    here:
        vmcall
    """,
        iopl=3,
        gates={6: rec_gate(6, ring=1)},
    )
    r = run(src)
    rec = r["rec"]
    assert rec["hcs"] == 1
    assert rec["esp"] == r["sym"]["rl_kstack1_top"] - 16
    f = frame(rec, err=False)
    assert (f["eip"], f["cs"], f["esp"]) == (r["sym"]["here"], 2, r["sym"]["rl_ustack_top"])


def test_sti_at_ring3_with_iopl3_lets_the_timer_in():
    src = at_ring(
        3,
        """
        sti
    spin3:
        jmp spin3
    """,
        pre="    mov ebx, 20\n    out 0x40, ebx\n",
        iopl=3,
    )
    r = run(src)
    assert r["rec"]["vec"] == 32
    f = frame(r["rec"], err=False)
    assert (f["eip"], f["cs"]) == (r["sym"]["spin3"], 3)
    assert f["eflags"] == IF | 0x3000


def test_faulting_in_at_ring3_leaves_destination_register():
    src = at_ring(
        3,
        """
        mov ebx, 0x1234
        in ebx, 0x80
    """,
    )
    r = run(src)
    assert r["rec"]["vec"] == 13
    assert r["rec"]["ebx"] == 0x1234


def test_idt_gates_are_read_at_delivery_time():
    # lidt does not cache gates: rewriting gate 0x22's handler after lidt takes effect
    src = kernel(
        """
        int 0x22
        mov [rl_idt + 0x22 * 8], second
        int 0x22
        mov ebx, 3               ; reached only if the old gate (first) ran again
        out 0xF4, eax
    second:
        mov ebx, 2
        out 0xF4, eax
    first:
        mov ebx, 1
        iret
    """,
        gates={0x22: gate("first")},
    )
    assert run(src)["registers"]["ebx"] == 2
