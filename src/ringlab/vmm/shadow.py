"""Shadow page tables, virtual-TLB style.

The guest's cr0 and cr3 are virtual; the real cr3 points at a shadow page directory in VMM
memory above the guest's RAM, and the real cr0 always has PG (a guest with paging off runs on
an identity shadow).  The shadow starts empty and is filled one entry at a time on *hidden*
page faults: the VMM walks the guest's own tables (with the core's MMU on a view of the virtual
cr0/cr3, and the P2M as second stage, so the walk, its permission rules and its error codes are
the hardware's), copies the guest's entry if there is one, and resumes; otherwise the fault
was the guest's and is reflected with the guest's error code.

That is exact under docs/machine.md's TLB rule: a changed PTE takes effect only after ``invlpg`` or a
cr3 write, and both are intercepted and drop shadow entries, so the shadow never holds a
translation the guest's TLB could not.

Binary translation also uses the shadow to write-protect pages that hold translated code
(``protect``): a write to one is a hidden fault that drops the page's translations.
"""

from __future__ import annotations

from collections.abc import Callable

from ringlab.machine.cpu import Cpu
from ringlab.machine.exits import Raised
from ringlab.machine.faults import PF, Fault
from ringlab.machine.memory import PAGE_SHIFT, PAGE_SIZE
from ringlab.machine.mmu import Mmu
from ringlab.machine.p2m import P2M
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
        self._ready: tuple[tuple[int, ...], tuple[tuple[int, bytes], ...], tuple[int, int] | None] | None = (
            None
        )
        """The last delivery that found everything in place: (its registers and the epoch, the
        guest words it read and their values, the stack pages without a stack switch)."""
        self._last_fault: tuple[int, int, int] | None = None
        self._repeats = 0
        self._view = CpuState()
        self._walker = Mmu(self.memory, self._view, Stats())
        self._walker.second_stage = p2m
        self.p2m = p2m
        self.memory.write(self.root, bytes(PAGE_SIZE))
        cpu.state.cr3 = self.root
        cpu.state.cr0 = self._real_cr0()
        cpu.flush_tlb()

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
            if (old ^ self.cr0) & (CR0_PG | CR0_WP):
                self.flush()  # shadow permissions depend on WP too (see _real_perm, fill)
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
        linear = exit.cr2 or 0
        code = exit.error_code or 0
        key = (linear >> PAGE_SHIFT, code, self.cpu.stats.retired)
        self._repeats = self._repeats + 1 if key == self._last_fault else 0
        self._last_fault = key
        try:
            self.fill(linear, bool(code & _W), bool(code & _U))
        except Fault as fault:
            return fault
        if self._repeats > 8:
            # A safety net: a hidden fault that repeats without progress would loop forever;
            # give the guest its fault instead.
            return Fault(PF, code, linear)
        return None

    def fill(self, linear: int, write: bool, user: bool) -> None:
        frame, perm = self.walk(linear, write, user)
        if write and frame >> PAGE_SHIFT in self.protected and self.on_protected_write is not None:
            self.on_protected_write(frame >> PAGE_SHIFT)
        if (linear >> 22) & 0x3FF not in self._tables:
            self._prefetch((linear >> 22) & 0x3FF)
        if write and not user and self.force_wp and not self.cr0 & CR0_WP and perm & _U and not perm & _W:
            # The guest kernel (WP off) writes a read-only user page, which the real WP would
            # refuse.  Shadow it supervisor-only and writable until the next user access, whose
            # hidden fault shadows it user read-only again: one entry cannot say both.
            perm = _W
        self._install(linear, frame, perm)

    def _prefetch(self, pdi: int) -> None:
        """Fill a fresh shadow page table with every present entry of the guest's (the whole
        identity region when the guest's paging is off), in one hidden fault instead of one
        per page: what shadow-paging VMMs do when they first shadow a guest page table.  Only
        present entries are copied, so the TLB rule still holds (a not-present entry is never
        cached, natively or here)."""
        base = pdi << 22
        entries = [0] * 1024
        if not self.cr0 & CR0_PG:
            for i in range(1024):
                entries[i] = self.p2m.translate(base + (i << PAGE_SHIFT), False) | _P | _U | _W
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
                    entries[i] = frame | _P | self._real_perm(pde & pte & (_U | _W))
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

    def prepare_delivery(self, vector: int, cpl: int) -> None:
        """Fill what delivering ``vector`` touches (gate, TSS slot, stack) when the guest maps
        it, so the delivery faults only where it would natively.

        Each delivery must see the guest's IDT, TSS, stack and page tables as they are now (the
        guest may change any of them with no exit to say so), so what it reads of them is read
        again every time.  When the last delivery found every entry it needed already shadowed,
        it is remembered (``_ready``): the registers it started from, the shadow's epoch, and
        the guest words it read (page-directory and page-table entries, the gate, the TSS slot).
        A delivery from the same registers, with the shadow unchanged since (any fill, drop,
        flush, ``invlpg``, cr0/cr3 write or write-protection change bumps the epoch) and those
        words unchanged, would walk the same tables to the same entries and change nothing, so
        it stops there: a timer tick reads a few words instead of walking the tables again.
        """
        s = self.cpu.state
        esp = s.regs[4]
        key = (vector, cpl, s.idtr_base, s.tr, self.cr0, self.cr3, self._epoch)
        ready = self._ready
        if ready is not None and ready[0] == key:
            _, words, stack = ready
            if stack is None or stack == _stack_pages(esp):
                data = self.memory.data
                for at, value in words:
                    if data[at : at + 4] != value:
                        break
                else:
                    return
        words_read: list[tuple[int, bytes]] = []
        how = self._prepare(vector, cpl, esp, words_read)
        if self._epoch == key[-1] and how != _FAULTED:
            self._ready = (key, tuple(words_read), None if how == _SWITCHED else _stack_pages(esp))
        else:
            self._ready = None

    def _prepare(self, vector: int, cpl: int, esp: int, words: list[tuple[int, bytes]]) -> int:
        """``prepare_delivery``'s work, recording in ``words`` each guest word it reads (host
        address, value); returns ``_SWITCHED`` if the stack came from the TSS, ``_FAULTED`` if a
        read faulted (the delivery will fault there too), else 0."""
        s = self.cpu.state
        gate_at = s.idtr_base + vector * 8
        self._prefill(gate_at, 8, False, words)
        attrs = self._read_guest32(gate_at + 4, words)
        if attrs is None:
            return _FAULTED
        ring = attrs & 3
        switched = 0
        if ring < cpl:
            slot = s.tr + 4 + 8 * ring
            self._prefill(slot, 4, False, words)
            stack_top = self._read_guest32(slot, words)
            if stack_top is None:
                return _FAULTED
            esp, switched = stack_top, _SWITCHED
        self._prefill(esp - _DELIVERY_FRAME, _DELIVERY_FRAME, True, words)
        return switched

    def _guest_entry(self, vpn: int, words: list[tuple[int, bytes]]) -> tuple[int, int] | None:
        """The guest's mapping of page ``vpn`` for a supervisor read: (guest-physical frame
        address, U|W bits), or None where the walk faults (a page or table not present, or a
        table beyond the guest's RAM: #MC).  The core MMU's two-level walk (``Mmu._walk``, the
        P2M as second stage for the tables; the caller applies it to the frame, as ``walk``
        does), read straight from memory, without the walker's TLB and fault objects; the
        entries it reads are appended to ``words``."""
        translate = self.p2m.translate
        if not self.cr0 & CR0_PG:
            return vpn << PAGE_SHIFT, _U | _W
        data, size = self.memory.data, self.memory.size
        at = translate((self.cr3 & _FRAME) | (vpn >> 10) << 2, False)
        if at + 4 > size:
            return None
        raw = bytes(data[at : at + 4])
        words.append((at, raw))
        pde = int.from_bytes(raw, "little")
        if not pde & _P:
            return None
        at = translate((pde & _FRAME) | (vpn & 0x3FF) << 2, False)
        if at + 4 > size:
            return None
        raw = bytes(data[at : at + 4])
        words.append((at, raw))
        pte = int.from_bytes(raw, "little")
        if not pte & _P:
            return None
        return pte & _FRAME, pde & pte & (_U | _W)

    def _read_guest32(self, linear: int, words: list[tuple[int, bytes]]) -> int | None:
        """``read_guest(linear, 4)`` as a number, or None where it faults; the page-table
        entries it reads and the word itself (the 4 bytes from each host address it reads at)
        are appended to ``words``."""
        linear &= 0xFFFFFFFF
        first = min(4, PAGE_SIZE - (linear & 0xFFF))  # bytes in the first page
        pieces: list[tuple[int, int]] = []
        for start, n in ((linear, first), ((linear + first) & 0xFFFFFFFF, 4 - first)):
            if n:
                entry = self._guest_entry(start >> PAGE_SHIFT, words)
                if entry is None:
                    return None
                pieces.append((self.p2m.translate(entry[0] | (start & 0xFFF), False), n))
        size, data = self.memory.size, self.memory.data
        if any(at + n > size for at, n in pieces):
            return None  # #MC
        words.extend((at, bytes(data[at : at + 4])) for at, _ in pieces)
        return int.from_bytes(b"".join(data[at : at + n] for at, n in pieces), "little")

    def _prefill(self, linear: int, n: int, write: bool, words: list[tuple[int, bytes]]) -> None:
        for page in {(linear & 0xFFFFFFFF) >> PAGE_SHIFT, ((linear + n - 1) & 0xFFFFFFFF) >> PAGE_SHIFT}:
            entry = self._guest_entry(page, words)
            if entry is None:
                continue
            frame, perm = self.p2m.translate(entry[0], False) & _FRAME, entry[1]
            if write and frame >> PAGE_SHIFT in self.protected and self.on_protected_write is not None:
                self.on_protected_write(frame >> PAGE_SHIFT)
            self._install(page << PAGE_SHIFT, frame, perm)

    def _install(self, linear: int, frame: int, perm: int) -> None:
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
        perm = self._real_perm(perm)
        if frame >> PAGE_SHIFT in self.protected:
            perm &= ~_W
        entry = frame | _P | perm
        if self.memory.read32(table + pti * 4) == entry:
            return  # already shadowed as it is (an event delivery prefills the same pages each time)
        self.memory.write32(table + pti * 4, entry)
        self._epoch += 1
        self._rmap.setdefault(frame >> PAGE_SHIFT, set()).add((linear >> PAGE_SHIFT) & 0xFFFFF)
        self.cpu.invalidate_page(linear)
        self.counters.shadow_syncs += 1

    def _real_perm(self, perm: int) -> int:
        """bt runs with the real WP forced on (to catch writes to translated code); a guest with
        WP off may still write its supervisor pages, so those are shadowed writable."""
        if self.force_wp and not self.cr0 & CR0_WP and not perm & _U:
            return perm | _W
        return perm

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
                self.memory.write32(at, self.memory.read32(at) & ~_W)
            self.cpu.invalidate_page(vpn << PAGE_SHIFT)

    def unprotect(self, frame_number: int) -> None:
        """The page's translations are gone: let writes through again (entries refill writable)."""
        self.protected.discard(frame_number)
        self._epoch += 1
        for vpn in self._rmap.pop(frame_number, set()):
            self._drop(vpn)
