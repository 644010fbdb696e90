"""The published figures ``ringlab bench --paper`` puts beside Ringlab's.

[AA06] K. Adams, O. Agesen, "A Comparison of Software and Hardware Techniques for x86
       Virtualization", ASPLOS 2006, Section 6, Figure 4: nanobenchmark cycles on a 3.8 GHz
       Pentium 4 672, natively, under VMware's software VMM (binary translation) and under its
       hardware VMM (first-generation VT-x, shadow paging).  Ringlab's columns for them are
       ``native``, ``bt`` and ``hw``.  The figures are those quoted in the project's issue 12;
       they were not checked against the paper's text here (docs/techniques.md says so).
[BSSM08] R. Bhargava et al., "Accelerating Two-Dimensional Page Walks for Virtualized Systems",
       ASPLOS 2008: not cycles but memory references per TLB miss, (n+1)^2 - 1 under nested
       paging against n natively; for x86-64's four levels, 24 against 4.  Ringlab's
       ``tlbmiss`` compares ``hw+np`` with ``hw`` (shadow paging) by that ratio.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["AA06", "BSSM08", "PAPER", "Published", "WalkReferences"]

AA06 = "Adams & Agesen, ASPLOS 2006, Section 6, Figure 4 (3.8 GHz Pentium 4 672, VT-x)"
BSSM08 = "Bhargava, Serebrin, Spadini & Manne, ASPLOS 2008 (two-dimensional page walks)"


@dataclass(frozen=True)
class Published:
    """One row of [AA06]'s Figure 4: cycles natively, under the software and the hardware VMM."""

    native: int
    software: int
    hardware: int
    note: str = ""
    source: str = AA06
    columns: tuple[str, str, str] = ("native", "bt", "hw")
    """Ringlab's columns for native, the software VMM and the hardware VMM."""

    @property
    def sw_hw(self) -> float:
        """The software VMM's cost over the hardware VMM's."""
        return self.software / self.hardware

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "cycles": {"native": self.native, "software": self.software, "hardware": self.hardware},
            "columns": dict(zip(("native", "software", "hardware"), self.columns, strict=True)),
            "sw_hw_ratio": round(self.sw_hw, 4),
            "note": self.note,
        }


@dataclass(frozen=True)
class WalkReferences:
    """[BSSM08]: memory references of a TLB miss's walk, one-dimensional against nested."""

    levels: int = 4

    @property
    def native(self) -> int:
        return self.levels

    @property
    def nested(self) -> int:
        return (self.levels + 1) ** 2 - 1

    def to_json(self) -> dict[str, Any]:
        return {
            "source": BSSM08,
            "walk_references": {"native": self.native, "nested": self.nested, "levels": self.levels},
            "nested_over_native": round(self.nested / self.native, 4),
            "columns": {"native": "hw", "nested": "hw+np"},
            "note": "x86-64's four levels; RL-32's two give 2 and 8 (a ratio of 4)",
        }


PAPER: dict[str, Published | WalkReferences] = {
    "syscall": Published(242, 2308, 244, "sw ~ native + 2,000; hw ~ native: int 0x80 does not exit"),
    "in": Published(3209, 214, 15826, "sw beats native: its device is a model in the VMM"),
    "cr8wr": Published(2, 35, 2, "hw ~ native with the TPR shadow"),
    "callret": Published(11, 51, 11, "sw: the translated ret looks its target up"),
    "pagefault": Published(1093, 3927, 11242, "hw: the #PF exits and the VMM fills the shadow"),
    "divzero": Published(889, 3223, 1014, "a fault the guest handles"),
    "ptemod": Published(12, 391, 12733, "native ~ a plain store; hw: a write-protected page table"),
    "tlbmiss": WalkReferences(),
}
"""Benchmark name -> what was published for it."""
