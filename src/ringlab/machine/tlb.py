"""The TLB: a bounded, set-associative cache of translations, virtual page -> (frame, U|W bits).

``entries`` translations in ``entries // ways`` sets of ``ways`` each; virtual page ``vpn`` lives
in set ``vpn % sets``.  The default, 64 entries 4-way, is the size class of the data TLBs of the
era the cost model prices (the Pentium 4's DTLB holds 64 4 KiB translations); ``ways == entries``
is fully associative.

Replacement is first-in first-out within a set: a fill into a full set evicts the set's oldest
fill.  A hit changes nothing, which is what lets the core keep its *fast caches* (``mmu.py``: the
translations compiled blocks index inline) without telling the TLB about every hit: the MMU keeps
every fast-cache entry a subset of the TLB (an eviction drops the page from the fast caches), so a
fast-cache hit is a TLB hit, and the TLB's contents - hence which accesses miss - depend only on
the sequence of misses: a data access misses on compiled code's path exactly when it would on
the interpreter's.  (LRU would need every hit recorded, inline in every compiled load and
store.)  Instruction fetch is the one difference: the interpreter translates each instruction's
address, compiled code its block's once (as the Pentium 4's trace cache delivers decoded
instructions without an ITLB lookup), so when a data access evicts the code page in mid-block
the interpreter walks again at the next instruction and compiled code at the next block.

The TLB is a cache: an entry may go at any moment (eviction), and a guest that keeps its
page tables and ``invlpg`` right, as x86 requires, sees the same results whatever the size.
What the size changes is how many walks the MMU makes (``Stats.tlb_misses``), which the cost
model prices (``vmm.costs``), never what the guest computes or the virtual time it takes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

__all__ = ["DEFAULT_ENTRIES", "DEFAULT_WAYS", "Tlb", "TlbGeometry"]

DEFAULT_ENTRIES = 64
DEFAULT_WAYS = 4
MAX_ENTRIES = 1 << 16
"""Bound on a configured size (the MMU's per-set bookkeeping is a Python list per set)."""

Entry = tuple[int, int]
"""(frame address, U|W bits common to both levels of the walk)."""


@dataclass(frozen=True)
class TlbGeometry:
    """A TLB's size: ``entries`` translations, ``ways`` per set (``entries`` a multiple of it)."""

    entries: int = DEFAULT_ENTRIES
    ways: int = DEFAULT_WAYS

    def __post_init__(self) -> None:
        if not 1 <= self.entries <= MAX_ENTRIES:
            raise ValueError(f"a TLB holds 1-{MAX_ENTRIES} entries, not {self.entries}")
        if not 1 <= self.ways <= self.entries or self.entries % self.ways:
            raise ValueError(
                f"{self.ways} ways do not divide {self.entries} entries into whole sets "
                "(ways must be 1 to entries and divide entries)"
            )

    @property
    def sets(self) -> int:
        return self.entries // self.ways

    @classmethod
    def parse(cls, text: str) -> TlbGeometry:
        """``"64"`` (4-way, or fully associative when smaller than 4), ``"64x4"``, ``"64x64"``."""
        size, _, ways = text.lower().partition("x")
        try:
            entries = int(size)
            n_ways = int(ways) if ways else min(DEFAULT_WAYS, entries)
        except ValueError:
            raise ValueError(f"a TLB size is ENTRIES or ENTRIESxWAYS (64, 64x4), not {text!r}") from None
        return cls(entries, n_ways)

    def __str__(self) -> str:
        return f"{self.entries}x{self.ways}"


class Tlb:
    """Lookups read ``map`` (the MMU's hot path indexes it as a plain dict); every change goes
    through ``insert``, ``invalidate``, ``clear`` or ``load``, which keep the sets in step."""

    __slots__ = ("_sets", "geometry", "map", "ways")

    def __init__(self, geometry: TlbGeometry | None = None) -> None:
        self.geometry = geometry or TlbGeometry()
        self.ways = self.geometry.ways
        self.map: dict[int, Entry] = {}
        """Virtual page -> entry: read it, never write it."""
        self._sets: list[list[int]] = [[] for _ in range(self.geometry.sets)]
        """Per set, its pages oldest fill first."""

    def get(self, vpn: int) -> Entry | None:
        return self.map.get(vpn)

    def __len__(self) -> int:
        return len(self.map)

    def __contains__(self, vpn: object) -> bool:
        return vpn in self.map

    def __iter__(self) -> Iterator[int]:
        return iter(self.map)

    def items(self) -> Iterable[tuple[int, Entry]]:
        return self.map.items()

    def insert(self, vpn: int, entry: Entry) -> int | None:
        """Fill ``vpn``'s translation; returns the page evicted to make room, if any."""
        m = self.map
        if vpn in m:  # a refill of a page already there keeps its place
            m[vpn] = entry
            return None
        ways = self._sets[vpn % len(self._sets)]
        evicted = None
        if len(ways) >= self.ways:
            evicted = ways.pop(0)
            del m[evicted]
        ways.append(vpn)
        m[vpn] = entry
        return evicted

    def invalidate(self, vpn: int) -> None:
        """Drop ``vpn``'s translation if it is there (``invlpg``, a page fault)."""
        if self.map.pop(vpn, None) is not None:
            self._sets[vpn % len(self._sets)].remove(vpn)

    def clear(self) -> None:
        """Drop every translation (a flush)."""
        if self.map:
            self.map.clear()
            for ways in self._sets:
                ways.clear()

    # -- crossing a world switch (``machine.context``) ---------------------------------------
    def snapshot(self) -> list[int]:
        """Every entry, set by set, oldest first, each as ``vpn << 32 | frame | bits``: the order
        is the replacement state, so ``load`` of it gives a TLB that evicts as this one would."""
        m = self.map
        return [(vpn << 32) | m[vpn][0] | m[vpn][1] for ways in self._sets for vpn in ways]

    def load(self, snapshot: Iterable[int]) -> None:
        """Become the TLB ``snapshot`` describes (entries of a TLB of the same geometry)."""
        self.clear()
        for word in snapshot:
            self.insert(word >> 32, (word & 0xFFFFF000, word & 0xFFF))
