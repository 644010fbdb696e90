"""Shadow page tables, virtual-TLB style.

The guest's cr0 and cr3 are virtual; the real cr3 points at a shadow page directory in VMM
memory above the guest's RAM, and the real cr0 always has PG (a guest with paging off runs on
an identity shadow).  The shadow starts empty and is filled on *hidden* page faults: the VMM
walks the guest's own tables (with the core's MMU on a view of the virtual cr0/cr3, and the P2M
as second stage, so the walk, its permission rules and its error codes are the hardware's),
copies the guest's entry if there is one (the first miss under a directory entry copies the
whole guest page table), and resumes; otherwise the fault was the guest's and is reflected with
the guest's error code.

The core's TLB stands for the guest's own: it caches shadow entries exactly when the native TLB
would cache the guest's (a walk on every miss, the same size and replacement), so it holds what
the native TLB would hold, stale translations included, until ``invlpg``, a cr3 write, a change
of cr0.PG or eviction drops them (all intercepted or the core's own).  Three rules keep the
shadow from showing the guest anything else:

* a shadow entry is used only when the TLB misses, and then it must say what the guest's tables
  say now, as the native walk would: ``_coherent`` checks it at every walk (``Mmu.walk_check``)
  and drops one the guest has changed since it was made (a prefetched page changed before its
  first use, a page the TLB evicted and the guest remapped without ``invlpg``).  A real
  shadow-paging VMM keeps its entries so by tracing the guest's page tables;
* each entry keeps the guest's permissions it was made from (in bits 9-10, which the MMU
  ignores), so a permission fault is the guest's exactly when the guest's entry, as the TLB held
  it, refuses the access; otherwise the refusal was the VMM's own (write protection, forced WP)
  and the fault stays hidden;
* an event the VMM reflects is delivered with interception off, so ``prepare_delivery`` shadows
  what the delivery touches beforehand, through the TLB's translation where it holds one.

Binary translation also uses the shadow to write-protect pages that hold translated code
(``protect``): a write to one is a hidden fault that drops the page's translations.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from ringlab.machine.cpu import Cpu
from ringlab.machine.exits import Raised
from ringlab.machine.faults import DF, GP, MC, PF, Fault
from ringlab.machine.memory import PAGE_SHIFT, PAGE_SIZE
from ringlab.machine.mmu import GUEST_PERM_SHIFT, GUEST_PERMS, Mmu
from ringlab.machine.p2m import NOWHERE, P2M
from ringlab.machine.state import CR0_PE, CR0_PG, CR0_WP, CpuState
from ringlab.machine.stats import Stats
from ringlab.vmm.counters import EventCounter

__all__ = ["POOL_PAGES", "ShadowPageTables"]

POOL_PAGES = 64
"""Shadow pages (the directory and up to 63 page tables); when they run out, flush."""
_P, _W, _U = 1, 2, 4
_FRAME = 0xFFFFF000
_DELIVERY_FRAME = 24
"""Bytes an event delivery pushes at most (old esp, eflags, cs, eip, error code) + slack."""
_SWITCHED, _FAULTED = 1, 2
_AVL = GUEST_PERM_SHIFT
"""The guest's U|W bits (1-2) are kept in each shadow entry's bits 9-10, which the MMU ignores
(x86's bits available to software): what the entry was made from, for ``_coherent`` and
``page_fault``."""


_Ready = tuple[
    tuple[int, ...],
    tuple[tuple[int, bytes], ...],
    tuple[int, int] | None,
    tuple[tuple[int, tuple[int, int] | None], ...],
]


def _stack_pages(esp: int) -> tuple[int, int]:
    """The pages a delivery's frame below ``esp`` may touch (without a stack switch)."""
    return ((esp - _DELIVERY_FRAME) & 0xFFFFFFFF) >> PAGE_SHIFT, ((esp - 1) & 0xFFFFFFFF) >> PAGE_SHIFT


class ShadowPageTables:
    def __init__(
        self, cpu: Cpu, p2m: P2M, pool_base: int, counters: EventCounter, *, force_wp: bool = False
    ) -> None:
        self.cpu = cpu
        self.memory = cpu.memory
        self.counters = counters
        self.force_wp = force_wp
        """bt: supervisor writes must fault on write-protected (translated) pages."""
        self.root = pool_base
        self._free = [pool_base + (i + 1) * PAGE_SIZE for i in range(POOL_PAGES - 1)]
        self._tables: dict[int, int] = {}
        """Directory index -> address of its shadow page table."""
        self._rmap: dict[int, set[int]] = {}
        """Host frame number -> virtual page numbers mapping it in the shadow."""
        self.protected: set[int] = set()
        """Host frame numbers whose shadow entries are read-only (translated code)."""
        self.on_protected_write: Callable[[int], None] | None = None
        self.cr0 = cpu.state.cr0
        self.cr3 = cpu.state.cr3
        self._epoch = 0
        """Bumped by every change to the shadow (an entry or table written or dropped, a flush,
        a page protected or unprotected): what a remembered delivery (``_ready``) relies on."""
        self._ready: _Ready | None = None
        """The last delivery that found everything in place: (its registers and the epoch, the
        guest words it read and their values, the stack pages without a stack switch, what the
        TLB held of the pages it looked at)."""
        self._last_fault: tuple[int, ...] | None = None
        self._unprotected = 0
        """Writes to protected pages handed to ``on_protected_write`` (``prepare_delivery``)."""
        self._repeats = 0
        self._view = CpuState()
        self._walker = Mmu(self.memory, self._view, Stats())
        self._walker.second_stage = p2m
        self.p2m = p2m
        self.memory.write(self.root, bytes(PAGE_SIZE))
        cpu.state.cr3 = self.root
        cpu.state.cr0 = self._real_cr0()
        cpu.flush_tlb()
        cpu.mmu.walk_check = self._coherent  # and the VM's controls say guest_perms (Mmu.guest_perms)

    # -- the guest's registers -------------------------------------------------------------
    def _real_cr0(self) -> int:
        return self.cr0 | CR0_PG | CR0_PE | (CR0_WP if self.force_wp else 0)

    def guest_cr0(self) -> int:
        return self.cr0

    def guest_cr3(self) -> int:
        return self.cr3

    def read_cr(self, n: int) -> int:
        if n == 0:
            return self.cr0
        if n == 3:
            return self.cr3
        return self.cpu.read_cr(n)

    def write_cr(self, n: int, value: int) -> None:
        if n == 0:
            old = self.cr0
            self.cr0 = (value & (CR0_WP | CR0_PG)) | CR0_PE  # docs/machine.md: only WP and PG are writable
            self.cpu.state.cr0 = self._real_cr0()
            if (old ^ self.cr0) & CR0_PG:
                self.flush()  # natively a change of paging flushes the TLB
            elif (old ^ self.cr0) & CR0_WP and self.force_wp:
                self._drop_wp_dependent()  # WP alone flushes nothing natively
        elif n == 3:
            self.cr3 = value
            self.flush()
        else:
            self.cpu.write_cr(n, value)

    # -- the guest's tables, walked by the core's MMU ---------------------------------------
    def walk(self, linear: int, write: bool, user: bool) -> tuple[int, int]:
        """(host frame address, U|W bits) of the guest's mapping; raises the guest's fault."""
        self._view.cr0, self._view.cr3 = self.cr0, self.cr3
        self._walker.tlb.clear()
        pa = self._walker.translate(linear & 0xFFFFFFFF, write, user)
        entry = self._walker.tlb.get((linear & 0xFFFFFFFF) >> PAGE_SHIFT)
        return pa & _FRAME, entry[1] if entry is not None else _U | _W

    def read_guest(self, linear: int, n: int) -> bytes:
        """Supervisor read through the guest's own tables (faults as the guest would)."""
        self._view.cr0, self._view.cr3 = self.cr0, self.cr3
        self._walker.tlb.clear()
        return self._walker.read_bytes(linear, n, False)

    # -- filling and dropping ---------------------------------------------------------------
    def page_fault(self, exit: Raised) -> Fault | None:
        """A #PF the core exited on: None when it was the VMM's own (a shadow miss, now filled;
        a write the VMM's protection refused, now allowed), else the guest's fault.

        A permission fault (P set) was decided by the translation the TLB held, which is the
        shadow entry (the core's TLB only ever caches shadow entries, and the VMM drops an entry
        from the TLB whenever it changes it in the shadow); the guest's permissions it was made
        from are in the entry's spare bits, so the fault is the guest's exactly when they refuse
        the access, as the native TLB's entry would, even if the guest has changed the entry in
        its tables since (a stale translation, which natively the TLB keeps until ``invlpg``)."""
        linear = (exit.cr2 or 0) & 0xFFFFFFFF
        code = exit.error_code or 0
        write, user = bool(code & _W), bool(code & _U)
        s = self.cpu.state
        try:
            if not (code & _P and self._refill(linear, write, user, code)):
                self.fill(linear, write, user)
        except Fault as fault:
            self._last_fault, self._repeats = None, 0  # the guest's own fault: progress
            return fault
        key = (linear >> PAGE_SHIFT, code, self.cpu.stats.retired, s.eip, s.regs[4])
        self._repeats = self._repeats + 1 if key == self._last_fault else 0
        self._last_fault = key
        if self._repeats > 8:
            # A safety net: a hidden fault that repeats without any progress (the same access,
            # nothing retired, no event delivered in between) would loop forever; give the
            # guest its fault instead.
            return Fault(PF, code, linear)
        return None

    def _refill(self, linear: int, write: bool, user: bool, code: int) -> bool:
        """A permission fault on a shadowed page: raise the guest's #PF if the guest's own
        permissions (kept in the entry) refuse the access, else make the shadow allow it (the
        protection was the VMM's) and return True; False when the page is not shadowed."""
        spte = self._shadow_entry(linear >> PAGE_SHIFT)
        if not spte & _P:
            return False
        gperm = (spte >> _AVL) & (_U | _W)
        if self._refuses(gperm, write, user):
            raise Fault(PF, code, linear)
        self._settle(linear, spte & _FRAME, gperm, write, user)
        return True

    def refused_by_protection(self, linear: int) -> int | None:
        """The host frame number of ``linear``'s page when a supervisor write to it is refused
        by the VMM's write protection alone (the guest's own entry allows it), else None."""
        spte = self._shadow_entry((linear & 0xFFFFFFFF) >> PAGE_SHIFT)
        if not spte & _P or self._refuses((spte >> _AVL) & (_U | _W), True, False):
            return None
        frame = spte >> PAGE_SHIFT
        return frame if frame in self.protected else None

    def _refuses(self, gperm: int, write: bool, user: bool) -> bool:
        """Do the guest's permissions ``gperm`` (U|W of both levels) refuse this access, under
        the guest's own cr0.WP?"""
        if user and not gperm & _U:
            return True
        return write and not gperm & _W and (user or bool(self.cr0 & CR0_WP))

    def fill(self, linear: int, write: bool, user: bool) -> None:
        frame, perm = self.walk(linear, write, user)
        if (linear >> 22) & 0x3FF not in self._tables:
            self._prefetch((linear >> 22) & 0x3FF)
        self._settle(linear, frame, perm, write, user)

    def _settle(self, linear: int, frame: int, gperm: int, write: bool, user: bool) -> None:
        """Shadow ``linear`` -> ``frame`` for an access the guest's permissions ``gperm`` allow."""
        if write and frame >> PAGE_SHIFT in self.protected and self.on_protected_write is not None:
            self.on_protected_write(frame >> PAGE_SHIFT)
            self._unprotected += 1
        perm = None
        if write and not user and self.force_wp and not self.cr0 & CR0_WP and gperm & _U and not gperm & _W:
            # The guest kernel (WP off) writes a read-only user page, which the real WP would
            # refuse.  Shadow it supervisor-only and writable until the next user access, whose
            # hidden fault shadows it user read-only again: one entry cannot say both.
            perm = _W
        self._install(linear, frame, gperm, perm)

    def _shadow_entry(self, vpn: int) -> int:
        table = self._tables.get(vpn >> 10)
        if table is None:
            return 0
        return self.memory.read32(table + (vpn & 0x3FF) * 4)

    def _coherent(self, linear: int) -> None:
        """Before the core walks the shadow for ``linear`` (its TLB does not hold the page):
        drop the shadow entry if the guest's tables no longer say what it was made from.

        The core's TLB stands for the guest's: it holds what the native TLB would, stale
        entries included, and those must stay until ``invlpg``, a cr3 write or eviction.  A
        page the TLB does not hold is walked natively from the guest's tables as they are now,
        so the shadow entry the core is about to walk must say the same; a shadow-paging VMM
        keeps it so by tracing the guest's page tables (write-protecting them and updating the
        entries a write changes).  Ringlab checks the entry here instead, at the one moment
        it is used: a prefetched entry the guest changed before using the page, or one the TLB
        evicted and the guest changed since, is dropped, and the walk takes a hidden fault that
        fills it from the guest's tables afresh."""
        if not self.cr0 & CR0_PG:
            return  # the identity shadow cannot go stale
        vpn = (linear & 0xFFFFFFFF) >> PAGE_SHIFT
        table = self._tables.get(vpn >> 10)
        if table is None:
            return
        at = table + (vpn & 0x3FF) * 4
        spte = int.from_bytes(self.memory.data[at : at + 4], "little")
        if not spte & _P:
            return
        try:
            guest = self._guest_lookup(vpn, None)
        except Fault:  # the walk is a #MC: only a delivery's prefill shadows such a page
            guest = (NOWHERE, _U | _W)
        if guest is None or guest[0] != spte & _FRAME or guest[1] != (spte >> _AVL) & (_U | _W):
            self.memory.write32(at, 0)
            self._epoch += 1

    def _prefetch(self, pdi: int) -> None:
        """Fill a fresh shadow page table with every present entry of the guest's (the whole
        identity region when the guest's paging is off), in one hidden fault instead of one
        per page: what shadow-paging VMMs do when they first shadow a guest page table.  An
        entry the guest changes before the page is used is dropped when the core's TLB first
        walks it (``_coherent``), so the prefetch never shows the guest a translation its own
        TLB would not have."""
        base = pdi << 22
        entries = [0] * 1024
        if not self.cr0 & CR0_PG:
            everything = _P | _U | _W | (_U | _W) << _AVL
            for i in range(1024):
                entries[i] = self.p2m.translate(base + (i << PAGE_SHIFT), False) | everything
        else:
            try:
                pde = int.from_bytes(self._read_physical((self.cr3 & _FRAME) + pdi * 4, 4), "little")
                if not pde & _P:
                    return
                table = self._read_physical(pde & _FRAME, PAGE_SIZE)
            except Fault:
                return
            for i in range(1024):
                pte = int.from_bytes(table[i * 4 : i * 4 + 4], "little")
                if pte & _P:
                    frame = self.p2m.translate(pte & _FRAME, False)
                    gperm = pde & pte & (_U | _W)
                    entries[i] = frame | _P | self._real_perm(gperm) | gperm << _AVL
        if not any(entries):
            return
        if not self._free:
            self.flush()
        shadow_table = self._free.pop()
        for i, entry in enumerate(entries):
            if entry:
                frame_number = entry >> PAGE_SHIFT
                if frame_number in self.protected:
                    entries[i] = entry & ~_W
                self._rmap.setdefault(frame_number, set()).add((pdi << 10) | i)
        self.memory.write(shadow_table, b"".join(e.to_bytes(4, "little") for e in entries))
        self._tables[pdi] = shadow_table
        self.memory.write32(self.root + pdi * 4, shadow_table | _P | _W | _U)
        self._epoch += 1
        self.counters.shadow_syncs += 1

    def _read_physical(self, gpa: int, n: int) -> bytes:
        return self.memory.read(self.p2m.translate(gpa, False), n)

    # -- event delivery ---------------------------------------------------------------------
    def prepare_delivery(self, vector: int, cpl: int) -> None:
        """Fill what delivering ``vector`` touches (gate, TSS slot, stack) when the guest maps
        it, so the delivery faults only where it would natively; and when it would fault
        natively, what the CPU delivers next (#GP, #PF or #MC for an interrupt or ``int n``,
        then #DF), since the VMM delivers with interception off.

        Natively a delivery reads and writes through the TLB: a page the core's TLB holds is
        used as the TLB has it (possibly stale, as natively), and is left alone unless the VMM's
        own protection refuses the write; a page it does not hold is shadowed from the guest's
        tables as they are now (a page whose table lies beyond RAM as ``NOWHERE``, so the access
        is the #MC the native walk raises).

        Each delivery must see the guest's IDT, TSS, stack and page tables as they are now (the
        guest may change any of them with no exit to say so), so what it reads of them is read
        again every time.  When the last delivery found every entry it needed already shadowed,
        it is remembered (``_ready``): the registers it started from, the shadow's epoch, the
        guest words it read (page-directory and page-table entries, the gate, the TSS slot) and
        what the TLB held of the pages it looked at.  A delivery from the same registers, with
        the shadow unchanged since (any fill, drop, flush, ``invlpg``, cr0/cr3 write or
        write-protection change bumps the epoch), those words unchanged and the TLB holding the
        same, would walk the same tables to the same entries and change nothing, so it stops
        there: a timer tick reads a few words instead of walking the tables again.
        """
        s = self.cpu.state
        esp = s.regs[4]
        key = (vector, cpl, s.idtr_base, s.idtr_limit, s.tr, self.cr0, self.cr3, self._epoch)
        ready = self._ready
        if ready is not None and ready[0] == key:
            _, words, stack, held = ready
            if stack is None or stack == _stack_pages(esp):
                data = self.memory.data
                tlb = self.cpu.mmu.tlb
                if all(tlb.get(vpn) == entry for vpn, entry in held):
                    for at, value in words:
                        if data[at : at + 4] != value:
                            break
                    else:
                        return
        for _ in range(2):
            # A write prefill to a page the VMM protects lets the technique unprotect it, which
            # drops every shadow entry of that frame, perhaps one prefilled just before (a gate
            # on the same frame as the stack): then everything is prepared once more.
            unprotected = self._unprotected
            words_read: list[tuple[int, bytes]] = []
            seen: list[tuple[int, tuple[int, int] | None]] = []
            how = self._prepare(vector, cpl, esp, words_read, seen)
            if how == _FAULTED:  # natively the CPU goes on to deliver the fault, then #DF
                # Least needed first, the event's own pages last: a prefill that finds no free
                # shadow table flushes the shadow, which must drop only what is needed less (a
                # #DF stack at a wild address once flushed the #GP gate prefilled just before).
                for then in (DF, MC, PF, GP):
                    self._prepare(then, cpl, esp, words_read, seen)
                self._prepare(vector, cpl, esp, words_read, seen)
            if self._unprotected == unprotected:
                break
        if self._epoch == key[-1] and how != _FAULTED:
            self._ready = (
                key,
                tuple(words_read),
                None if how == _SWITCHED else _stack_pages(esp),
                tuple(seen),
            )
        else:
            self._ready = None

    def _prepare(
        self,
        vector: int,
        cpl: int,
        esp: int,
        words: list[tuple[int, bytes]],
        seen: list[tuple[int, tuple[int, int] | None]],
    ) -> int:
        """``prepare_delivery``'s work for one vector (``Cpu.deliver``'s reads and writes), recording
        in ``words`` each guest word it reads (host address, value) and in ``seen`` what the
        TLB held of each page it looked at; returns ``_SWITCHED`` if the stack came from the
        TSS, ``_FAULTED`` if the delivery may fault (natively the CPU then delivers the fault or
        #DF), else 0."""
        s = self.cpu.state
        if vector * 8 + 7 > s.idtr_limit:
            return _FAULTED
        gate_at = s.idtr_base + vector * 8
        if not self._prefill(gate_at, 8, False, words, seen):
            return _FAULTED
        attrs = self._read_guest32(gate_at + 4, words, seen)
        if attrs is None or not attrs & 0x8000:
            return _FAULTED
        ring = attrs & 3
        if ring > cpl:
            return _FAULTED
        switched = 0
        if ring < cpl:
            slot = s.tr + 4 + 8 * ring
            if not self._prefill(slot, 4, False, words, seen):
                return _FAULTED
            stack_top = self._read_guest32(slot, words, seen)
            if stack_top is None:
                return _FAULTED
            esp, switched = stack_top, _SWITCHED
        if not self._prefill(esp - _DELIVERY_FRAME, _DELIVERY_FRAME, True, words, seen):
            return _FAULTED
        if (attrs >> 13) & 3 < cpl:
            return _FAULTED  # as ``int n`` this gate is refused (#GP)
        return switched

    def _guest_lookup(self, vpn: int, words: list[tuple[int, bytes]] | None) -> tuple[int, int] | None:
        """The guest's mapping of page ``vpn`` now: (host frame address, U|W bits of both levels),
        or None where a table or the page is not present; a table beyond the guest's RAM raises
        #MC, as the native walk does.  The core MMU's two-level walk (``Mmu._walk``, the P2M as
        second stage), read straight from memory, without the walker's TLB; the entries it
        reads are appended to ``words`` (when a list)."""
        translate = self.p2m.translate
        if not self.cr0 & CR0_PG:
            return translate(vpn << PAGE_SHIFT, False) & _FRAME, _U | _W
        data, size = self.memory.data, self.memory.size
        at = translate((self.cr3 & _FRAME) | (vpn >> 10) << 2, False)
        if at + 4 > size:
            raise Fault(MC)
        raw = bytes(data[at : at + 4])
        if words is not None:
            words.append((at, raw))
        pde = int.from_bytes(raw, "little")
        if not pde & _P:
            return None
        at = translate((pde & _FRAME) | (vpn & 0x3FF) << 2, False)
        if at + 4 > size:
            raise Fault(MC)
        raw = bytes(data[at : at + 4])
        if words is not None:
            words.append((at, raw))
        pte = int.from_bytes(raw, "little")
        if not pte & _P:
            return None
        return translate(pte & _FRAME, False) & _FRAME, pde & pte & (_U | _W)

    def _guest_entry(self, vpn: int, words: list[tuple[int, bytes]]) -> tuple[int, int] | None:
        """The guest's mapping of page ``vpn`` for a supervisor read: (guest-physical frame
        address, U|W bits), or None where the walk faults (a page or table not present, or a
        table beyond the guest's RAM: #MC).  The P2M is applied to the tables, not the frame."""
        if not self.cr0 & CR0_PG:
            return vpn << PAGE_SHIFT, _U | _W
        try:
            found = self._guest_lookup(vpn, words)
        except Fault:
            return None
        if found is None:
            return None
        pte = int.from_bytes(words[-1][1], "little")
        return pte & _FRAME, found[1]

    def _delivery_entry(
        self,
        vpn: int,
        words: list[tuple[int, bytes]],
        seen: list[tuple[int, tuple[int, int] | None]],
    ) -> tuple[int, int, bool] | None:
        """What a delivery's access to page ``vpn`` goes through: (host frame, the guest's U|W,
        whether the core's TLB holds it), None where the guest does not map it; raises #MC
        where its walk would."""
        held = self.cpu.mmu.tlb.get(vpn)
        seen.append((vpn, held))
        if held is not None:
            spte = self._shadow_entry(vpn)
            if spte & _P:
                return spte & _FRAME, (spte >> _AVL) & (_U | _W), True
        found = self._guest_lookup(vpn, words)
        if found is None:
            return None
        return found[0], found[1], False

    def _read_guest32(
        self,
        linear: int,
        words: list[tuple[int, bytes]],
        seen: list[tuple[int, tuple[int, int] | None]],
    ) -> int | None:
        """A supervisor read of 4 bytes at ``linear`` as the delivery makes it (``_delivery_entry``),
        or None where it faults; the word itself (the 4 bytes from each host address it reads
        at) is appended to ``words``."""
        linear &= 0xFFFFFFFF
        first = min(4, PAGE_SIZE - (linear & 0xFFF))  # bytes in the first page
        pieces: list[tuple[int, int]] = []
        for start, n in ((linear, first), ((linear + first) & 0xFFFFFFFF, 4 - first)):
            if n:
                try:
                    entry = self._delivery_entry(start >> PAGE_SHIFT, words, seen)
                except Fault:
                    return None
                if entry is None:
                    return None
                pieces.append((entry[0] | (start & 0xFFF), n))
        size, data = self.memory.size, self.memory.data
        if any(at + n > size for at, n in pieces):
            return None  # #MC
        words.extend((at, bytes(data[at : at + 4])) for at, _ in pieces)
        return int.from_bytes(b"".join(data[at : at + n] for at, n in pieces), "little")

    def _prefill(
        self,
        linear: int,
        n: int,
        write: bool,
        words: list[tuple[int, bytes]],
        seen: list[tuple[int, tuple[int, int] | None]],
    ) -> bool:
        """Shadow the pages of a supervisor access of ``n`` bytes at ``linear`` the way the
        delivery needs them; False when the access faults natively (the guest does not map a
        page, refuses the write, or its walk is a #MC)."""
        ok = True
        for page in {(linear & 0xFFFFFFFF) >> PAGE_SHIFT, ((linear + n - 1) & 0xFFFFFFFF) >> PAGE_SHIFT}:
            try:
                entry = self._delivery_entry(page, words, seen)
            except Fault:  # the walk reads beyond RAM: natively #MC, here through NOWHERE
                self._install(page << PAGE_SHIFT, NOWHERE, _U | _W)
                ok = False
                continue
            if entry is None:
                ok = False
                continue
            frame, gperm, _ = entry
            if frame + PAGE_SIZE > self.memory.size:
                ok = False  # a frame beyond RAM: the access is a #MC
            spte = self._shadow_entry(page)
            shadowed = spte & _P and spte & _FRAME == frame and (spte >> _AVL) & (_U | _W) == gperm
            if write and self._refuses(gperm, True, False):
                ok = False  # natively the walk fills the TLB, then the write faults (P set)
                if not shadowed:
                    self._install(page << PAGE_SHIFT, frame, gperm)
                continue
            if shadowed and (not write or spte & _W or not self.cpu.state.cr0 & CR0_WP):
                continue  # the TLB's translation, or the shadow's, serves the delivery as it is
            self._settle(page << PAGE_SHIFT, frame, gperm, write, False)
        return ok

    def _install(self, linear: int, frame: int, gperm: int, perm: int | None = None) -> None:
        """Shadow ``linear`` -> ``frame`` with the guest's permissions ``gperm`` (kept in the
        entry's spare bits) and the real ones they give (``perm`` when the caller decides)."""
        pdi, pti = (linear >> 22) & 0x3FF, (linear >> 12) & 0x3FF
        table = self._tables.get(pdi)
        if table is None:
            if not self._free:
                self.flush()  # like a TLB: out of room, start again
            table = self._free.pop()
            self.memory.write(table, bytes(PAGE_SIZE))
            self._tables[pdi] = table
            self._epoch += 1
            self.memory.write32(self.root + pdi * 4, table | _P | _W | _U)
        real = self._real_perm(gperm) if perm is None else perm
        if frame >> PAGE_SHIFT in self.protected:
            real &= ~_W
        entry = frame | _P | real | gperm << _AVL
        if self.memory.read32(table + pti * 4) == entry:
            return  # already shadowed as it is (an event delivery prefills the same pages each time)
        self.memory.write32(table + pti * 4, entry)
        self._epoch += 1
        vpn = (linear >> PAGE_SHIFT) & 0xFFFFF
        self._rmap.setdefault(frame >> PAGE_SHIFT, set()).add(vpn)
        held = self.cpu.mmu.tlb.get(vpn)
        if held is not None and held[0] == frame:
            self._retag(vpn, entry)  # new permissions for what the TLB holds: it keeps the page
        else:
            self.cpu.invalidate_page(linear)
        self.counters.shadow_syncs += 1

    def _real_perm(self, perm: int) -> int:
        """bt runs with the real WP forced on (to catch writes to translated code); a guest with
        WP off may still write its supervisor pages, so those are shadowed writable."""
        if self.force_wp and not self.cr0 & CR0_WP and not perm & _U:
            return perm | _W
        return perm

    def _drop_wp_dependent(self) -> None:
        """The guest changed cr0.WP, which natively leaves the TLB alone.  Under ``force_wp`` the
        real permissions of some entries depend on the guest's WP (a supervisor read-only page
        is shadowed writable while WP is off, a user read-only page the kernel wrote
        supervisor-writable): drop those, and only those, from the shadow and the TLB."""
        for pdi, table in list(self._tables.items()):
            for pti, spte in enumerate(struct.unpack_from("<1024I", self.memory.data, table)):
                if spte & _P and not spte & _W << _AVL and (not spte & _U << _AVL or not spte & _U):
                    self._drop((pdi << 10) | pti)

    def flush(self) -> None:
        self._epoch += 1
        self.memory.write(self.root, bytes(PAGE_SIZE))
        self._free.extend(self._tables.values())
        self._tables.clear()
        self._rmap.clear()
        self.cpu.flush_tlb()
        self.counters.shadow_flushes += 1

    def invlpg(self, linear: int) -> None:
        self._drop((linear & 0xFFFFFFFF) >> PAGE_SHIFT)
        self.counters.shadow_invalidations += 1

    def _drop(self, vpn: int) -> None:
        self._epoch += 1
        table = self._tables.get(vpn >> 10)
        if table is not None:
            self.memory.write32(table + (vpn & 0x3FF) * 4, 0)
        self.cpu.invalidate_page(vpn << PAGE_SHIFT)

    # -- write protection of translated code (bt) -------------------------------------------
    def protect(self, frame_number: int) -> None:
        if frame_number in self.protected:
            return
        self.protected.add(frame_number)
        self._epoch += 1
        for vpn in self._rmap.get(frame_number, ()):
            table = self._tables.get(vpn >> 10)
            if table is not None:
                at = table + (vpn & 0x3FF) * 4
                spte = self.memory.read32(at) & ~_W
                self.memory.write32(at, spte)
                self._retag(vpn, spte)

    def _retag(self, vpn: int, spte: int) -> None:
        """The core's TLB entry for ``vpn``, if it holds one, takes the permissions of the
        shadow entry ``spte`` where it stands (the shadow's root entries allow everything, so
        the entry's own bits are the walk's)."""
        self.cpu.mmu.retag(vpn << PAGE_SHIFT, spte & (_U | _W | GUEST_PERMS))

    def unprotect(self, frame_number: int) -> None:
        """Let writes to the page through again: each shadow entry of it gets back the real W its
        guest permissions give, where it stands, and so does the core's TLB entry, its place in
        the replacement order kept (``protect``'s inverse).  Dropping the entries instead would
        drop the TLB's too, which the guest's TLB would still hold: a later access would then
        walk the guest's tables as they are now, not use the stale translation native uses."""
        self.protected.discard(frame_number)
        self._epoch += 1
        for vpn in self._rmap.get(frame_number, ()):
            table = self._tables.get(vpn >> 10)
            if table is None:
                continue
            at = table + (vpn & 0x3FF) * 4
            spte = self.memory.read32(at)
            if not spte & _P or spte & _W or (spte & _FRAME) >> PAGE_SHIFT != frame_number:
                continue
            gperm = (spte >> _AVL) & (_U | _W)
            special = gperm & _U and not spte & _U  # ``_settle``'s kernel-writable user page
            if special or self._real_perm(gperm) & _W:
                self.memory.write32(at, spte | _W)
                self._retag(vpn, spte | _W)
