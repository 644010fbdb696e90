"""Event counters of one CPU.

``guest()`` holds what the program alone determines (identical under the interpreter and the
block compiler, and under every technique for the same program); ``host()`` holds what depends
on how it ran.

Retired instructions are counted per ring twice: ``retired_by_real_ring`` by the ring the CPU
really ran them at (``cs & 3``), ``retired_by_ring`` by the ring the *guest* ran them at.  The
two are the same but under ring compression, where a VMM runs guest rings 0 and 1 both at real
ring 1: it then says which guest ring real ring 1 stands for (``ring_1_counts_as``, kept up to
date with its vCPU's ring, as a VMM virtualizing per-ring performance counters would), and the
CPU counts by it.  The setting travels with the counters across a world switch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Stats", "stats_from_json", "stats_to_json"]


@dataclass
class Stats:
    retired: int = 0
    retired_by_ring: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    """By the guest's ring (``guest()``)."""
    retired_by_real_ring: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    """By the ring the CPU ran them at (``host()``)."""
    ring_1_counts_as: int = 1
    """The guest ring that instructions retired at real ring 1 count at in ``retired_by_ring``:
    1 but while a VMM with ring compression runs a guest ring-0 kernel there (0 then)."""
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
    walk_references: int = 0
    """Memory references the page walks made (2 each, 8 under nested paging: ``mmu.py``)."""
    blocks_compiled: int = 0
    block_cache_hits: int = 0
    block_invalidations: int = 0

    def count_retired(self, ring: int, count: int) -> None:
        """``count`` instructions retired at real ring ``ring`` (``retired`` is the caller's)."""
        self.retired_by_real_ring[ring] += count
        self.retired_by_ring[self.ring_1_counts_as if ring == 1 else ring] += count

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
            "retired_by_real_ring": {str(ring): n for ring, n in enumerate(self.retired_by_real_ring)},
            "runs": self.runs,
            "blocks_compiled": self.blocks_compiled,
            "block_cache_hits": self.block_cache_hits,
            "block_invalidations": self.block_invalidations,
            "tlb_flushes": self.tlb_flushes,
            "tlb_misses": self.tlb_misses,
            "walk_references": self.walk_references,
        }


def stats_to_json(stats: Stats) -> dict[str, Any]:
    d = asdict(stats)
    d["exceptions"] = {str(k): v for k, v in stats.exceptions.items()}
    return d


def stats_from_json(d: dict[str, Any], stats: Stats | None = None) -> Stats:
    """Counters from their JSON form, into ``stats`` (updated in place: the CPU, its MMU and its
    compiled blocks share one ``Stats`` object) or a new one."""
    stats = stats if stats is not None else Stats()
    for key, value in d.items():
        if key == "exceptions":
            stats.exceptions = {int(k): int(v) for k, v in value.items()}
        elif key in ("retired_by_ring", "retired_by_real_ring"):
            setattr(stats, key, [int(v) for v in value])
        elif hasattr(stats, key):
            setattr(stats, key, int(value))
    return stats
