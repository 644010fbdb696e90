"""Physical memory: a bytearray with per-page dirty tracking and code-page watching.

Addresses are physical.  An access that reaches beyond ``size`` is a machine check (#MC).
Two pieces of bookkeeping serve the layers above:

* dirty pages, for crash-consistent commits (``dirty_pages`` / ``clear_dirty``), and the pages
  written since the last world switch (``take_recent``: what crosses to the other side of the
  boundary, ``context.py``).  The block compiler writes through a fast path that bypasses
  ``write``; it marks a page dirty when it first enters the page in its write cache, and both
  ``clear_dirty`` and ``take_recent`` tell it (through ``on_clear_dirty``) to forget those
  entries, so the next write to the page is seen again.
* code pages: pages holding compiled blocks.  A write into one calls ``on_code_write`` so the
  compiled blocks (``blocks.CompiledBlocks``) can drop the blocks the write overlaps.
"""

from __future__ import annotations

from collections.abc import Callable

from ringlab.machine.faults import MC, Fault

__all__ = ["PAGE_SHIFT", "PAGE_SIZE", "Memory"]

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT


class Memory:
    """Byte-addressed little-endian physical memory of ``size`` bytes, zero-filled."""

    def __init__(self, size: int = 4 << 20) -> None:
        if size <= 0:
            raise ValueError(f"memory size must be positive, not {size}")
        self.size = size
        self.data = bytearray(size)
        self._dirty: set[int] = set()
        self._recent: set[int] = set()
        self.code_pages: set[int] = set()
        """Page numbers that hold compiled code (maintained by ``blocks.CompiledBlocks``)."""
        self.on_code_write: Callable[[int, int], None] | None = None
        """Called with (physical address, length) when a write touches a code page."""
        self.on_clear_dirty: list[Callable[[], None]] = []

    # -- reads ---------------------------------------------------------------------------
    def _check(self, pa: int, n: int) -> None:
        if pa < 0 or pa + n > self.size:
            raise Fault(MC)

    def read(self, pa: int, n: int) -> bytes:
        self._check(pa, n)
        return bytes(self.data[pa : pa + n])

    def read8(self, pa: int) -> int:
        self._check(pa, 1)
        return self.data[pa]

    def read32(self, pa: int) -> int:
        self._check(pa, 4)
        return int.from_bytes(self.data[pa : pa + 4], "little")

    # -- writes --------------------------------------------------------------------------
    def write(self, pa: int, blob: bytes | bytearray) -> None:
        n = len(blob)
        if n == 0:
            return
        self._check(pa, n)
        self.data[pa : pa + n] = blob
        first, last = pa >> PAGE_SHIFT, (pa + n - 1) >> PAGE_SHIFT
        self._dirty.update(range(first, last + 1))
        self._recent.update(range(first, last + 1))
        if (
            self.code_pages
            and self.on_code_write is not None
            and any(p in self.code_pages for p in range(first, last + 1))
        ):
            self.on_code_write(pa, n)

    def write8(self, pa: int, value: int) -> None:
        self.write(pa, bytes((value & 0xFF,)))

    def write32(self, pa: int, value: int) -> None:
        self.write(pa, (value & 0xFFFFFFFF).to_bytes(4, "little"))

    def load(self, pa: int, blob: bytes) -> None:
        """Copy ``blob`` to ``pa`` (an image, a page restored from a commit)."""
        self.write(pa, blob)

    # -- dirty tracking ------------------------------------------------------------------
    def mark_dirty(self, page: int) -> None:
        self._dirty.add(page)
        self._recent.add(page)

    def dirty_pages(self) -> frozenset[int]:
        """Page numbers (physical address >> 12) written since the last ``clear_dirty``."""
        return frozenset(self._dirty)

    def clear_dirty(self) -> None:
        """Forget the commit's dirty set (the pages written since the last switch stay)."""
        self._dirty.clear()
        for callback in self.on_clear_dirty:
            callback()

    def has_recent(self) -> bool:
        return bool(self._recent)

    def take_recent(self) -> frozenset[int]:
        """Page numbers written since the last ``take_recent``, and forget them; the commit's
        dirty set is kept."""
        recent = frozenset(self._recent)
        self._recent.clear()
        for callback in self.on_clear_dirty:
            callback()
        return recent

    def page(self, number: int) -> bytes:
        """The bytes of page ``number`` (the last page may be short)."""
        start = number << PAGE_SHIFT
        return bytes(self.data[start : min(start + PAGE_SIZE, self.size)])

    @property
    def pages(self) -> int:
        return (self.size + PAGE_SIZE - 1) >> PAGE_SHIFT
