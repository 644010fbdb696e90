"""The architectural state of one RL-32 CPU, as a plain exportable dataclass.

This is everything a hypervisor saves and restores for a vCPU: it can export a running CPU with
``to_dict`` and start another one from ``from_dict``.  The values are the *hardware* ones: a VMM
that keeps a virtual ``cr3`` or a virtual IF keeps them in its own vCPU record and writes here
the values it wants the hardware to use (a shadow page table's root, say).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ringlab.isa import REGISTERS

__all__ = ["CR0_PE", "CR0_PG", "CR0_WP", "CpuState"]

CR0_PE = 1 << 0
CR0_WP = 1 << 16
CR0_PG = 1 << 31


@dataclass
class CpuState:
    """Registers, control state, timer and virtual time.  ``regs`` is in ``isa.REGISTERS`` order."""

    regs: list[int] = field(default_factory=lambda: [0] * 8)
    eip: int = 0
    eflags: int = 0
    cs: int = 0
    """Selector 0-3; its low 2 bits are the CPL."""
    cr0: int = CR0_PE
    cr2: int = 0
    cr3: int = 0
    cr8: int = 0
    gdtr_base: int = 0
    gdtr_limit: int = 0
    idtr_base: int = 0
    idtr_limit: int = 0
    tr: int = 0
    timer_period: int = 0
    """Port 0x40: ticks every ``timer_period`` retired instructions; 0 = off."""
    timer_next: int = 0
    """Virtual time of the next tick (meaningful only when the timer is on)."""
    timer_pending: bool = False
    tsc: int = 0
    """Virtual time: instructions retired plus time skipped in ``hlt``."""
    halted: bool = False
    """Set when an idle ``hlt`` exited to a VMM (``Idle``): the next ``run`` first waits for the
    tick, as the ``hlt`` would have."""

    @property
    def cpl(self) -> int:
        return self.cs & 3

    def reg(self, name: str) -> int:
        return self.regs[REGISTERS.index(name)]

    def to_dict(self) -> dict[str, Any]:
        """A flat JSON-able dict: register names, then every other field by name."""
        out: dict[str, Any] = dict(zip(REGISTERS, self.regs, strict=True))
        for f in fields(self):
            if f.name != "regs":
                out[f.name] = getattr(self, f.name)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CpuState:
        state = cls(regs=[int(data[name]) & 0xFFFFFFFF for name in REGISTERS])
        for f in fields(cls):
            if f.name != "regs" and f.name in data:
                value = data[f.name]
                setattr(
                    state, f.name, bool(value) if isinstance(getattr(state, f.name), bool) else int(value)
                )
        return state

    def copy(self) -> CpuState:
        return CpuState.from_dict(asdict(self) | dict(zip(REGISTERS, self.regs, strict=True)))
