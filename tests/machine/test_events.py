"""Privilege classes at rings 0-3, interrupt and exception delivery, iret, #DF and triple fault.

Programs run on the ``kernel`` prelude (conftest): every default handler is ``fault_<n>: hlt``
at ring 0 with IF = 0, so the machine stops in the handler and the test reads the frame.
"""

from __future__ import annotations

import pytest

from ringlab.machine import ExitReason
from tests.machine.conftest import (
    IF,
    boot,
    gate,
    kernel,
    reg,
    run,
    run_to_halt,
    stack,
    stopped_at_vector,
    sym,
)

IOPL3 = 3 << 12


def to_ring(ring: int, flags: int = 0) -> str:
    """iret from ring 0 to ``ring`` at label ``outer`` on that ring's stack."""
    esp = {1: "kstack1_top", 2: "kstack2_top", 3: "ustack_top"}[ring]
    return f"""        push {esp}
        push {flags}
        push {ring}
        push outer
        iret
outer:"""


PRIVILEGED = [
    "hlt",
    "lgdt [data]",
    "lidt [data]",
    "ltr eax",
    "lmsw eax",
    "invlpg [0]",
    "mov cr3, eax",
    "mov eax, cr0",
]


@pytest.mark.parametrize("ring", [1, 2, 3])
@pytest.mark.parametrize("insn", PRIVILEGED)
def test_privileged_instructions_raise_gp0_above_ring0(fast: bool, ring: int, insn: str) -> None:
    src = kernel(f"{to_ring(ring)}\nfaulting: {insn}")
    cpu = run_to_halt(src, fast)
    assert stopped_at_vector(cpu, src) == 13
    old_esp = sym(src, {1: "kstack1_top", 2: "kstack2_top", 3: "ustack_top"}[ring])
    # error code, eip of the faulting instruction, cs, eflags, the outer esp (ring switch)
    assert stack(cpu, 5) == [0, sym(src, "faulting"), ring, 0, old_esp]
    assert reg(cpu, "esp") == sym(src, "kstack0_top") - 20
    assert cpu.state.cs == 0


@pytest.mark.parametrize("insn", ["cli", "sti", "in eax, 0x80", "out 0x80, eax"])
def test_iopl_sensitive_instructions_raise_gp_when_cpl_above_iopl(fast: bool, insn: str) -> None:
    src = kernel(f"{to_ring(3, flags=2 << 12)}\n        {insn}")
    assert stopped_at_vector(run_to_halt(src, fast), src) == 13


def test_iopl_sensitive_instructions_run_when_cpl_at_most_iopl(fast: bool) -> None:
    # ring 3 with IOPL 3: cli, sti, in and out all work; then int 33 (a DPL 3 gate) stops
    body = f"{to_ring(3, flags=IOPL3)}\n        cli\n        sti\n        in eax, 0x80\n        out 0x80, eax\n        cli\n        int 33"
    src = kernel(body, gates={33: gate("fault_33", dpl=3)})
    cpu = run_to_halt(src, fast)
    assert stopped_at_vector(cpu, src) == 33
    assert reg(cpu, "eax") == 0  # POST port reads 0


def test_popf_at_ring1_leaves_if_unchanged(fast: bool) -> None:
    # ring 1, IOPL 0, IF = 1: push 0 ; popf  -> IF stays 1, silently; then int 33
    body = f"{to_ring(1, flags=IF)}\n        push 0\n        popf\n        int 33"
    src = kernel(body, gates={33: gate("fault_33", dpl=3)})
    cpu = run_to_halt(src, fast)
    assert stopped_at_vector(cpu, src) == 33
    assert stack(cpu, 3)[2] == IF  # the eflags the int pushed


def test_popf_at_ring1_with_iopl1_changes_if_but_never_iopl(fast: bool) -> None:
    body = f"{to_ring(1, flags=IF | 1 << 12)}\n        push {3 << 12}\n        popf\n        int 33"
    src = kernel(body, gates={33: gate("fault_33", dpl=3)})
    cpu = run_to_halt(src, fast)
    assert stack(cpu, 3)[2] == 1 << 12  # IF cleared, IOPL kept at 1


def test_popf_at_ring0_sets_iopl_and_if(fast: bool) -> None:
    src = kernel(
        "        push 0xFFFFFFFF\n        popf\n        pushf\n        pop eax\n        cli\n        hlt"
    )
    cpu = run_to_halt(src, fast)
    assert reg(cpu, "eax") == IOPL3 | IF | 0x8C1  # only CF ZF SF IF OF IOPL exist


def test_pushf_shows_the_real_if_at_ring3(fast: bool) -> None:
    body = f"{to_ring(3, flags=IF)}\n        pushf\n        pop ebx\n        int 33"
    src = kernel(body, gates={33: gate("fault_33", dpl=3)})
    assert reg(run_to_halt(src, fast), "ebx") == IF


def test_sensitive_reads_show_the_real_state_at_ring3(fast: bool) -> None:
    # sgdt, sidt, str, smsw and mov r, cs at ring 3 all see the real (ring 0) values
    body = f"""        lgdt [gdt_desc]
{to_ring(3)}
        sgdt [ustack_top - 16]
        sidt [ustack_top - 32]
        str ebx
        smsw ecx
        mov edx, cs
        int 33
gdt_desc: .word 0x17
        .dword 0x12345678"""
    src = kernel(body, gates={33: gate("fault_33", dpl=3)})
    cpu = run_to_halt(src, fast)
    top = sym(src, "ustack_top")
    assert cpu.memory.read(top - 16, 6) == bytes.fromhex("1700") + (0x12345678).to_bytes(4, "little")
    assert cpu.memory.read(top - 32, 6) == (39 * 8 + 7).to_bytes(2, "little") + sym(src, "idt").to_bytes(
        4, "little"
    )
    assert reg(cpu, "ebx") == sym(src, "tss")
    assert reg(cpu, "ecx") == 1  # PE
    assert reg(cpu, "edx") == 3


def test_int_from_ring3_switches_to_esp0_and_pushes_the_old_esp(fast: bool) -> None:
    src = kernel(f"{to_ring(3, flags=IF)}\nfaulting: int 33\nafter:", gates={33: gate("fault_33", dpl=3)})
    cpu = run_to_halt(src, fast)
    assert stack(cpu, 4) == [sym(src, "after"), 3, IF, sym(src, "ustack_top")]
    assert cpu.state.eflags & IF == 0  # an interrupt gate clears IF


def test_trap_gate_keeps_if(fast: bool) -> None:
    src = kernel(
        "        sti\n        int 33\n",
        gates={33: gate("handler", trap=True)},
        tail="handler: cli\n        hlt",
    )
    cpu = run_to_halt(src, fast)
    assert stack(cpu, 3)[2] == IF


def test_int_checks_the_gate_dpl(fast: bool) -> None:
    src = kernel(f"{to_ring(3)}\nfaulting: int 33")  # gate 33 has DPL 0
    cpu = run_to_halt(src, fast)
    assert stopped_at_vector(cpu, src) == 13
    assert stack(cpu, 2) == [33 * 8 + 2, sym(src, "faulting")]


def test_exceptions_ignore_the_gate_dpl(fast: bool) -> None:
    src = kernel(f"{to_ring(3)}\n        .byte 0")  # #UD through a DPL 0 gate
    assert stopped_at_vector(run_to_halt(src, fast), src) == 6


@pytest.mark.parametrize(
    ("gates", "vector"),
    [({33: gate("fault_33", present=False)}, 33), ({}, 45), ({33: gate("fault_33", ring=1)}, 33)],
    ids=["not-present", "beyond-limit", "ring-above-cpl"],
)
def test_bad_gate_raises_gp_vector_times_8_plus_2_delivered_as_itself(
    fast: bool, gates: dict[int, str], vector: int
) -> None:
    src = kernel(f"faulting: int {vector}", gates=gates)
    cpu = run_to_halt(src, fast)
    assert stopped_at_vector(cpu, src) == 13  # not #DF: a fault while delivering int n is itself
    assert stack(cpu, 2) == [vector * 8 + 2, sym(src, "faulting")]
    assert cpu.stats.exceptions == {vector: 1, 13: 1}


def test_int_13_pushes_no_error_code(fast: bool) -> None:
    src = kernel("        int 13\nafter:")
    cpu = run_to_halt(src, fast)
    assert stack(cpu, 1) == [sym(src, "after")]


def test_iret_to_an_outer_ring_pops_esp(fast: bool) -> None:
    src = kernel(
        f"{to_ring(2)}\n        mov eax, esp\n        mov ebx, cs\n        cli\n        int 33",
        gates={33: gate("fault_33", dpl=3)},
    )
    cpu = run_to_halt(src, fast)
    assert reg(cpu, "eax") == sym(src, "kstack2_top")
    assert reg(cpu, "ebx") == 2


def test_iret_to_an_inner_ring_raises_gp0(fast: bool) -> None:
    src = kernel(
        f"{to_ring(3)}\n        push 0\n        push 0\n        push 0\n        push 0\nfaulting: iret"
    )
    cpu = run_to_halt(src, fast)
    assert stopped_at_vector(cpu, src) == 13
    assert stack(cpu, 2) == [0, sym(src, "faulting")]


def test_iret_sets_cs_to_the_popped_value_and_3(fast: bool) -> None:
    src = kernel(
        "        push ustack_top\n        push 0\n        push 0xFF\n        push outer\n        iret\nouter:  mov ebx, cs\n        .byte 0"
    )
    cpu = run_to_halt(src, fast)
    assert reg(cpu, "ebx") == 3


def test_iret_at_ring1_restores_if_only_when_cpl_at_most_iopl_and_never_iopl(fast: bool) -> None:
    # at ring 1 with IOPL 0, IF 1: iret to ring 1 with eflags = IOPL 3, IF 0 -> both kept
    body = f"""{to_ring(1, flags=IF)}
        push kstack1_top - 64
        push {IOPL3}
        push 1
        push back
        iret
back:   pushf
        pop ebx
        int 33"""
    src = kernel(body, gates={33: gate("fault_33", dpl=3)})
    cpu = run_to_halt(src, fast)
    assert reg(cpu, "ebx") == IF


def test_page_fault_delivery_pushes_error_code_and_sets_cr2(fast: bool) -> None:
    # page 0x300000 made read-only and supervisor: a ring-3 write faults with P|W|U = 7
    body = f"""        mov [{0x81000 + 0x300 * 4}], 0x300001
{to_ring(3)}
faulting: mov [0x300010], eax"""
    src = kernel(body, paging=True)
    cpu = run_to_halt(src, fast)
    assert stopped_at_vector(cpu, src) == 14
    assert stack(cpu, 2) == [7, sym(src, "faulting")]
    assert cpu.state.cr2 == 0x300010


def test_not_present_page_fault_error_code_and_page_crossing_cr2(fast: bool) -> None:
    # page 0x301000 not present; a dword read at 0x300FFE crosses into it: cr2 = 0x301000
    body = f"""        mov [{0x81000 + 0x301 * 4}], 0
faulting: mov eax, [0x300FFE]"""
    src = kernel(body, paging=True)
    cpu = run_to_halt(src, fast)
    assert stack(cpu, 2) == [0, sym(src, "faulting")]
    assert cpu.state.cr2 == 0x301000


def test_access_beyond_ram_raises_mc_without_error_code(fast: bool) -> None:
    src = kernel("faulting: mov eax, [0x500000]")
    cpu = run_to_halt(src, fast)
    assert stopped_at_vector(cpu, src) == 18
    assert stack(cpu, 1) == [sym(src, "faulting")]


def test_page_walk_into_nonexistent_memory_raises_mc(fast: bool) -> None:
    body = f"""        mov [{0x80000 + 4}], 0x10000007     ; PDE 1 -> a table beyond RAM
faulting: mov eax, [0x400000]"""
    src = kernel(body, paging=True)
    cpu = run_to_halt(src, fast)
    assert stopped_at_vector(cpu, src) == 18


def test_fault_while_delivering_an_exception_is_a_double_fault(fast: bool) -> None:
    src = kernel("faulting: .byte 0", gates={6: gate("fault_6", present=False)})
    cpu = run_to_halt(src, fast)
    assert stopped_at_vector(cpu, src) == 8
    assert stack(cpu, 2) == [0, sym(src, "faulting")]
    assert cpu.stats.exceptions == {6: 1, 8: 1}


def test_fault_while_delivering_a_double_fault_shuts_down(fast: bool) -> None:
    src = kernel(
        "faulting: .byte 0", gates={6: gate("fault_6", present=False), 8: gate("fault_8", present=False)}
    )
    cpu = boot(src, fast)
    exit = run(cpu)
    assert exit.reason is ExitReason.SHUTDOWN
    assert "triple fault" in exit.detail
    assert cpu.state.eip == sym(src, "faulting")


def test_a_push_that_faults_during_entry_changes_nothing(fast: bool) -> None:
    # esp0 points into a not-present page: every delivery from ring 3 faults -> triple fault,
    # and CPL, esp and IF are those of the faulting ring-3 instruction
    body = f"""        mov [{0x81000 + 0x310 * 4}], 0
        mov [tss + 4], 0x310800
{to_ring(3, flags=IF)}
faulting: .byte 0"""
    src = kernel(body, paging=True)
    cpu = boot(src, fast)
    assert run(cpu).reason is ExitReason.SHUTDOWN
    assert (cpu.state.cs, reg(cpu, "esp"), cpu.state.eflags) == (3, sym(src, "ustack_top"), IF)
    assert cpu.state.eip == sym(src, "faulting")
