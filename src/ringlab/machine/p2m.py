"""The P2M: guest-physical -> host-physical, the per-VM table only the hypervisor writes.

In-process a VM's RAM is the first ``ram_size`` bytes of its host memory, so the mapping is
the identity below the limit; what matters is the limit: a guest-physical address beyond the
VM's RAM maps to ``NOWHERE``, a host frame that does not exist, so touching it is a machine
check (#MC) exactly as natively, and never reaches the VMM's own memory (the shadow page tables
above the guest's RAM).  It is the MMU's second stage under nested paging and the walker's under
shadow paging (a shadow entry may point at ``NOWHERE`` too).
"""

from __future__ import annotations

__all__ = ["NOWHERE", "P2M"]

NOWHERE = 0xFFFFF000
"""A host frame beyond any memory: accesses to it raise #MC."""


class P2M:
    def __init__(self, ram_size: int) -> None:
        self.ram_size = ram_size

    def translate(self, gpa: int, write: bool) -> int:
        if gpa >= self.ram_size:
            return NOWHERE | (gpa & 0xFFF)
        return gpa
