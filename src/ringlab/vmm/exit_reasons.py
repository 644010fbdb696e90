"""Intel's basic VM-exit reasons (SDM Vol. 3C, Appendix C), the subset RL-32 can raise.

The ``hw`` technique names every VM exit by these numbers and names, so a run's statistics
read like a VT-x trace (``CPUID 10``, ``IO_INSTRUCTION 30`` ...).
"""

from __future__ import annotations

import enum

__all__ = ["VmxExitReason"]


class VmxExitReason(enum.IntEnum):
    EXCEPTION_NMI = 0
    """An exception whose bit is set in the exception bitmap (here: #PF under shadow paging)."""
    EXTERNAL_INTERRUPT = 1
    TRIPLE_FAULT = 2
    CPUID = 10
    HLT = 12
    INVLPG = 14
    RDTSC = 16
    VMCALL = 18
    CR_ACCESS = 28
    IO_INSTRUCTION = 30
    EPT_VIOLATION = 48

    @property
    def label(self) -> str:
        """``"CPUID (10)"``: the key the statistics use."""
        return f"{self.name} ({self.value})"
