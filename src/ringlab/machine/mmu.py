"""The MMU: linear -> physical translation with x86 32-bit two-level paging and a modelled TLB.

The modelled TLB (``tlb``, ``machine.tlb.Tlb``: virtual page -> frame and the U/W bits of both
levels; bounded and set-associative, 64 entries 4-way unless configured) is the architectural
one: a changed PTE may be used until ``invlpg`` on its address, a ``cr3`` write or a change of
``cr0.PG`` (docs/machine.md Paging), or until the TLB evicts it.  As the SDM says, a page fault
also drops the faulting page's entry, so a handler can fix a PTE and retry without ``invlpg``.

Every miss is a page walk (``stats.tlb_misses``) that makes memory references the cost model
prices (``stats.walk_references``): 2 for RL-32's two-level tables natively and under shadow
paging (the core walks the shadow), ``(2+1)**2 - 1 = 8`` under nested paging, where each of the
guest walk's guest-physical addresses (the guest's root, its directory entry, its table entry)
is itself walked through the host's two-level table (Bhargava et al., ASPLOS 2008).  Walks never
retire instructions or take virtual time: the guest cannot tell a hit from a miss.

For the block compiler the MMU keeps *fast caches* derived from the TLB: per access mode (user,
WP, PG) a dict from virtual page to ``physical - linear`` offset, one for reads and one for
writes.  Compiled code indexes them directly and leaves to the slow path (this module) on a
miss.  Every page in a paging-on fast cache is in the TLB (an eviction drops it from them), so a
fast-cache hit is a TLB hit, which changes nothing in a FIFO TLB (``tlb.py``).  A page enters a write cache only on a write, which marks it dirty, and never while it
holds compiled code, so writes to code always take the slow path that invalidates blocks.

Hooks for the layers above, which never need to modify this module:
* shadow paging: a VMM writes the shadow table's root into ``state.cr3``; ``sync`` notices the
  change at the next ``run`` and flushes, exactly as a guest ``mov cr3`` would.
* nested paging: ``second_stage`` (guest-physical -> host-physical), when set, is applied to
  every page-table read and to every final address.  It may raise ``Fault``.  The fast caches
  hold host addresses, so a VMM that changes its second stage must call ``flush``.
* shadow paging's coherence: ``walk_check``, when set, is called with the linear address before
  every walk (every TLB miss), so the VMM can make the shadow entry the walk is about to read
  agree with the guest's own tables (``vmm.shadow``).  Hits never call it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ringlab.isa import BY_OPCODE as _BY_OPCODE
from ringlab.isa import Instruction, decode
from ringlab.machine.faults import PF, UD, Fault
from ringlab.machine.memory import PAGE_SHIFT, PAGE_SIZE, Memory
from ringlab.machine.state import CR0_PG, CR0_WP, CpuState
from ringlab.machine.stats import Stats
from ringlab.machine.tlb import Tlb, TlbGeometry

__all__ = [
    "GUEST_PERMS",
    "GUEST_PERM_SHIFT",
    "TLB_FLUSH",
    "TLB_LOAD",
    "WALK_REFERENCES",
    "WALK_REFERENCES_NESTED",
    "Mmu",
    "SecondStage",
    "mode_index",
]

M = 0xFFFFFFFF
TLB_FLUSH = -1
"""In ``Mmu.log``: the whole TLB was flushed."""
TLB_LOAD = -2
"""In a world switch's TLB list (``context.py``): what follows is the TLB's contents (``Tlb.snapshot``)."""
LEVELS = 2
"""RL-32's page tables: a directory and a table."""
WALK_REFERENCES = LEVELS
"""Memory references of a one-dimensional walk (natively, or of a shadow table)."""
WALK_REFERENCES_NESTED = (LEVELS + 1) ** 2 - 1
"""Of a two-dimensional walk: each of the LEVELS + 1 guest-physical addresses the guest walk
makes (its root, each entry) walked through the host's LEVELS-level table, plus the guest's
LEVELS entries themselves (Bhargava et al.'s (n+1)^2 - 1)."""
_PAGING_MODES = (4, 5, 6, 7)
"""The fast caches' paging-on modes (``mode_index`` bit 2): the ones derived from the TLB."""
_FRAME = 0xFFFFF000
_P, _W, _U = 1, 2, 4
GUEST_PERM_SHIFT = 8
GUEST_PERMS = (_U | _W) << GUEST_PERM_SHIFT
"""Bits 9-10 of a shadow page-table entry (x86's bits available to software, which a walk
ignores): the guest's U|W the entry was made from (``Mmu.guest_perms``)."""


def _allows(perm: int, write: bool, user: bool, cr0: int) -> bool:
    """Do the U|W bits ``perm`` allow this access?"""
    return not ((user and not perm & _U) or (write and not perm & _W and (user or cr0 & CR0_WP)))


class SecondStage(Protocol):
    """Nested paging's second translation stage (guest-physical -> host-physical)."""

    def translate(self, gpa: int, write: bool) -> int: ...


def mode_index(user: bool, cr0: int) -> int:
    """Index of the fast caches for an access: bit 0 user, bit 1 cr0.WP, bit 2 cr0.PG."""
    return int(user) | ((cr0 >> 15) & 2) | ((cr0 >> 29) & 4)


class Mmu:
    def __init__(
        self,
        memory: Memory,
        state: CpuState,
        stats: Stats,
        *,
        fast_caches: bool = False,
        tlb: TlbGeometry | None = None,
    ) -> None:
        self.memory = memory
        self.state = state
        self.stats = stats
        self.tlb = Tlb(tlb)
        """Virtual page -> (frame address, U|W bits common to both levels)."""
        self._tlb_map = self.tlb.map  # the hit path: a plain dict lookup
        self.fast_caches = fast_caches
        self.read_cache: list[dict[int, int]] = [{} for _ in range(8)]
        self.write_cache: list[dict[int, int]] = [{} for _ in range(8)]
        self.second_stage: SecondStage | None = None
        self.log: list[int] | None = None
        """When a list, TLB maintenance is recorded in it (``TLB_FLUSH`` or the linear address
        invalidated) so the other side of a world switch can replay it (``context.py``)."""
        self.walk_check: Callable[[int], None] | None = None
        """Called with the linear address before each walk (shadow paging's coherence)."""
        self.guest_perms = False
        """Shadow paging: each TLB entry also carries the guest's own U|W, which the VMM keeps
        in the shadow entry's bits 9-10 (``GUEST_PERMS``).  A fault they allow is the VMM's
        (its write protection, a permission the shadow has not given yet): the VMM handles it
        and the guest never sees it, so the TLB keeps the entry, as the guest's TLB, which
        never faulted, would."""
        self._cr3 = state.cr3
        self._pg = state.cr0 & CR0_PG
        memory.on_clear_dirty.append(self.forget_writes)

    # -- TLB maintenance -----------------------------------------------------------------
    def resize_tlb(self, geometry: TlbGeometry) -> None:
        """Replace the TLB by an empty one of ``geometry`` (a flush: nothing the guest can see)."""
        self.tlb = Tlb(geometry)
        self._tlb_map = self.tlb.map
        self.flush()

    def flush(self) -> None:
        """Drop every translation (a ``cr3`` write, a change of ``cr0.PG``)."""
        self.tlb.clear()
        for cache in (*self.read_cache, *self.write_cache):
            cache.clear()
        if self.log is not None:
            self.log.append(TLB_FLUSH)
        self.stats.tlb_flushes += 1
        self._cr3 = self.state.cr3
        self._pg = self.state.cr0 & CR0_PG

    def invalidate(self, linear: int) -> None:
        """Drop the translation of one page (``invlpg``)."""
        vpn = (linear & M) >> PAGE_SHIFT
        if self.log is not None:
            self.log.append(linear & M)
        self.tlb.invalidate(vpn)
        for cache in (*self.read_cache, *self.write_cache):
            cache.pop(vpn, None)

    def retag(self, linear: int, perm: int) -> None:
        """Give the TLB's translation of one page the permission bits ``perm`` where it stands,
        its place in the replacement order kept: a shadow-paging VMM changing only the
        permissions of its own entry for the page (write-protecting it, or lifting that), which
        the guest's TLB would still hold and evict when it would.  The page leaves the fast
        caches, which fill again on its next access."""
        vpn = (linear & M) >> PAGE_SHIFT
        entry = self.tlb.get(vpn)
        if entry is not None and entry[1] != perm:
            self.tlb.insert(vpn, (entry[0], perm))
        for cache in (*self.read_cache, *self.write_cache):
            cache.pop(vpn, None)

    def _evicted(self, vpn: int) -> None:
        """The TLB dropped ``vpn`` to make room: so do the fast caches derived from it."""
        for mode in _PAGING_MODES:
            self.read_cache[mode].pop(vpn, None)
            self.write_cache[mode].pop(vpn, None)

    def tlb_snapshot(self) -> list[int]:
        """The TLB's contents for the other side of a world switch (``context.py``)."""
        return self.tlb.snapshot()

    def load_tlb(self, snapshot: list[int]) -> None:
        """Take the other side's TLB contents: every page whose translation is not the same
        afterwards leaves the fast caches (they must stay a subset of the TLB)."""
        before = dict(self.tlb.items())
        self.tlb.load(snapshot)
        get = self.tlb.get
        for vpn, entry in before.items():
            if get(vpn) != entry:
                self._evicted(vpn)

    def sync(self) -> None:
        """Flush if ``cr3`` or ``cr0.PG`` changed behind the MMU's back (a VMM wrote the state)."""
        if self.state.cr3 != self._cr3 or (self.state.cr0 & CR0_PG) != self._pg:
            self.flush()

    def forget_writes(self) -> None:
        """Empty the write caches, so the next write to each page is seen (dirty tracking)."""
        for cache in self.write_cache:
            cache.clear()

    def forget_code_page(self, page: int) -> None:
        """A physical page now holds compiled code: writes to it must take the slow path."""
        for cache in self.write_cache:
            for vpn in [v for v, off in cache.items() if ((v << PAGE_SHIFT) + off) >> PAGE_SHIFT == page]:
                del cache[vpn]

    # -- translation ---------------------------------------------------------------------
    def _phys(self, gpa: int, write: bool) -> int:
        stage = self.second_stage
        return gpa if stage is None else stage.translate(gpa, write)

    def _walk(self, linear: int, write: bool, user: bool) -> tuple[int, int]:
        check = self.walk_check
        if check is not None:
            check(linear)
        stats = self.stats
        stats.tlb_misses += 1
        stats.walk_references += WALK_REFERENCES if self.second_stage is None else WALK_REFERENCES_NESTED
        code = (_W if write else 0) | (_U if user else 0)
        pde = self.memory.read32(self._phys((self.state.cr3 & _FRAME) | ((linear >> 22) << 2), False))
        if not pde & _P:
            raise Fault(PF, code, linear)
        pte = self.memory.read32(self._phys((pde & _FRAME) | (((linear >> 12) & 0x3FF) << 2), False))
        if not pte & _P:
            raise Fault(PF, code, linear)
        entry = (pte & _FRAME, pde & pte & (_U | _W) | (pte & GUEST_PERMS if self.guest_perms else 0))
        evicted = self.tlb.insert(linear >> PAGE_SHIFT, entry)
        if evicted is not None:
            self._evicted(evicted)
        return entry

    def translate(self, linear: int, write: bool, user: bool) -> int:
        """Physical address of ``linear`` for one access; raises #PF (or #MC from a walk)."""
        cr0 = self.state.cr0
        if cr0 & CR0_PG:
            vpn = linear >> PAGE_SHIFT
            entry = self._tlb_map.get(vpn)
            if entry is None:
                entry = self._walk(linear, write, user)
            frame, perm = entry
            if (user and not perm & _U) or (write and not perm & _W and (user or cr0 & CR0_WP)):
                if not (self.guest_perms and _allows(perm >> GUEST_PERM_SHIFT, write, user, cr0)):
                    self.invalidate(linear)  # SDM: a page fault drops the page's TLB entries
                raise Fault(PF, _P | (_W if write else 0) | (_U if user else 0), linear)
            pa = self._phys(frame | (linear & 0xFFF), write)
        else:
            pa = self._phys(linear, write)
        if self.fast_caches:
            self._fill(linear, pa, write, mode_index(user, cr0))
        return pa

    def _fill(self, linear: int, pa: int, write: bool, mode: int) -> None:
        page_base = pa & _FRAME
        if page_base + PAGE_SIZE > self.memory.size:
            return  # a partial last page always takes the slow path, which raises #MC
        vpn = linear >> PAGE_SHIFT
        offset = page_base - (vpn << PAGE_SHIFT)
        self.read_cache[mode][vpn] = offset
        if write and (page_base >> PAGE_SHIFT) not in self.memory.code_pages:
            self.write_cache[mode][vpn] = offset
            self.memory.mark_dirty(page_base >> PAGE_SHIFT)

    # -- linear accesses -------------------------------------------------------------------
    def _pages(self, linear: int, n: int, write: bool, user: bool) -> list[tuple[int, int]]:
        """(physical address, length) pieces of an access; every page is translated before
        anything is touched, so a faulting access changes nothing."""
        linear &= M
        first = PAGE_SIZE - (linear & 0xFFF)
        if n <= first:
            return [(self.translate(linear, write, user), n)]
        pieces = [(self.translate(linear, write, user), first)]
        done = first
        while done < n:
            size = min(PAGE_SIZE, n - done)
            pieces.append((self.translate((linear + done) & M, write, user), size))
            done += size
        return pieces

    def read_bytes(self, linear: int, n: int, user: bool) -> bytes:
        pieces = self._pages(linear, n, False, user)
        if len(pieces) == 1:
            return self.memory.read(pieces[0][0], n)
        for pa, size in pieces:  # check every piece exists before reading (#MC)
            if pa + size > self.memory.size:
                self.memory.read(pa, size)
        return b"".join(self.memory.read(pa, size) for pa, size in pieces)

    def write_bytes(self, linear: int, blob: bytes, user: bool) -> None:
        pieces = self._pages(linear, len(blob), True, user)
        for pa, size in pieces:
            if pa + size > self.memory.size:
                self.memory.read(pa, size)  # raises #MC before anything is written
        done = 0
        for pa, size in pieces:
            self.memory.write(pa, blob[done : done + size])
            done += size

    # The one- and four-byte accesses first try the fast caches the block compiler uses (filled
    # by ``translate``, dropped with the TLB, never holding a code page for writes), so the
    # interpreter and a VMM's emulation skip the page walk and its checks when they can.
    def read32(self, linear: int, user: bool) -> int:
        linear &= M
        if self.fast_caches and linear & 0xFFF <= 0xFFC:
            off = self.read_cache[mode_index(user, self.state.cr0)].get(linear >> PAGE_SHIFT)
            if off is not None:
                pa = linear + off
                return int.from_bytes(self.memory.data[pa : pa + 4], "little")
        return int.from_bytes(self.read_bytes(linear, 4, user), "little")

    def read8(self, linear: int, user: bool) -> int:
        linear &= M
        if self.fast_caches:
            off = self.read_cache[mode_index(user, self.state.cr0)].get(linear >> PAGE_SHIFT)
            if off is not None:
                return self.memory.data[linear + off]
        return self.read_bytes(linear, 1, user)[0]

    def write32(self, linear: int, value: int, user: bool) -> None:
        linear &= M
        if self.fast_caches and linear & 0xFFF <= 0xFFC:
            off = self.write_cache[mode_index(user, self.state.cr0)].get(linear >> PAGE_SHIFT)
            if off is not None:  # the page is dirty already and holds no compiled code
                pa = linear + off
                self.memory.data[pa : pa + 4] = (value & M).to_bytes(4, "little")
                return
        self.write_bytes(linear, (value & M).to_bytes(4, "little"), user)

    def write8(self, linear: int, value: int, user: bool) -> None:
        linear &= M
        if self.fast_caches:
            off = self.write_cache[mode_index(user, self.state.cr0)].get(linear >> PAGE_SHIFT)
            if off is not None:
                self.memory.data[linear + off] = value & 0xFF
                return
        self.write_bytes(linear, bytes((value & 0xFF,)), user)

    def fetch(self, linear: int, user: bool) -> Instruction:
        """Fetch and decode the instruction at ``linear``; #UD for undefined bytes."""
        spec = _BY_OPCODE.get(self.read8(linear, user))
        if spec is None:
            raise Fault(UD)
        insn = decode(self.read_bytes(linear, spec.length, user))
        if insn is None:
            raise Fault(UD)
        return insn
