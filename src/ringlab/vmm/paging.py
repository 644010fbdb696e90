"""How a VM's memory is virtualized: one small protocol, two implementations.

* ``DirectPaging``: the guest's own page tables are the real ones (native, pv after validation,
  hw with nested paging, where the P2M is the MMU's second stage).
* ``ShadowPageTables`` (``shadow.py``): the guest's cr0/cr3 are virtual and the real cr3 points at
  a shadow the VMM fills from the guest's tables on hidden page faults.
"""

from __future__ import annotations

from typing import Protocol

from ringlab.machine.cpu import Cpu
from ringlab.machine.exits import Raised
from ringlab.machine.faults import Fault

__all__ = ["DirectPaging", "Paging"]


class Paging(Protocol):
    def read_cr(self, n: int) -> int: ...
    def write_cr(self, n: int, value: int) -> None: ...
    def invlpg(self, linear: int) -> None: ...
    def page_fault(self, exit: Raised) -> Fault | None:
        """A real #PF exit (or a #PF bt's translated code raised): ``None`` if it was the VMM's
        (now fixed: resume), else the fault the guest must see (a #PF with the guest's error
        code, or #MC).  ``VM.shadow_fault`` is its one caller."""
        ...

    def prepare_delivery(self, vector: int, cpl: int) -> None:
        """Make sure delivering ``vector`` into the guest cannot take a VMM-only page fault."""
        ...

    def guest_cr0(self) -> int: ...
    def guest_cr3(self) -> int: ...


class DirectPaging:
    def __init__(self, cpu: Cpu) -> None:
        self.cpu = cpu

    def read_cr(self, n: int) -> int:
        return self.cpu.read_cr(n)

    def write_cr(self, n: int, value: int) -> None:
        self.cpu.write_cr(n, value)

    def invlpg(self, linear: int) -> None:
        self.cpu.invalidate_page(linear)

    def page_fault(self, exit: Raised) -> Fault | None:
        return Fault(14, exit.error_code, exit.cr2)

    def prepare_delivery(self, vector: int, cpl: int) -> None:
        pass

    def guest_cr0(self) -> int:
        return self.cpu.state.cr0

    def guest_cr3(self) -> int:
        return self.cpu.state.cr3
