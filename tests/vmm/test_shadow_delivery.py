"""Event delivery under shadow paging sees the guest's tables as they are at each delivery.

``ShadowPageTables.prepare_delivery`` shadows the pages a delivery touches (gate, TSS slot,
stack) and remembers a delivery that found them all in place, so the next one from the same
registers only checks the guest words it read.  These programs change one of those words from
ring 3 (no exit, no ``invlpg``: pages are P|W|U) between two deliveries of the same vector; the
second delivery must follow the change, as natively, or its pushes hit a page the shadow does
not map and the guest takes a #PF it would not take natively.

Linear 0x400000-0x7FFFFF (page-directory entry 1) is absent until the program maps it, so a
stack there is shadowed only if the delivery itself fills it (the identity 4 MiB below is
shadowed all at once by the first hidden fault).
"""

from __future__ import annotations

from typing import Any

import pytest

from ringlab.asm import assemble
from ringlab.vmm.bt import BinaryTranslation
from ringlab.vmm.events import reflect_software_interrupt
from ringlab.vmm.vm import VM
from tests.isa.conftest import gate, kernel, to_ring
from tests.vmm.conftest import native, vm

TECHNIQUES = ["bt", "hw"]  # (trap-emulate: iret to ring 3 escapes it, see docs/techniques.md)

# Page table 1 maps linear 0x400000 + n * 4096 to physical 0x300000 + n * 4096 (P|W|U).
PT1 = "\n".join(f"    .dword {0x300000 + (i << 12) | 7:#x}" for i in range(1024))
DATA = f"""
.align 4096
seen_esp: .dword 0                  ; on a page of its own: no code on it, so no write-protection
seen_count: .dword 0
.align 4096
pt1:
{PT1}
"""
# int 0x32 (DPL 3): counts itself and keeps the esp it arrived with
HANDLER = gate("h32", dpl=3)
HANDLER_RING3 = gate("h32", dpl=3, ring=3)
H32 = """
h32:
    mov [seen_esp], esp
    inc [seen_count]
    iret
"""


def _program(change: str, *, ring3_gate: bool = False) -> str:
    body = f"""
{to_ring(3, "user", iopl=3)}
{H32}
user:
    mov [rl_pd + 4], pt1 + 7    ; page-directory entry 1: was not present, so never cached
    int 0x32                    ; first delivery
    int 0x32                    ; the same again: everything is in place
{change}
    int 0x32                    ; must see the change
    mov eax, [seen_esp]
    out 0xF4, eax               ; power off with the esp the last delivery used
"""
    return kernel(body, paging=True, gates={0x32: HANDLER_RING3 if ring3_gate else HANDLER}, data=DATA)


def _same_as_native(source: str, technique: str) -> dict[str, Any]:
    image = assemble(source)
    expected, result = native(image), vm(image, technique)
    assert expected["exit"]["reason"] == "poweroff", expected["console"]
    for key in ("console", "exit", "registers"):
        assert result[key] == expected[key] or (technique == "hw" and key == "registers"), key
    assert result["stats"]["guest"]["virtual_time"] == expected["stats"]["guest"]["virtual_time"]
    return expected


@pytest.mark.parametrize("technique", TECHNIQUES)
def test_a_changed_tss_stack_slot_is_seen_by_the_next_delivery(technique: str) -> None:
    source = _program("    mov [rl_tss + 4], 0x402000   ; esp0 -> a page under entry 1")
    expected = _same_as_native(source, technique)
    assert expected["registers"]["eax"] == 0x402000 - 16  # old esp, eflags, cs, eip


@pytest.mark.parametrize("technique", TECHNIQUES)
def test_a_changed_gate_ring_is_seen_by_the_next_delivery(technique: str) -> None:
    """The gate becomes a ring-3 one (no stack switch): the frame goes on the user's stack,
    which the program moves to a page under entry 1 first."""
    change = """
    mov [rl_idt + 0x32 * 8 + 4], 0xE303   ; present, DPL 3, interrupt gate, ring 3
    mov esp, 0x405000
"""
    expected = _same_as_native(_program(change), technique)
    assert expected["registers"]["eax"] == 0x405000 - 12  # eflags, cs, eip


@pytest.mark.parametrize("technique", TECHNIQUES)
def test_a_changed_page_directory_entry_is_seen_by_the_next_delivery(technique: str) -> None:
    """esp0 moves under entry 2, which the program maps (to the same page table) only now."""
    change = """
    mov [rl_pd + 8], pt1 + 7
    mov [rl_tss + 4], 0x801000
"""
    expected = _same_as_native(_program(change), technique)
    assert expected["registers"]["eax"] == 0x801000 - 16


def test_a_repeated_delivery_installs_nothing_and_a_changed_one_fills_its_stack() -> None:
    """On the VMM itself: run the program under bt past its first two deliveries (back in
    ring 3), deliver ``int 0x32`` again through the VMM's own path, then change esp0 in guest
    memory and deliver once more."""
    image = assemble(_program("    mov [rl_tss + 4], 0x402000"))
    machine = VM(image, BinaryTranslation())
    shadow, vcpu, counters = machine.shadow, machine.vcpu, machine.counters
    assert shadow is not None

    def back_in_ring3() -> None:
        while vcpu.cpl != 3:
            machine.advance(1)

    while counters.reflected < 2:
        machine.advance(1)
    back_in_ring3()
    syncs = counters.shadow_syncs
    assert reflect_software_interrupt(machine, 0x32, machine.cpu.state.eip, 3) is None
    assert (counters.shadow_syncs, vcpu.cpl) == (syncs, 0)  # everything was in place
    back_in_ring3()
    assert shadow._guest_entry(0x401, []) == (0x301000, 6)  # U|W
    assert 1 not in shadow._tables  # nothing under entry 1 is shadowed yet
    machine.cpu.memory.write32(image.symbols["rl_tss"] + 4, 0x402000)
    assert reflect_software_interrupt(machine, 0x32, machine.cpu.state.eip, 3) is None
    assert machine.cpu.state.regs[4] == 0x402000 - 16
    assert counters.shadow_syncs == syncs + 1  # the new stack page
    assert machine.cpu.memory.read32(shadow._tables[1] + 1 * 4) & ~0xFFF == 0x301000
