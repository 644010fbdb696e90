"""Event counters of one CPU.

``guest()`` holds what the program alone determines (identical under the interpreter and the
block compiler, and under every technique for the same program); ``host()`` holds what depends
on how it ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Stats"]


@dataclass
class Stats:
    retired: int = 0
    retired_by_ring: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    exceptions: dict[int, int] = field(default_factory=dict)
    """Vector -> times raised by guest instructions (faults and ``int n``), delivered or not."""
    interrupts: int = 0
    """Timer interrupts delivered."""
    io: int = 0
    """``in``/``out`` that exited to the platform."""
    idle: int = 0
    """Virtual time skipped in ``hlt``."""
    runs: int = 0
    tlb_flushes: int = 0
    tlb_misses: int = 0
    """Page walks."""
    blocks_compiled: int = 0
    block_cache_hits: int = 0
    block_invalidations: int = 0

    def count_exception(self, vector: int) -> None:
        self.exceptions[vector] = self.exceptions.get(vector, 0) + 1

    def guest(self, virtual_time: int) -> dict[str, Any]:
        return {
            "retired": self.retired,
            "retired_by_ring": {str(ring): n for ring, n in enumerate(self.retired_by_ring)},
            "virtual_time": virtual_time,
            "exceptions": {str(v): n for v, n in sorted(self.exceptions.items())},
            "interrupts": self.interrupts,
            "io": self.io,
        }

    def host(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "blocks_compiled": self.blocks_compiled,
            "block_cache_hits": self.block_cache_hits,
            "block_invalidations": self.block_invalidations,
            "tlb_flushes": self.tlb_flushes,
            "tlb_misses": self.tlb_misses,
        }
