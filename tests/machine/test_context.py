"""The vCPU context that crosses a world switch (``machine.context``): after a delta, the
receiving copy equals the sender's - registers, counters, every page written, TLB maintenance -
and a delta made for another copy is refused rather than mixed in."""

from __future__ import annotations

import pytest

from ringlab.asm import assemble
from ringlab.machine import Cpu, ExitReason
from ringlab.machine.context import ContextMismatch, apply_delta, take_delta, track

PROGRAM = """
        mov esp, 0x9000
        mov eax, 0x1234
        mov ebx, 0x5000
loop:   mov [ebx], eax
        add ebx, 4096
        add eax, 1
        cmp ebx, 0x8000
        jne loop
        out 0x3f8, eax
        in eax, 0x3f8
        push eax
        out 0xf4, eax
"""


def _pair() -> tuple[Cpu, Cpu]:
    image = assemble(PROGRAM, filename="ctx.s")
    a, b = Cpu.boot(image), Cpu.boot(image)
    track(a)
    track(b)
    return a, b


def _same(a: Cpu, b: Cpu) -> None:
    assert a.state.to_dict() == b.state.to_dict()
    assert a.stats == b.stats
    assert a.memory.data == b.memory.data


def test_a_delta_makes_the_other_copy_equal_after_each_exit() -> None:
    a, b = _pair()
    exit = a.run(1_000)
    assert exit.reason is ExitReason.IO_OUT
    delta = take_delta(a, 0)
    assert sorted(delta.pages) == [5, 6, 7]  # the three pages the loop wrote, nothing else
    apply_delta(b, delta)
    _same(a, b)
    # the other side completes the IO_IN on its copy; its registers come back in the delta
    exit = b.run(1_000)
    assert exit.reason is ExitReason.IO_IN
    b.complete_in(0x41)
    apply_delta(a, take_delta(b, a.stats.retired))
    _same(a, b)
    assert a.run(1_000).reason is ExitReason.IO_OUT  # no IO_IN left pending on a: it runs on
    assert a.memory.read32(0x9000 - 4) & 0xFF == 0x41  # ... with the value b supplied


def test_a_commit_between_the_run_and_the_switch_keeps_the_pages_for_the_switch() -> None:
    """The pCPU commits a slice's end (``clear_dirty``) before it answers the exit: what the run
    wrote must still cross to the hypervisor's copy."""
    a, _b = _pair()
    a.run(1_000)
    a.memory.clear_dirty()
    assert a.memory.dirty_pages() == frozenset()
    assert sorted(take_delta(a, 0).pages) == [5, 6, 7]


def test_nothing_written_sends_no_pages() -> None:
    a, b = _pair()
    apply_delta(b, take_delta(a, 0))
    assert take_delta(b, 0).pages == {}


def test_tlb_maintenance_is_replayed_on_the_other_copy() -> None:
    a, b = _pair()
    for cpu in (a, b):
        cpu.mmu.tlb.insert(0x5, (0x5000, 6))
        cpu.mmu.tlb.insert(0x6, (0x6000, 6))
    a.invalidate_page(0x5000)
    delta = take_delta(a, 0)
    assert delta.maintenance == [0x5000]
    apply_delta(b, delta)
    assert 0x5 not in b.mmu.tlb and 0x6 in b.mmu.tlb
    a.flush_tlb()
    apply_delta(b, take_delta(a, 0))
    assert len(b.mmu.tlb) == 0
    assert take_delta(a, 0).maintenance == []  # replayed once, not again


def test_the_tlb_contents_cross_the_switch_in_replacement_order() -> None:
    """What one side filled (and in which order: FIFO is the replacement state) is the other's
    after the switch, so both evict the same page next, as the one TLB in-process would."""
    a, b = _pair()
    sets = a.mmu.tlb.geometry.sets
    pages = [0x10 + k * sets for k in range(a.mmu.tlb.ways)]  # one set, filled
    for vpn in pages:
        a.mmu.tlb.insert(vpn, (vpn << 12, 6))
    b.mmu.tlb.insert(0x7, (0x7000, 6))  # the receiver's own entry goes: it becomes the sender's
    apply_delta(b, take_delta(a, 0))
    assert sorted(b.mmu.tlb) == sorted(pages)
    assert b.mmu.tlb.insert(0x10 + 9 * sets, (0, 6)) == pages[0]  # the oldest fill goes first


def test_a_delta_for_another_copy_is_refused_and_changes_nothing() -> None:
    a, b = _pair()
    a.run(1_000)
    with pytest.raises(
        ContextMismatch, match="at 0 retired instructions but the delta was made for one at 5"
    ):
        apply_delta(b, take_delta(a, 5))
    assert b.stats.retired == 0 and not any(b.memory.data[0x5000:0x8000])


def test_a_delta_with_a_page_outside_memory_is_refused_before_anything_changes() -> None:
    a, b = _pair()
    a.run(1_000)
    delta = take_delta(a, 0)
    delta.pages[b.memory.pages + 3] = bytes(4096)
    with pytest.raises(ValueError, match="does not fit"):
        apply_delta(b, delta)
    assert b.state.to_dict() != a.state.to_dict() and not any(b.memory.data[0x5000:0x8000])
