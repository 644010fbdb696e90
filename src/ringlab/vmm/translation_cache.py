"""Binary translation of guest kernel code, at the RL-32 level (docs/design.md).

A guest kernel block (straight-line code up to a control transfer, a callout or ``MAX_BLOCK``
instructions) is translated into a ``Block``: a tuple of ``Op``s, each the original instruction
tagged with how it runs in the translation:

* ``DIRECT``: innocuous code, copied as is (it runs unchanged at ring 1);
* ``INLINE``: a sensitive instruction rewritten into an operation on the virtual CPU state
  (``cli sti pushf popf sgdt sidt str smsw``, ``mov r, cs``): no exit;
* ``CALLOUT``: an instruction the translation replaces by a call into the VMM (port I/O, control
  registers, descriptor-table loads, ``invlpg``, ``iret``, ``int n``, ``hlt``);
* ``INDIRECT``: an indirect branch (``ret``, ``call r``, ``jmp r``).  Translated code cannot jump
  to a guest address, so it looks the target's translation up (VMware's translator: a hash table
  of translations, a few tens of cycles, Adams & Agesen 2006 section 6's call/ret); counted as
  ``indirect_lookups`` and never run by the core's compiled code, which would skip the lookup;
* ``ADAPTIVE``: an innocuous instruction that kept faulting on a traced page table (a page the
  shadow page tables mirror, write-protected so the VMM sees the guest change it), retranslated
  into a callout that makes the write in the VMM without the trap (``adapt``; Adams & Agesen 2006
  section 4.2, "adaptive binary translation").

Blocks live in a cache keyed by (virtual eip, host address of eip) and are chained to the blocks
that follow them.  The pages they were translated from are write-protected through the shadow
page tables; a write to one drops every block translated from it.  A page written again and
again (code sharing a page with the kernel's variables) would thrash that way, so after
``VOLATILE_AFTER`` invalidations it is left writable and its blocks become *self-checking*:
they keep a copy of their source bytes and are compared with memory before each use (VMware's
answer to the same problem, Adams & Agesen 2006, section 3.3 "adaptive binary translation").
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from ringlab.isa import MASK32, Class, Form, Instruction
from ringlab.machine.cpu import Cpu
from ringlab.machine.faults import Fault
from ringlab.machine.interpreter import HANDLERS
from ringlab.machine.memory import PAGE_SHIFT
from ringlab.machine.mmu import mode_index

__all__ = ["MAX_BLOCK", "Block", "Kind", "Op", "TranslationCache", "Untranslated", "kind_of"]

MAX_BLOCK = 32
VOLATILE_AFTER = 4
"""Invalidations of one page after which its translations stop relying on write protection."""


class Kind(enum.Enum):
    DIRECT = "direct"
    INLINE = "inline"
    CALLOUT = "callout"
    INDIRECT = "indirect"
    ADAPTIVE = "adaptive"


_INLINE = frozenset({"cli", "sti", "pushf", "popf", "sgdt", "sidt", "str", "smsw"})
_ENDS_BLOCK = frozenset({"jmp", "call", "ret", "int", "iret", "hlt"})


def kind_of(insn: Instruction, adapted: Collection[int] = (), eip: int = -1) -> Kind:
    """How the translator handles an instruction (the table docs/techniques.md shows); an
    innocuous one at an ``adapted`` address (``TranslationCache.adapt``) is ``ADAPTIVE``."""
    spec = insn.spec
    if spec.mnemonic in _INLINE or spec.form is Form.RCS:
        return Kind.INLINE
    if spec.cls in (Class.PRIVILEGED, Class.IOPL, Class.CONTROL):
        return Kind.CALLOUT
    if spec.mnemonic == "ret" or (spec.mnemonic in ("jmp", "call") and spec.form is Form.R):
        return Kind.INDIRECT
    if eip in adapted:
        return Kind.ADAPTIVE
    return Kind.DIRECT


@dataclass(frozen=True)
class Op:
    kind: Kind
    insn: Instruction
    eip: int
    nxt: int
    handler: Callable[..., Any]


@dataclass(eq=False)
class Block:
    eip: int
    ops: tuple[Op, ...]
    frames: frozenset[int]
    pa: int = -1
    """Host address of ``eip`` when translated (-1: not cached)."""
    entry: int = -1
    """``pa`` while the core may enter this block straight from a chained predecessor (valid,
    cached, all DIRECT); -1 otherwise.  One compare in ``TranslationCache.follow``."""
    valid: bool = True
    links: dict[int, Block] = field(default_factory=dict)
    epoch: int = 0
    source: tuple[int, bytes] | None = None
    """Self-checking blocks (from a volatile page): host address and the bytes translated."""
    direct_runs: tuple[int, ...] = field(init=False)
    """For each op, how many DIRECT ops start there in a row (0 for the others)."""
    tails: tuple[bool, ...] = field(init=False)
    """For each op, whether it and every op after it are DIRECT and the last is a branch
    (``jmp``, ``jcc``, ``call``, ``ret``): from there the block runs on the core's compiled
    code, which stops at that branch (or loops on it) and never runs past it into anything
    else; the core may then go on into the blocks it is chained to (``TranslationCache.follow``)."""
    all_direct: bool = field(init=False)
    """``tails[0]``: the whole block is innocuous and ends in a branch."""
    index: dict[int, int] = field(init=False)
    """eip -> position of its op."""

    def __post_init__(self) -> None:
        n = len(self.ops)
        runs = [0] * n
        for i in range(n - 1, -1, -1):
            if self.ops[i].kind is Kind.DIRECT:
                runs[i] = 1 + (runs[i + 1] if i + 1 < n else 0)
        self.direct_runs = tuple(runs)
        branch = bool(n) and _is_branch(self.ops[-1].insn.mnemonic)
        self.tails = tuple(branch and runs[i] == n - i for i in range(n))
        self.all_direct = bool(n) and self.tails[0]
        self.index = {op.eip: i for i, op in enumerate(self.ops)}

    def drop(self) -> None:
        """The code it came from changed: never run it again."""
        self.valid = False
        self.entry = -1


def _is_branch(mnemonic: str) -> bool:
    return mnemonic in ("jmp", "call", "ret") or mnemonic.startswith("j")


class Untranslated(Exception):
    """A cache that cannot translate (a pCPU's: the VMM translates) has no block at ``eip``."""

    def __init__(self, eip: int) -> None:
        super().__init__(f"no translation at {eip:#x}")
        self.eip = eip


class TranslationCache:
    def __init__(self, cpu: Cpu, protect: Callable[[int], None] | None) -> None:
        """``protect`` write-protects a frame translations came from (the VMM's shadow page
        tables); None for a pCPU's cache, which only runs what the VMM installs."""
        self.cpu = cpu
        self._data = cpu.memory.data
        self._protect = protect
        self.fresh: list[Block] | None = None
        """When a list (the hypervisor's cache of a remote VM): blocks to install in the pCPU."""
        self.forgotten: list[tuple[int, int]] | None = None
        """When a list: keys of blocks to drop from the other side's cache."""
        self._blocks: dict[tuple[int, int], Block] = {}
        self._by_frame: dict[int, list[Block]] = {}
        self.translations = 0
        self.translated_instructions = 0
        self.hits = 0
        self.chained = 0
        self.invalidations = 0
        self.self_checks = 0
        self._written: dict[int, int] = {}
        self.volatile: set[int] = set()
        """Host frames whose translations are self-checking instead of write-protected."""
        self.adapted: set[int] = set()
        """Guest addresses of instructions translated as ``ADAPTIVE`` callouts (``adapt``)."""
        self.newly_adapted: list[int] | None = None
        """When a list (``track``): addresses adapted since the other side last learnt them."""
        self.current = Block(0, (), frozenset())
        """The block the core is running for the VMM (``follow`` moves it along its links)."""

    def lookup(self, eip: int, previous: Block | None, epoch: int) -> Block:
        """The block at ``eip``: by the previous block's chain link, the cache, or a fresh
        translation.  Raises ``Fault`` if the first instruction cannot be fetched."""
        if previous is not None and previous.epoch == epoch:
            linked = previous.links.get(eip)
            if linked is not None and linked.valid and self._unchanged(linked):
                self.chained += 1
                if linked.epoch != epoch:
                    linked.links.clear()
                    linked.epoch = epoch
                return linked
        key = (eip, self._host(eip))
        block = self._blocks.get(key)
        if block is not None and block.valid and self._unchanged(block):
            self.hits += 1
        else:
            if self._protect is None:
                raise Untranslated(eip)
            block = self._translate(eip)
            block.pa = key[1]
            if block.all_direct:
                block.entry = block.pa
            self._blocks[key] = block
        if block.epoch != epoch:  # its links were made under other page tables
            block.links.clear()
            block.epoch = epoch
        if previous is not None:
            if previous.epoch != epoch:
                previous.links.clear()
                previous.epoch = epoch
            previous.links[eip] = block
        return block

    def _host(self, eip: int) -> int:
        """The host address of the code at ``eip`` (a supervisor fetch): from the MMU's cache
        of supervisor reads when it holds the page (what a walk would give), else by a walk,
        which raises the fetch's ``Fault``."""
        mmu = self.cpu.mmu
        off = mmu.read_cache[mode_index(False, self.cpu.state.cr0)].get(eip >> PAGE_SHIFT)
        return eip + off if off is not None else mmu.translate(eip, False, False)

    def follow(self, eip: int, pa: int) -> bool:
        """``Cpu.run_straight``'s hook: the core ran ``current`` (all DIRECT: its own
        translation) to its end and is at ``eip`` (host ``pa``); it may go on if ``current`` is
        chained to a valid all-DIRECT block translated from that very code (a self-checking one
        is compared with memory first, as before every use).  The link is followed as
        ``lookup`` follows one (``chained`` counts it), without the VMM's dispatch loop.  No
        page-table change can happen inside such a run, so ``current``'s links are current."""
        current = self.current
        linked = current.links.get(eip)
        if linked is None or linked.entry != pa:  # valid, all DIRECT, for this very code
            return False
        source = linked.source
        if source is not None:  # _unchanged, inline: this is the core's inner loop
            self.self_checks += 1
            if not self._data.startswith(source[1], source[0]):
                self._drop(linked)
                return False
        self.chained += 1
        epoch = current.epoch
        if linked.epoch != epoch:
            linked.links.clear()
            linked.epoch = epoch
        self.current = linked
        return True

    def unchanged(self, block: Block) -> bool:
        """True if ``block`` still matches the code it was translated from: always for a
        write-protected block (a write drops it); a self-checking one is compared with memory,
        and dropped (counted as an invalidation) if it differs."""
        return self._unchanged(block)

    def _unchanged(self, block: Block) -> bool:
        if block.source is None:
            return True
        self.self_checks += 1
        pa, data = block.source
        if self._data.startswith(data, pa):
            return True
        self._drop(block)
        return False

    def _drop(self, block: Block) -> None:
        block.drop()
        self.invalidations += 1
        if self.forgotten is not None and block.pa >= 0:
            self.forgotten.append((block.eip, block.pa))

    def holds_code(self, frame: int) -> bool:
        """Whether translations of ours came from host frame ``frame`` (it is write-protected
        for them, or self-checking)."""
        return frame in self.volatile or any(b.valid for b in self._by_frame.get(frame, ()))

    def adapt(self, eip: int) -> None:
        """The instruction at ``eip`` keeps faulting on traced page tables: from now on it
        translates to an ``ADAPTIVE`` callout.  Every block holding it is dropped, so it is
        translated again (on the other side of a world switch too, ``forgotten``)."""
        if eip in self.adapted:
            return
        self.adapted.add(eip)
        if self.newly_adapted is not None:
            self.newly_adapted.append(eip)
        for key, block in [(k, b) for k, b in self._blocks.items() if eip in b.index]:
            if block.valid:
                self._drop(block)
            del self._blocks[key]

    def single(self, eip: int) -> Block:
        """One instruction, translated but neither cached nor write-protected: how the VMM
        steps over a write into the very page being translated (self-modifying code, or code
        sharing a page with data) without protecting it again before the write happens."""
        return self._translate(eip, limit=1, keep=False)

    def _translate(self, start: int, *, limit: int = MAX_BLOCK, keep: bool = True) -> Block:
        mmu = self.cpu.mmu
        ops: list[Op] = []
        frames: set[int] = set()
        eip = start
        start_pa = mmu.translate(start, False, False)
        volatile = start_pa >> PAGE_SHIFT in self.volatile
        while len(ops) < limit:
            try:
                insn = mmu.fetch(eip, False)
                first = mmu.translate(eip, False, False) >> PAGE_SHIFT
                last = mmu.translate((eip + insn.length - 1) & MASK32, False, False) >> PAGE_SHIFT
            except Fault:
                if not ops:
                    raise
                break  # the block ends before an instruction that cannot be fetched
            if ops and last != start_pa >> PAGE_SHIFT and (volatile or last in self.volatile):
                break  # a self-checking block stays in its page: one compare covers it
            kind = kind_of(insn, self.adapted, eip)
            nxt = (eip + insn.length) & MASK32
            ops.append(Op(kind, insn, eip, nxt, HANDLERS[insn.spec.opcode]))
            frames.update((first, last))
            eip = nxt
            if kind is Kind.CALLOUT or insn.mnemonic in _ENDS_BLOCK or insn.mnemonic.startswith("j"):
                break
        block = Block(start, tuple(ops), frozenset(frames))
        if not keep:
            return block
        if volatile:
            size = (eip - start) & MASK32
            block.source = (start_pa, bytes(self.cpu.memory.data[start_pa : start_pa + size]))
            frames = frames - self.volatile
        assert self._protect is not None
        for frame in frames:
            self._by_frame.setdefault(frame, []).append(block)
            self._protect(frame)
        self.translations += 1
        self.translated_instructions += len(ops)
        return block

    def invalidate_frame(self, frame: int) -> None:
        """The guest wrote a page translated code came from: drop its blocks."""
        self._written[frame] = self._written.get(frame, 0) + 1
        if self._written[frame] >= VOLATILE_AFTER:
            self.volatile.add(frame)
        for block in self._by_frame.pop(frame, []):
            if block.valid:
                self._drop(block)
        for key in [k for k, b in self._blocks.items() if not b.valid]:
            del self._blocks[key]

    # -- the two sides of a world switch (ringlab.vmm.translated) ---------------------------------
    def track(self) -> None:
        """Keep what the other side's cache must learn: blocks translated, blocks dropped,
        instructions adapted."""
        self.fresh, self.forgotten, self.newly_adapted = [], [], []

    def take_adapted(self) -> list[int]:
        adapted = self.newly_adapted or []
        if self.newly_adapted is not None:
            self.newly_adapted = []
        return adapted

    def take(self) -> tuple[list[Block], list[tuple[int, int]]]:
        fresh, forgotten = self.fresh or [], self.forgotten or []
        if self.fresh is not None:
            self.fresh, self.forgotten = [], []
        return fresh, forgotten

    def take_dropped(self) -> list[tuple[int, int]]:
        forgotten = self.forgotten or []
        self.forgotten = []
        return forgotten

    def translate_for_peer(self, eip: int, epoch: int) -> Block:
        """The other side has no block at ``eip``: find or make one, and queue it for it.
        Raises ``Fault`` if the code cannot be fetched."""
        block = self.lookup(eip, None, epoch)
        if self.fresh is not None and block not in self.fresh:
            self.fresh.append(block)
        return block

    def install(self, eip: int, pa: int, count: int, source: tuple[int, bytes] | None) -> None:
        """A block the VMM translated: rebuilt from the same code, neither protected nor counted."""
        block = self._translate(eip, limit=count, keep=False)
        block.pa, block.source = pa, source
        if block.all_direct:
            block.entry = pa
        self._blocks[(eip, pa)] = block

    def forget(self, key: tuple[int, int]) -> None:
        """The other side dropped this block (its code changed): never run it again here."""
        block = self._blocks.pop(key, None)
        if block is not None:
            block.drop()
