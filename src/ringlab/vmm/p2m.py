"""The P2M: guest-physical -> host-physical, the per-VM table only the hypervisor writes.

In-process a VM's RAM is the first ``ram_size`` bytes of its host memory, so the mapping is
the identity below the limit; what matters is the limit: a guest-physical address beyond the
VM's RAM is a machine check (#MC), exactly what the guest would get natively, and never reaches
the VMM's own memory (the shadow page tables above it).  It is the MMU's second stage under
nested paging and the walker's under shadow paging.
"""

from __future__ import annotations

from ringlab.machine.faults import MC, Fault

__all__ = ["P2M"]


class P2M:
    def __init__(self, ram_size: int) -> None:
        self.ram_size = ram_size

    def translate(self, gpa: int, write: bool) -> int:
        if gpa >= self.ram_size:
            raise Fault(MC)
        return gpa
