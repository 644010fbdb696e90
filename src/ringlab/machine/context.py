"""What crosses a world switch: the vCPU context each side changed since the last one.

The pCPU (the cpu service) runs guest code; the VMM (the hypervisor service) handles the exits.
Each keeps a copy of the vCPU: its ``Cpu`` with registers, statistics and the VM's host memory.
At every switch the side that ran hands the other a ``ContextDelta``: all registers and counters
(a few hundred bytes), the pages it wrote since the previous switch (``Memory.take_recent``, the
dirty log KVM keeps for migration), the TLB maintenance it did (``Mmu.log``) and its TLB's
contents (at most the TLB's size, 64 words by default), so both copies are equal again before the
other side touches them - the TLB included, so which accesses miss, and what the cost model
charges for them, is what it is in-process, where the two sides share one TLB.  In-process the two sides are one ``Cpu`` and
nothing is copied (``ringlab.vmm.InProcessCore``, the default ``CoreRunner``).

``base`` guards the protocol: a delta applies only to a copy at the retired-instruction count the
sender last saw, so a pCPU that lost its copy (it restarted and reloaded an older commit) refuses
the delta instead of running from a mix of two states.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from ringlab.machine.cpu import Cpu
from ringlab.machine.mmu import TLB_FLUSH, TLB_LOAD
from ringlab.machine.state import CpuState
from ringlab.machine.stats import stats_from_json, stats_to_json

__all__ = ["ContextDelta", "ContextMismatch", "apply_delta", "take_delta", "track"]


class ContextMismatch(Exception):
    """The delta was made against a different copy of the vCPU than this one."""


@dataclass
class ContextDelta:
    base: int
    """Retired instructions of the receiver's copy the delta applies to."""
    state: dict[str, Any]
    """``CpuState.to_dict()``: every register, control state, timer and virtual time."""
    stats: dict[str, Any]
    """``stats_to_json``: the counters (handlers retire instructions and count events too)."""
    pages: dict[int, bytes] = field(default_factory=dict)
    """Page number -> its bytes, for every page written since the last switch."""
    tlb: list[int] = field(default_factory=list)
    """TLB maintenance to replay, in order: ``TLB_FLUSH`` or a linear address (``invlpg``); then
    ``TLB_LOAD`` and the sender's TLB contents (``Tlb.snapshot``), which the receiver's TLB
    becomes (``maintenance`` is the part before it)."""

    @property
    def maintenance(self) -> list[int]:
        """The TLB maintenance alone, without the contents that follow ``TLB_LOAD``."""
        return self.tlb[: self.tlb.index(TLB_LOAD)] if TLB_LOAD in self.tlb else list(self.tlb)


def track(cpu: Cpu) -> None:
    """Start recording what ``take_delta`` hands over (TLB maintenance; pages are always logged)."""
    cpu.mmu.log = []
    cpu.memory.take_recent()


def take_delta(cpu: Cpu, base: int) -> ContextDelta:
    """Everything ``cpu`` changed since the last switch, and start over."""
    memory = cpu.memory
    pages = {number: memory.page(number) for number in sorted(memory.take_recent())}
    log = cpu.mmu.log
    tlb = list(log) if log is not None else []
    if log is not None:
        log.clear()
    tlb.append(TLB_LOAD)
    tlb.extend(cpu.mmu.tlb_snapshot())
    return ContextDelta(base, cpu.state.to_dict(), stats_to_json(cpu.stats), pages, tlb)


def apply_delta(cpu: Cpu, delta: ContextDelta) -> None:
    """Make ``cpu`` what the other side left: registers in place (the MMU keeps its TLB, as the
    hardware would), pages, TLB maintenance, then the counters as the other side counted them."""
    if cpu.stats.retired != delta.base:
        raise ContextMismatch(
            f"this copy of the vCPU is at {cpu.stats.retired} retired instructions but the delta was "
            f"made for one at {delta.base}"
        )
    memory = cpu.memory
    for number, blob in delta.pages.items():
        if not 0 <= number < memory.pages or len(blob) != len(memory.page(number)):
            raise ValueError(
                f"page {number} of {len(blob)} bytes does not fit this vCPU's {memory.size}-byte memory"
            )
    new = CpuState.from_dict(delta.state)
    state = cpu.state
    for f in fields(CpuState):
        if f.name == "regs":
            state.regs[:] = new.regs
        else:
            setattr(state, f.name, getattr(new, f.name))
    for number, blob in delta.pages.items():
        memory.load(number << 12, blob)
    memory.take_recent()  # what arrived is not news to send back
    mmu = cpu.mmu
    log = mmu.log
    mmu.log = None
    ops = delta.tlb
    contents = ops.index(TLB_LOAD) if TLB_LOAD in ops else len(ops)
    for op in ops[:contents]:
        if op == TLB_FLUSH:
            mmu.flush()
        else:
            mmu.invalidate(op)
    mmu.sync()  # cr3 or cr0.PG changed without a flush of their own: what run() does first
    if contents < len(ops):
        mmu.load_tlb(ops[contents + 1 :])
    mmu.log = log  # (the other side did these itself: nothing to send back)
    cpu.cancel_in()  # a pending IoIn was completed on the other side (its register is in state)
    stats_from_json(delta.stats, cpu.stats)
