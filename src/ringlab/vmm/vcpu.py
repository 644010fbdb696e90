"""Virtual CPU state: what the guest believes its privileged registers hold.

Under ring compression (trap-emulate, bt, pv) the guest kernel runs at real ring 1, so the real
``cs``, IF/IOPL and descriptor-table registers are the VMM's choice and the guest-visible ones
live here.  ``guest_view`` swaps the guest-visible values into the real registers for the
duration of one emulated instruction or one event delivery, so the core's own semantics
(``iret``, ``lidt``, ``cli``, IDT delivery with its stack switch ...) run against the virtual
state unchanged, and ``Deprivilege.apply`` puts the real values back.  cr0/cr3 are virtual only
under shadow paging (``shadow.py``); cr2/cr8 are always the real ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType

from ringlab.isa import EFLAGS
from ringlab.machine.state import CpuState
from ringlab.machine.stats import Stats

__all__ = [
    "SYS_FLAGS",
    "VMM_IDT",
    "Deprivilege",
    "VirtualCpu",
    "count_guest_ring",
    "enter_guest",
    "guest_view",
    "leave_guest",
]

SYS_FLAGS = EFLAGS.IF | EFLAGS.IOPL
"""The eflags bits a deprivileged guest must not own: IF and IOPL."""
_IF = EFLAGS.IF
VMM_IDT = (0xFFC00000, 0x7FF)
"""Where the VMM's own IDT "is": what ``sidt`` shows a trap-and-emulate guest."""
VMM_GDT = (0xFFC01000, 0xFF)
VMM_TR = 0xFFC02000


@dataclass
class VirtualCpu:
    cs: int = 0
    flags: int = 0
    """IF and IOPL as the guest sees them."""
    idtr_base: int = 0
    idtr_limit: int = 0
    gdtr_base: int = 0
    gdtr_limit: int = 0
    tr: int = 0
    pending_tick: bool = False
    """A timer tick the VMM holds because the virtual IF was 0 when it fell."""

    @property
    def cpl(self) -> int:
        return self.cs & 3

    @property
    def interrupts_enabled(self) -> bool:
        return bool(self.flags & EFLAGS.IF)


@dataclass(frozen=True)
class Deprivilege:
    """How real state looks while a deprivileged guest runs (ring compression)."""

    vmm_tables: bool
    """trap-emulate: the real idtr/gdtr/tr are the VMM's (so ``sidt`` leaks them); bt/pv: the
    guest's, since every vector exits anyway and user code then sees the right values."""
    user_flags_direct: bool
    """bt/pv: in ring 3 the real IF/IOPL are the guest's (user code runs directly and exactly);
    trap-emulate keeps IF = 1 so the VMM always gets the timer, and IOPL = 0 so I/O traps."""
    kernel_ring: int = 1

    def apply(self, s: CpuState, v: VirtualCpu) -> None:
        cpl = v.cs & 3
        s.cs = 3 if cpl == 3 else max(cpl, self.kernel_ring)
        real = v.flags if cpl == 3 and self.user_flags_direct else _IF
        s.eflags = (s.eflags & ~SYS_FLAGS) | real
        if self.vmm_tables:
            (s.idtr_base, s.idtr_limit), (s.gdtr_base, s.gdtr_limit), s.tr = VMM_IDT, VMM_GDT, VMM_TR
        else:
            s.idtr_base, s.idtr_limit = v.idtr_base, v.idtr_limit
            s.gdtr_base, s.gdtr_limit, s.tr = v.gdtr_base, v.gdtr_limit, v.tr

    def sync(self, s: CpuState, v: VirtualCpu) -> None:
        """After the guest ran directly: only ring 3 is unambiguous (ring compression maps
        guest rings 0 and 1 both to 1), and in ring 3 under bt/pv the real flags are the guest's."""
        if s.cs & 3 == 3:
            v.cs = 3
            if self.user_flags_direct:
                v.flags = s.eflags & SYS_FLAGS


def count_guest_ring(stats: Stats, v: VirtualCpu, policy: Deprivilege | None) -> None:
    """Tell the CPU which guest ring its real ring 1 stands for (``Stats.ring_1_counts_as``), so
    that ``retired_by_ring`` counts the guest's ring: 0 while a compressed guest is in ring 0,
    else 1.  The VMM calls it where its vCPU's ring may have changed (an event it delivered, an
    instruction it emulated), after retiring the instruction that changed it.  ``policy`` None
    (no ring compression): nothing to do."""
    if policy is not None:
        stats.ring_1_counts_as = 0 if v.cs & 3 == 0 else 1


def enter_guest(s: CpuState, v: VirtualCpu) -> None:
    """Real registers = the guest-visible ones (``guest_view``'s entry; deprivileged guests only)."""
    s.cs = v.cs
    s.eflags = (s.eflags & ~SYS_FLAGS) | v.flags
    s.idtr_base, s.idtr_limit, s.gdtr_base, s.gdtr_limit, s.tr = (
        v.idtr_base,
        v.idtr_limit,
        v.gdtr_base,
        v.gdtr_limit,
        v.tr,
    )


def leave_guest(s: CpuState, v: VirtualCpu, policy: Deprivilege) -> None:
    """What the body left in the real registers becomes the guest-visible state, and the real
    registers go back to what ``policy`` runs the guest with (``guest_view``'s exit)."""
    v.cs, v.flags = s.cs & 3, s.eflags & SYS_FLAGS
    v.idtr_base, v.idtr_limit, v.gdtr_base, v.gdtr_limit, v.tr = (
        s.idtr_base,
        s.idtr_limit,
        s.gdtr_base,
        s.gdtr_limit,
        s.tr,
    )
    policy.apply(s, v)


class guest_view:  # a context manager, named as the function it replaced (cheaper than one)
    """``with guest_view(s, v, policy):`` real registers = the guest-visible ones while the body
    runs; then back to real (also when the body raises).  ``policy`` None (hw: the guest runs
    at its own ring 0, real state is virtual state) changes nothing."""

    __slots__ = ("policy", "s", "v")

    def __init__(self, s: CpuState, v: VirtualCpu, policy: Deprivilege | None) -> None:
        self.s, self.v, self.policy = s, v, policy

    def __enter__(self) -> None:
        if self.policy is not None:
            enter_guest(self.s, self.v)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.policy is not None:
            leave_guest(self.s, self.v, self.policy)
