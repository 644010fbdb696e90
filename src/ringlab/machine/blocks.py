"""The block compiler: guest basic blocks as Python functions, cached as ``CompiledBlocks``.

This is the simulated hardware's speed, not binary translation as a virtualization technique
(that one lives in the hypervisor and translates RL-32 to RL-32).  It must be exactly
equivalent to the interpreter, and it is built so that it never has to reproduce a fault:

* A block is straight-line code from one address to the first branch (included), within one
  page, made only of innocuous instructions whose effects are registers, flags and memory.
  Anything else (privileged, IOPL-sensitive, sensitive, ``int``, ``iret``, ``rdtsc``,
  ``cpuid``, I/O, an intercepted mnemonic, undefined bytes) ends the block before it and runs
  in the interpreter.
* Memory goes through the MMU's fast caches (per access mode: virtual page -> physical offset).
  A miss, a page-crossing access or a zero divisor is a *side exit*: the block writes its state
  back as it was before that instruction and asks the dispatcher to run exactly that
  instruction in the interpreter, which fills the cache, or raises the fault precisely.
* Registers live in Python locals.  Flags are lazy: a flag-writing instruction records how to
  compute its flags (its operands, or expressions still valid later), and only exits and the
  final ``jcc`` compute them, by calling the interpreter's own ``flags_*`` functions.  A
  ``cmp``/``test``/``sub``/``and``... followed by ``jcc`` becomes one Python comparison.
* A block whose branch goes back to its own start runs as a ``while`` loop inside the function,
  checking once per iteration that a whole iteration fits before the deadline (the budget's
  end or the next timer tick), so budgets and ticks stay exact to the instruction.
* Pages holding compiled code never enter the write caches: every write to them takes the slow
  path, and ``Memory`` reports it here, so the blocks it overlaps are dropped.

The cache key is (virtual eip, physical address): the code is the same in every mode because
the caches it is handed are the mode's (CPL, WP, PG), and eip values are virtual.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ringlab.isa import BY_OPCODE, FORMS, JCC, REGISTERS, Form, Instruction, Mem, decode
from ringlab.machine import flags as F
from ringlab.machine.exits import Budget, Exit
from ringlab.machine.faults import Fault
from ringlab.machine.memory import PAGE_SHIFT, PAGE_SIZE
from ringlab.machine.mmu import mode_index

if TYPE_CHECKING:
    from ringlab.machine.cpu import Cpu

__all__ = ["Block", "CompiledBlocks", "compile_block"]

M = 0xFFFFFFFF
MAX_BLOCK = 64
"""Instructions per block at most (long straight-line code is split)."""
HOT = 32
"""A block is compiled on its 32nd execution: compiling costs about as much as interpreting
a short block 50 times, so code that runs a few dozen times (a handler per timer tick in a
short run) stays interpreted."""

BlockFn = Callable[..., int]
"""A compiled block: ``fn(S, R, D, M32, rc, wc, t, lim, W)`` runs from ``S.eip`` with the time
counter ``t`` (``S.tsc``) and the deadline ``lim``.  It returns the time counter after the
instructions it retired, or, for a *side exit*, that counter bitwise-inverted, ``~t``, which is
always negative: one int says both how far time went and that the next instruction is the
interpreter's (``if t2 < 0: t2 = ~t2`` in the dispatchers; no tuple on the hot path)."""

_ALU = ("add", "sub", "and", "or", "xor", "cmp", "test")
_ALU_FORMS = frozenset({Form.RR, Form.RI, Form.RM, Form.MR, Form.MI})
_COMPILABLE: dict[str, frozenset[Form] | None] = {
    # mnemonic -> forms the compiler handles (None = all of the mnemonic's forms)
    "mov": frozenset({Form.RR, Form.RI, Form.RM, Form.MR, Form.MI, Form.M8R}),
    "movzx": None,
    "lea": None,
    "xchg": None,
    "push": None,
    "pop": None,
    **dict.fromkeys(_ALU, _ALU_FORMS),
    "imul": None,
    "div": None,
    "inc": None,
    "dec": None,
    "neg": None,
    "not": None,
    "shl": None,
    "shr": None,
    "sar": None,
    "jmp": None,
    "call": None,
    "ret": None,
    **{"j" + cc: None for cc in set(JCC.values())},
    "nop": None,
}
_ENDS_BLOCK = frozenset({"jmp", "call", "ret", *("j" + cc for cc in set(JCC.values()))})
"""The control transfers: a block ends with (and includes) the first of them."""
_LITTLE = sys.byteorder == "little"

# The runtime names the generated code sees (its globals).
_GLOBALS: dict[str, Any] = {
    "_add": F.flags_add,
    "_sub": F.flags_sub,
    "_logic": F.flags_logic,
    "_inc": F.flags_inc,
    "_dec": F.flags_dec,
    "_neg": F.flags_neg,
    "_imul": F.flags_imul,
    "_shl": F.flags_shl,
    "_shr": F.flags_shr,
    "_sar": F.flags_sar,
    "_cond": F.CONDITIONS,
    "_ifb": int.from_bytes,
}

_ALL_ARITH = F.ARITH
_WRITER_BITS = {
    "add": _ALL_ARITH,
    "sub": _ALL_ARITH,
    "logic": _ALL_ARITH,
    "neg": _ALL_ARITH,
    "inc": F.ZF | F.SF | F.OF,
    "dec": F.ZF | F.SF | F.OF,
    "imul": F.CF | F.OF,
}


@dataclass
class _Writer:
    """How to compute the flags one instruction wrote, lazily."""

    kind: str
    bits: int
    before: list[str]
    """Operand expressions, valid just before the instruction (what a save stores)."""
    after: list[tuple[str, frozenset[str]] | None]
    """Equivalent expressions valid right after it and the registers they read, or None."""
    extra: tuple[int, ...] = ()
    """Constant trailing arguments (a shift count)."""


@dataclass
class _Plan:
    """What the compiler knows about one instruction before emitting it."""

    veip: int
    ins: Instruction
    writes: frozenset[str]
    writer: _Writer | None = None
    eager: bool = False
    """Shift by ecx: its flags depend on a runtime count, so it materialises them in place."""


@dataclass
class Block:
    """One compiled block (``fn`` None: the first instruction needs the interpreter)."""

    key: int
    veip: int
    start: int
    """Physical address of its first byte."""
    end: int
    """Physical address after its last byte."""
    fn: BlockFn | None
    length: int = 0
    loops: bool = False
    source: str = ""


@dataclass
class CompiledBlocks:
    """Compiled blocks by (virtual eip, physical address), and the dispatcher that runs them."""

    cpu: Cpu
    blocks: dict[int, Block] = field(default_factory=dict)
    by_page: dict[int, set[int]] = field(default_factory=dict)
    heat: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        memory = self.cpu.memory
        memory.on_code_write = self.code_written
        self._m32 = memoryview(memory.data)[: memory.size & ~3].cast("I") if _LITTLE else None

    def clear(self) -> None:
        self.blocks.clear()
        self.by_page.clear()
        self.heat.clear()
        self.cpu.memory.code_pages.clear()

    # -- invalidation ------------------------------------------------------------------------
    def code_written(self, pa: int, n: int) -> None:
        """A write touched a code page: drop every block whose bytes it overlaps."""
        stats = self.cpu.stats
        for page in range(pa >> PAGE_SHIFT, ((pa + n - 1) >> PAGE_SHIFT) + 1):
            keys = self.by_page.get(page)
            if not keys:
                continue
            for key in [k for k in keys if self.blocks[k].start < pa + n and pa < self.blocks[k].end]:
                del self.blocks[key]
                keys.discard(key)
                stats.block_invalidations += 1
            if not keys:
                del self.by_page[page]
                self.cpu.memory.code_pages.discard(page)

    def write_probe(self, linear: int, n: int) -> int:
        """For compiled code whose write cache missed: the physical address of an ``n``-byte
        write at ``linear`` when it is allowed, stays in one page and overlaps no compiled
        code (the page is marked dirty); -1 otherwise, and the block side-exits so the
        interpreter makes the write (raising the fault, or dropping the blocks it overlaps).

        A write that faults is the interpreter's to make, translation included: when the probe's
        translation left the page out of the TLB (not present, or a permission fault that drops
        the entry), the interpreter walks again, so the probe's walk is not counted - the
        interpreter alone makes one walk there, and the walks (``Stats.tlb_misses``, priced in
        the simulated cycles) must not depend on whether the code was hot enough to be compiled
        (a pCPU that reloads a VM starts with none compiled).  The probe's walk changed nothing
        else the interpreter's would not (a fill it made is dropped again, or is the one the
        interpreter then hits)."""
        if (linear & 0xFFF) + n > PAGE_SIZE:
            return -1
        cpu = self.cpu
        mmu = cpu.mmu
        stats = cpu.stats
        misses, references = stats.tlb_misses, stats.walk_references
        try:
            pa = mmu.translate(linear, True, cpu.state.cs & 3 == 3)
        except Fault:
            if (linear & M) >> PAGE_SHIFT not in mmu.tlb:
                stats.tlb_misses, stats.walk_references = misses, references
            return -1
        memory = cpu.memory
        if pa + n > memory.size:
            return -1
        page = pa >> PAGE_SHIFT
        keys = self.by_page.get(page)
        if keys:
            blocks = self.blocks
            if any(blocks[k].start < pa + n and pa < blocks[k].end for k in keys):
                return -1
        memory.mark_dirty(page)
        return pa

    def _install(self, block: Block) -> None:
        self.blocks[block.key] = block
        page = block.start >> PAGE_SHIFT
        keys = self.by_page.setdefault(page, set())
        keys.add(block.key)
        memory = self.cpu.memory
        if page not in memory.code_pages:
            memory.code_pages.add(page)
            self.cpu.mmu.forget_code_page(page)

    # -- the dispatcher ------------------------------------------------------------------------
    def run(self, end: int) -> Exit:
        """``Cpu.run`` with compiled blocks: same contract as ``Cpu.interpret``."""
        cpu = self.cpu
        s = cpu.state
        stats = cpu.stats
        mmu = cpu.mmu
        data = cpu.memory.data
        m32 = self._m32
        blocks = self.blocks
        probe = self.write_probe
        rbr, by_real_ring = stats.retired_by_ring, stats.retired_by_real_ring
        ring_1 = stats.ring_1_counts_as  # (only a VMM changes it, never the code run here)
        step_next = False
        while True:
            retired = stats.retired
            if retired >= end:
                return Budget()
            if s.timer_pending and s.eflags & F.IF:
                exit: Exit | None = cpu.take_timer()
                if exit is not None:
                    return exit
                continue
            if not step_next:
                eip = s.eip
                cpl = s.cs & 3
                mode = mode_index(cpl == 3, s.cr0)
                rc = mmu.read_cache[mode]
                off = rc.get(eip >> PAGE_SHIFT)
                if off is not None:
                    pa = eip + off
                    key = (eip << 32) | pa
                    block = blocks.get(key)
                    if block is None:
                        block = self._lookup(key, eip, pa)
                    if block is not None and block.fn is not None:
                        t = s.tsc
                        limit = t + end - retired
                        if s.timer_period and s.timer_next < limit:
                            limit = s.timer_next
                        t2 = block.fn(s, s.regs, data, m32, rc, mmu.write_cache[mode], t, limit, probe)
                        if t2 < 0:  # a side exit (``BlockFn``): the interpreter runs the next one
                            t2 = ~t2
                            step_next = True
                        done = t2 - t
                        if done:
                            stats.block_cache_hits += 1
                            s.tsc = t2
                            stats.retired = retired + done
                            by_real_ring[cpl] += done
                            rbr[ring_1 if cpl == 1 else cpl] += done
                            if s.timer_period and t2 >= s.timer_next:
                                cpu.tick()
                        continue
            step_next = False
            exit = cpu.step()
            if exit is not None:
                return exit

    def run_straight(self, count: int, follow: Callable[[int, int], bool] | None = None) -> int:
        """Run at most ``count`` instructions from ``eip`` as compiled code, when the block
        there is compiled (or hot enough to be); return how many retired (0: the caller runs
        them itself).  For a VMM executing translated code whose next ``count`` instructions
        are innocuous: the limit stops the block before anything else, and a tick stops it
        where it falls, as ``run`` does.

        ``follow(eip, pa)``, when given, is asked each time a block has run to its end (no
        side exit, no tick, budget left) whether the run may go on with the block at ``eip``
        (physical ``pa``): how a VMM chains innocuous translations that it has vouched for
        without coming back to its dispatcher.  It is never asked after a side exit, so the
        instruction that needs the interpreter (a fault, a write to write-protected code) is
        always the caller's to run."""
        cpu = self.cpu
        s = cpu.state
        mmu = cpu.mmu
        mmu.sync()
        cpl = s.cs & 3
        mode = mode_index(cpl == 3, s.cr0)
        rc = mmu.read_cache[mode]
        wc = mmu.write_cache[mode]
        blocks = self.blocks
        data = cpu.memory.data
        regs = s.regs
        m32 = self._m32
        probe = self.write_probe
        # Innocuous code changes neither the timer nor the mode: one deadline (the budget's end
        # or the next tick) holds for the whole run, and time is accounted once at its end.
        t = start = s.tsc
        deadline = t + count
        if s.timer_period and s.timer_next < deadline:
            deadline = s.timer_next
        ran = 0
        eip = s.eip
        off = rc.get(eip >> PAGE_SHIFT)
        if off is None:
            off = self._refetch(eip, cpl)
        while off is not None:
            pa = eip + off
            key = (eip << 32) | pa
            block = blocks.get(key)
            if block is None:
                block = self._lookup(key, eip, pa)
                if block is None:
                    break
            fn = block.fn
            if fn is None:
                break
            t2 = fn(s, regs, data, m32, rc, wc, t, deadline, probe)
            if t2 < 0:  # a side exit (``BlockFn``): the next instruction is the caller's
                t2 = ~t2
                if t2 != t:
                    ran += 1
                    t = t2
                break
            if t2 == t:
                break
            ran += 1
            t = t2
            if t >= deadline or follow is None:
                break
            eip = s.eip
            off = rc.get(eip >> PAGE_SHIFT)
            if off is None:
                off = self._refetch(eip, cpl)
            if off is None or not follow(eip, eip + off):
                break
        done = t - start
        if done:
            stats = cpu.stats
            stats.block_cache_hits += ran
            s.tsc = t
            stats.retired += done
            stats.count_retired(cpl, done)
            if s.timer_period and t >= s.timer_next:
                cpu.tick()
        return done

    def _refetch(self, eip: int, cpl: int) -> int | None:
        """The read cache lacks ``eip``'s page (the TLB evicted it, or never held it): fetch
        needs its translation, so ask the MMU (a TLB hit, or a miss and a walk, as a fetch
        would), which puts it back in the cache; None when the fetch would fault (the caller's
        to run) or the page takes the slow path.  Without this, code that a VMM runs only
        through ``run_straight`` would stay off the fast path once its page was evicted."""
        mmu = self.cpu.mmu
        try:
            mmu.translate(eip, False, cpl == 3)
        except Fault:
            return None
        return mmu.read_cache[mode_index(cpl == 3, self.cpu.state.cr0)].get(eip >> PAGE_SHIFT)

    def _lookup(self, key: int, eip: int, pa: int) -> Block | None:
        heat = self.heat.get(key, 0) + 1
        if heat < HOT:
            self.heat[key] = heat
            return None
        self.heat.pop(key, None)
        block = compile_block(self.cpu, eip, pa, key)
        self._install(block)
        if block.fn is not None:
            self.cpu.stats.blocks_compiled += 1
        return block


# -- decoding ---------------------------------------------------------------------------------
def _compilable(cpu: Cpu, ins: Instruction) -> bool:
    spec = ins.spec
    forms = _COMPILABLE.get(spec.mnemonic, frozenset())
    if forms is not None and spec.form not in forms:
        return False
    return not cpu.is_intercepted(spec.opcode)


def _decode_block(cpu: Cpu, eip: int, pa: int) -> tuple[list[tuple[int, Instruction]], int]:
    data = cpu.memory.data
    limit = min(((pa >> PAGE_SHIFT) + 1) << PAGE_SHIFT, cpu.memory.size)
    out: list[tuple[int, Instruction]] = []
    veip, p = eip, pa
    first_length = 1
    while len(out) < MAX_BLOCK and p < limit:
        spec = BY_OPCODE.get(data[p])
        if spec is None or p + spec.length > limit:
            break
        ins = decode(data, p)
        if ins is None:
            break
        if not out:
            first_length = spec.length
        if not _compilable(cpu, ins):
            break
        out.append((veip, ins))
        veip = (veip + spec.length) & M
        p += spec.length
        if spec.mnemonic in _ENDS_BLOCK:
            break
    return out, (p if out else pa + first_length)


# -- code generation --------------------------------------------------------------------------
def _signed(expr: str) -> str:
    return f"(({expr}) ^ 0x80000000) - 0x80000000"


class _Generator:
    def __init__(self, plans: list[_Plan], start: int, loops: bool) -> None:
        self.plans = plans
        self.n = len(plans)
        self.start = start
        self.loops = loops
        self.saves: set[tuple[int, int]] = set()
        self.side_exits: set[int] = set()
        self.lines: list[str] = []
        self.depth = 1
        self.written = sorted(
            {r for plan in plans for r in plan.writes}, key=REGISTERS.index
        )  # written back at every exit
        self.first = self._simulate([])
        self.steady = self._simulate(self.first[self.n]) if loops else self.first

    # lazy flag lists --------------------------------------------------------------------
    def _simulate(self, start: list[int]) -> list[list[int]]:
        lists: list[list[int]] = []
        current = list(start)
        for i, plan in enumerate(self.plans):
            lists.append(current)
            if plan.eager:
                current = []
            elif plan.writer is not None:
                current = self._prune([*current, i])
        lists.append(current)
        return lists

    def _prune(self, writers: list[int]) -> list[int]:
        kept: list[int] = []
        covered = 0
        for i in reversed(writers):
            bits = self.plans[i].writer.bits  # type: ignore[union-attr]
            if bits & ~covered:
                kept.append(i)
            covered |= bits
        return kept[::-1]

    def _path_writes(self, i: int, p: int) -> set[str]:
        """Registers written after writer ``i`` and before position ``p`` (``i >= p``: ``i`` ran
        in the previous iteration of the loop)."""
        span = range(i + 1, p) if i < p else [*range(i + 1, self.n), *range(p)]
        return {r for j in span for r in self.plans[j].writes}

    def _operand(self, i: int, k: int, p: int) -> str:
        writer = self.plans[i].writer
        assert writer is not None
        after = writer.after[k]
        if after is not None and not (after[1] & self._path_writes(i, p)):
            return after[0]
        self.saves.add((i, k))
        return f"w{i}_{k}"

    def _apply(self, writers: list[int], p: int, base: str = "fl") -> str:
        expr = base
        for i in writers:
            writer = self.plans[i].writer
            assert writer is not None
            args = [self._operand(i, k, p) for k in range(len(writer.before))]
            args += [str(c) for c in writer.extra]
            expr = f"_{writer.kind}({expr}, {', '.join(args)})"
        return expr

    def flags_at(self, p: int) -> str:
        first, steady = self.first[p], self.steady[p]
        if first == steady:
            return self._apply(first, p)
        return f"({self._apply(first, p)} if it == 0 else {self._apply(steady, p)})"

    # output --------------------------------------------------------------------------------
    def emit(self, line: str) -> None:
        self.lines.append("    " * self.depth + line)

    def exit(self, p: int, eip: str, *, side: bool) -> None:
        """Leave the block before instruction ``p`` (``p == n``: after the last one)."""
        if self.loops:
            self.emit(f"t += it * {self.n}")
        for r in self.written:
            self.emit(f"R[{REGISTERS.index(r)}] = {r}")
        self.emit(f"S.eflags = {self.flags_at(p)}")
        self.emit(f"S.eip = {eip}")
        done = f"t + {p}" if p else "t"
        self.emit(f"return ~({done})" if side else f"return {done}")

    def jump(self, target: str) -> None:
        """Leave the block for ``target`` (an expression), or, when it is the block's own start
        and the block loops, go round once more."""
        if self.loops and target == hex(self.start):
            self.emit("continue")
        else:
            self.exit(self.n, target, side=False)

    def side_exit(self, i: int) -> None:
        """Leave before instruction ``i`` and have the interpreter run it: through the shared
        epilogue (``epilogue``), so each side exit costs two lines of source."""
        self.side_exits.add(i)
        self.emit(f"x = {i}")
        self.emit("break")

    def epilogue(self) -> None:
        """After the ``while`` loop: the state as it was before instruction ``x``."""
        if not self.side_exits:
            return
        if self.loops:
            self.emit(f"t += it * {self.n}")
        for r in self.written:
            self.emit(f"R[{REGISTERS.index(r)}] = {r}")
        for k, i in enumerate(sorted(self.side_exits)):
            keyword = "if" if k == 0 else "elif"
            if k == len(self.side_exits) - 1 and k:
                self.emit("else:")
            else:
                self.emit(f"{keyword} x == {i}:")
            self.depth += 1
            self.emit(f"S.eflags = {self.flags_at(i)}")
            self.emit(f"S.eip = {self.plans[i].veip:#x}")
            self.depth -= 1
        self.emit("return ~(t + x)")

    def block(self, header: str, body: Callable[[], None]) -> None:
        self.emit(header)
        self.depth += 1
        body()
        self.depth -= 1

    # memory -----------------------------------------------------------------------------------
    def address(self, mem: Mem) -> str:
        if mem.base is None:
            return hex(mem.disp)
        base = REGISTERS[mem.base]
        return base if mem.disp == 0 else f"(({base} + {mem.disp:#x}) & 0xFFFFFFFF)"

    def physical(self, i: int, mem: Mem | None, cache: str, *, dword: bool, load: str = "") -> None:
        """``p`` = the physical address of the access at ``mem`` (at ``a`` when ``mem`` is None),
        or a side exit.  A write-cache miss asks ``W`` (``CompiledBlocks.write_probe``) first,
        so data writes into a page that also holds code do not leave the block.  With ``load``,
        a byte read goes straight into that register (the side exit happens before it)."""
        a = "a"
        if mem is not None:
            a = self.address(mem)
            if not (a.isidentifier() or a.startswith("0x")):
                self.emit(f"a = {a}")
                a = "a"
        self.emit("try:")
        self.depth += 1
        if load:
            self.emit(f"{load} = D[{a} + {cache}[{a} >> 12]]")
        else:
            self.emit(f"p = {a} + {cache}[{a} >> 12]")
        self.depth -= 1
        if cache == "wc":

            def probe() -> None:
                self.emit(f"p = W({a}, {4 if dword else 1})")
                self.block("if p < 0:", lambda: self.side_exit(i))

            self.block("except KeyError:", probe)
        else:
            self.block("except KeyError:", lambda: self.side_exit(i))
        if dword and not (a.startswith("0x") and int(a, 16) & 0xFFF <= 0xFFC):
            self.block(f"if {a} & 0xFFF > 0xFFC:", lambda: self.side_exit(i))

    def load32(self, target: str) -> None:
        if not _LITTLE:
            self.emit(f"{target} = _ifb(D[p:p + 4], 'little')")
            return
        self.emit(f"{target} = M32[p >> 2] if not p & 3 else _ifb(D[p:p + 4], 'little')")

    def store32(self, value: str) -> None:
        if not _LITTLE:
            self.emit(f"D[p:p + 4] = ({value}).to_bytes(4, 'little')")
            return
        self.emit("if p & 3:")
        self.emit(f"    D[p:p + 4] = ({value}).to_bytes(4, 'little')")
        self.emit("else:")
        self.emit(f"    M32[p >> 2] = {value}")

    def save(self, i: int) -> None:
        writer = self.plans[i].writer
        if writer is None:
            return
        for k, expr in enumerate(writer.before):
            if (i, k) in self.saves:
                self.emit(f"w{i}_{k} = {expr}")


def _plan(veip: int, ins: Instruction) -> _Plan:
    """Registers written and the lazy-flags record of one instruction."""
    spec = ins.spec
    mn, form = spec.mnemonic, spec.form
    ops: Any = ins.operands
    name = REGISTERS.__getitem__
    writes: set[str] = set()
    writer: _Writer | None = None
    eager = False
    if mn in ("mov", "movzx", "lea") and form in (Form.RR, Form.RI, Form.RM, Form.RM8):
        writes.add(name(ops[0]))
    elif mn == "xchg":
        writes.update((name(ops[0]), name(ops[1])))
    elif mn in ("push", "call"):
        writes.add("esp")
    elif mn in ("pop", "ret"):
        writes.add("esp")
        if mn == "pop":
            writes.add(name(ops[0]))
    elif mn in _ALU:
        dst_reg = form in (Form.RR, Form.RI, Form.RM)
        if dst_reg and mn not in ("cmp", "test"):
            writes.add(name(ops[0]))
        # operand expressions: `m{i}` style temps are filled in by the emitter (see _emit_alu)
    elif mn == "imul":
        writes.add(name(ops[0]))
    elif mn == "div":
        writes.update(("eax", "edx"))
    elif mn in ("inc", "dec", "neg", "not") and form is Form.R:
        writes.add(name(ops[0]))
    elif mn in ("shl", "shr", "sar"):
        writes.add(name(ops[0]))
        eager = form is Form.RECX
    return _Plan(veip, ins, frozenset(writes), writer, eager)


def _alu_operands(gen_i: int, ins: Instruction) -> tuple[str, str, frozenset[str], frozenset[str]]:
    """(dst value expr, src value expr, registers each reads) before the instruction runs.
    Memory operands are loaded into the temps ``d{i}`` / ``s{i}``."""
    form = ins.spec.form
    ops: Any = ins.operands
    if form is Form.RR:
        d, s = REGISTERS[ops[0]], REGISTERS[ops[1]]
        return d, s, frozenset({d}), frozenset({s})
    if form is Form.RI:
        d = REGISTERS[ops[0]]
        return d, hex(ops[1]), frozenset({d}), frozenset()
    if form is Form.RM:
        d = REGISTERS[ops[0]]
        return d, f"s{gen_i}", frozenset({d}), frozenset()
    if form is Form.MR:
        s = REGISTERS[ops[1]]
        return f"d{gen_i}", s, frozenset(), frozenset({s})
    return f"d{gen_i}", hex(ops[1]), frozenset(), frozenset()


def _make_writer(i: int, plan: _Plan) -> None:
    """Fill ``plan.writer`` (needs the instruction index for temp names)."""
    ins = plan.ins
    mn, form = ins.spec.mnemonic, ins.spec.form
    ops: Any = ins.operands
    if mn in _ALU:
        d, s, dregs, sregs = _alu_operands(i, ins)
        writes_reg = form in (Form.RR, Form.RI, Form.RM) and mn not in ("cmp", "test")
        if mn in ("add", "sub", "cmp"):
            # after the instruction, the old dst is gone if it was overwritten; src survives
            # unless src is the dst register
            a_after = None if writes_reg else (d, dregs)
            b_after = None if writes_reg and sregs & dregs else (s, sregs)
            plan.writer = _Writer("sub" if mn == "cmp" else mn, F.ARITH, [d, s], [a_after, b_after])
        else:
            op = {"and": "&", "test": "&", "or": "|", "xor": "^"}[mn]
            result = f"({d} {op} {s})"
            if writes_reg:
                after = (REGISTERS[ops[0]], frozenset({REGISTERS[ops[0]]}))
            elif mn == "test":
                after = (result, dregs | sregs)
            else:  # memory destination: the result is kept in r{i}
                after = (f"r{i}", frozenset())
            plan.writer = _Writer("logic", F.ARITH, [result], [after])
    elif mn == "imul":
        plan.writer = _Writer("imul", F.CF | F.OF, [f"q{i}"], [None])  # the emitter saves it
    elif mn in ("inc", "dec", "neg"):
        src = REGISTERS[ops[0]] if form is Form.R else f"d{i}"
        kept: tuple[str, frozenset[str]] | None = None if form is Form.R else (src, frozenset())
        plan.writer = _Writer(mn, _WRITER_BITS[mn], [src], [kept])
    elif mn in ("shl", "shr", "sar") and form is Form.RI8:
        count = ops[1] & 31
        if count:
            r = REGISTERS[ops[0]]
            bits = F.ARITH if count == 1 else F.CF | F.ZF | F.SF
            plan.writer = _Writer(mn, bits, [r], [None], (count,))


def _fused(gen: _Generator, cc: str) -> str:
    """A Python condition for ``jcc`` at the block's end: a direct comparison when the flags
    it reads all come from one ``cmp``/``sub``/logic/inc/dec writer, else the generic test."""
    p = gen.n - 1
    reads = F.CONDITION_READS[cc]
    writers = gen.first[p]
    if writers == gen.steady[p]:
        # the last writer of each flag the condition reads (None: the flag comes from `fl`)
        sources: set[int | None] = set()
        for bit in (F.CF, F.ZF, F.SF, F.OF):
            if bit & reads:
                last = [j for j in writers if gen.plans[j].writer.bits & bit]  # type: ignore[union-attr]
                sources.add(last[-1] if last else None)
        only = sources.pop() if len(sources) == 1 else None
        if only is not None:
            i = only
            writer = gen.plans[i].writer
            assert writer is not None
            if writer.kind == "sub":
                a, b = gen._operand(i, 0, p), gen._operand(i, 1, p)
                sa, sb = f"(({a}) ^ 0x80000000)", f"(({b}) ^ 0x80000000)"
                direct = {
                    "e": f"{a} == {b}",
                    "ne": f"{a} != {b}",
                    "b": f"{a} < {b}",
                    "ae": f"{a} >= {b}",
                    "be": f"{a} <= {b}",
                    "a": f"{a} > {b}",
                    "l": f"{sa} < {sb}",
                    "ge": f"{sa} >= {sb}",
                    "le": f"{sa} <= {sb}",
                    "g": f"{sa} > {sb}",
                    "s": f"({a} - {b}) & 0x80000000",
                    "ns": f"not ({a} - {b}) & 0x80000000",
                }
                if cc in direct:
                    return direct[cc]
            elif writer.kind == "logic":
                r = gen._operand(i, 0, p)
                direct = {
                    "e": f"{r} == 0",
                    "ne": f"{r} != 0",
                    "s": f"{r} >= 0x80000000",
                    "ns": f"{r} < 0x80000000",
                    "l": f"{r} >= 0x80000000",
                    "ge": f"{r} < 0x80000000",
                    "le": f"{r} == 0 or {r} >= 0x80000000",
                    "g": f"0 < {r} < 0x80000000",
                }
                if cc in direct:
                    return direct[cc]
            elif writer.kind in ("inc", "dec") and cc in ("e", "ne", "s", "ns"):
                a = gen._operand(i, 0, p)
                r = f"(({a} + 1) & 0xFFFFFFFF)" if writer.kind == "inc" else f"(({a} - 1) & 0xFFFFFFFF)"
                return {
                    "e": f"{r} == 0",
                    "ne": f"{r} != 0",
                    "s": f"{r} >= 0x80000000",
                    "ns": f"{r} < 0x80000000",
                }[cc]
    return f"_cond[{cc!r}]({gen.flags_at(p)})"


def _emit(gen: _Generator, i: int) -> None:
    """Emit instruction ``i``: its family's emitter (``_EMITTERS``), then, after the block's last
    instruction when it is not a control transfer, the exit to the instruction after it."""
    plan = gen.plans[i]
    mn = plan.ins.spec.mnemonic
    _EMITTERS[mn](gen, i, plan)
    if i == gen.n - 1 and mn not in _ENDS_BLOCK:
        gen.exit(gen.n, hex(_next_eip(plan)), side=False)


def _next_eip(plan: _Plan) -> int:
    return (plan.veip + plan.ins.spec.length) & M


def _emit_nop(gen: _Generator, i: int, plan: _Plan) -> None:
    pass


def _emit_mov(gen: _Generator, i: int, plan: _Plan) -> None:
    form = plan.ins.spec.form
    ops: Any = plan.ins.operands
    reg = REGISTERS.__getitem__
    if form is Form.RR:
        gen.emit(f"{reg(ops[0])} = {reg(ops[1])}")
    elif form is Form.RI:
        gen.emit(f"{reg(ops[0])} = {ops[1]:#x}")
    elif form is Form.RM:
        gen.physical(i, ops[1], "rc", dword=True)
        gen.load32(reg(ops[0]))
    elif form in (Form.MR, Form.MI):
        gen.physical(i, ops[0], "wc", dword=True)
        gen.store32(reg(ops[1]) if form is Form.MR else hex(ops[1]))
    else:  # M8R
        gen.physical(i, ops[0], "wc", dword=False)
        gen.emit(f"D[p] = {reg(ops[1])} & 0xFF")


def _emit_movzx(gen: _Generator, i: int, plan: _Plan) -> None:
    ops: Any = plan.ins.operands
    gen.physical(i, ops[1], "rc", dword=False, load=REGISTERS[ops[0]])


def _emit_lea(gen: _Generator, i: int, plan: _Plan) -> None:
    ops: Any = plan.ins.operands
    gen.emit(f"{REGISTERS[ops[0]]} = {gen.address(ops[1])}")


def _emit_xchg(gen: _Generator, i: int, plan: _Plan) -> None:
    ops: Any = plan.ins.operands
    a, b = REGISTERS[ops[0]], REGISTERS[ops[1]]
    gen.emit(f"{a}, {b} = {b}, {a}")


def _emit_push_call(gen: _Generator, i: int, plan: _Plan) -> None:
    mn, form = plan.ins.spec.mnemonic, plan.ins.spec.form
    ops: Any = plan.ins.operands
    reg = REGISTERS.__getitem__
    value = hex(_next_eip(plan)) if mn == "call" else (reg(ops[0]) if form is Form.R else hex(ops[0]))
    if mn == "call" and form is Form.R:
        gen.emit(f"c = {reg(ops[0])}")  # read before the push: `call esp` jumps to the old esp
    gen.emit("a = (esp - 4) & 0xFFFFFFFF")
    gen.physical(i, None, "wc", dword=True)
    gen.store32(value)
    gen.emit("esp = a")
    if mn == "call":
        gen.jump("c" if form is Form.R else hex(ops[0]))


def _emit_pop_ret(gen: _Generator, i: int, plan: _Plan) -> None:
    ops: Any = plan.ins.operands
    gen.physical(i, Mem(4, 0), "rc", dword=True)
    gen.load32("v")
    gen.emit("esp = (esp + 4) & 0xFFFFFFFF")
    if plan.ins.spec.mnemonic == "pop":
        gen.emit(f"{REGISTERS[ops[0]]} = v")
    else:
        gen.jump("v")


_ALU_RESULTS = {
    "add": "({d} + {s}) & 0xFFFFFFFF",
    "sub": "({d} - {s}) & 0xFFFFFFFF",
    "and": "{d} & {s}",
    "or": "{d} | {s}",
    "xor": "{d} ^ {s}",
}
"""The ALU instructions that store a result (not cmp/test), as expressions of dst and src."""


def _emit_alu(gen: _Generator, i: int, plan: _Plan) -> None:
    ins = plan.ins
    mn, form = ins.spec.mnemonic, ins.spec.form
    ops: Any = ins.operands
    if form in (Form.RR, Form.RI):
        gen.save(i)
    d, s, _, _ = _alu_operands(i, ins)
    if form is Form.RM:
        gen.physical(i, ops[1], "rc", dword=True)
        gen.load32(f"s{i}")
        gen.save(i)
    elif form in (Form.MR, Form.MI):
        gen.physical(i, ops[0], "wc" if mn not in ("cmp", "test") else "rc", dword=True)
        gen.load32(f"d{i}")
        gen.save(i)
    result = _ALU_RESULTS.get(mn)
    if result is None:  # cmp, test: flags only
        return
    expr = result.format(d=d, s=s)
    if form in (Form.MR, Form.MI):
        gen.emit(f"r{i} = {expr}")
        gen.store32(f"r{i}")
    else:
        gen.emit(f"{d} = {expr}")


def _emit_imul(gen: _Generator, i: int, plan: _Plan) -> None:
    form = plan.ins.spec.form
    ops: Any = plan.ins.operands
    d = REGISTERS[ops[0]]
    if form is Form.RR:
        s = REGISTERS[ops[1]]
    elif form is Form.RI:
        s = hex(ops[1])
    else:
        gen.physical(i, ops[1], "rc", dword=True)
        gen.load32(f"s{i}")
        s = f"s{i}"
    if (i, 0) in gen.saves:
        gen.emit(f"w{i}_0 = ({_signed(d)}) * ({_signed(s)})")
        gen.emit(f"{d} = w{i}_0 & 0xFFFFFFFF")
    else:
        gen.emit(f"{d} = ({d} * {s}) & 0xFFFFFFFF")  # the low 32 bits do not depend on signs


def _emit_div(gen: _Generator, i: int, plan: _Plan) -> None:
    ops: Any = plan.ins.operands
    gen.emit(f"c = {REGISTERS[ops[0]]}")
    gen.block("if not c:", lambda: gen.side_exit(i))  # the interpreter raises #DE
    gen.emit("eax, edx = eax // c, eax % c")


_UNARY = {
    "inc": "({a} + 1) & 0xFFFFFFFF",
    "dec": "({a} - 1) & 0xFFFFFFFF",
    "neg": "-{a} & 0xFFFFFFFF",
    "not": "{a} ^ 0xFFFFFFFF",
}


def _emit_unary(gen: _Generator, i: int, plan: _Plan) -> None:
    op = _UNARY[plan.ins.spec.mnemonic]
    ops: Any = plan.ins.operands
    if plan.ins.spec.form is Form.R:
        r = REGISTERS[ops[0]]
        gen.save(i)
        gen.emit(f"{r} = {op.format(a=r)}")
    else:
        gen.physical(i, ops[0], "wc", dword=True)
        gen.load32(f"d{i}")
        gen.save(i)
        gen.store32(op.format(a=f"d{i}"))


_SHIFTS = {
    "shl": "({a} << {c}) & 0xFFFFFFFF",
    "shr": "{a} >> {c}",
    "sar": "(" + _signed("{a}") + " >> {c}) & 0xFFFFFFFF",
}


def _emit_shift(gen: _Generator, i: int, plan: _Plan) -> None:
    mn = plan.ins.spec.mnemonic
    ops: Any = plan.ins.operands
    r = REGISTERS[ops[0]]
    op = _SHIFTS[mn]
    if plan.ins.spec.form is Form.RI8:
        count = ops[1] & 31
        if count:
            gen.save(i)
            gen.emit(f"{r} = {op.format(a=r, c=count)}")
    else:  # by ecx: compute every lazy flag now, then this shift's (count known at run time)
        gen.emit("c = ecx & 31")
        gen.emit(f"fl = _{mn}({gen.flags_at(i)}, {r}, c)")
        gen.emit(f"{r} = {op.format(a=r, c='c')}")


def _emit_jmp(gen: _Generator, i: int, plan: _Plan) -> None:
    ops: Any = plan.ins.operands
    gen.jump(REGISTERS[ops[0]] if plan.ins.spec.form is Form.R else hex(ops[0]))


def _emit_jcc(gen: _Generator, i: int, plan: _Plan) -> None:
    ops: Any = plan.ins.operands
    condition = _fused(gen, JCC[plan.ins.spec.mnemonic])
    target = hex(ops[0])
    gen.block(f"if {condition}:", lambda: gen.jump(target))
    gen.exit(gen.n, hex(_next_eip(plan)), side=False)


_EMITTERS: dict[str, Callable[[_Generator, int, _Plan], None]] = {
    "nop": _emit_nop,
    "mov": _emit_mov,
    "movzx": _emit_movzx,
    "lea": _emit_lea,
    "xchg": _emit_xchg,
    "push": _emit_push_call,
    "call": _emit_push_call,
    "pop": _emit_pop_ret,
    "ret": _emit_pop_ret,
    **dict.fromkeys(_ALU, _emit_alu),
    "imul": _emit_imul,
    "div": _emit_div,
    **dict.fromkeys(_UNARY, _emit_unary),
    **dict.fromkeys(_SHIFTS, _emit_shift),
    "jmp": _emit_jmp,
    **{"j" + cc: _emit_jcc for cc in set(JCC.values())},
}
"""One code emitter per instruction family, for exactly the mnemonics in ``_COMPILABLE``."""
assert set(_EMITTERS) == set(_COMPILABLE)


def _generate(plans: list[_Plan], start: int, loops: bool, saves: set[tuple[int, int]]) -> _Generator:
    gen = _Generator(plans, start, loops)
    gen.saves = set(saves)
    used = sorted(
        {REGISTERS[r] for plan in plans for r in _reads(plan.ins)} | set(gen.written), key=REGISTERS.index
    )
    gen.depth = 1
    for r in used:
        gen.emit(f"{r} = R[{REGISTERS.index(r)}]")
    gen.emit("fl = S.eflags")
    if loops:
        # `it` counts whole iterations; the range holds those that fit before the deadline, and
        # running out of it is the deadline's side exit (before the first instruction)
        gen.emit(f"k = (lim - t) // {gen.n}")
        gen.emit("for it in range(k):")
    else:
        gen.emit(f"lim -= {gen.n}")  # the whole block must fit before the deadline
        gen.emit("while True:")  # one pass; a side exit breaks out to the epilogue
    gen.depth = 2
    if not loops:
        gen.block("if t > lim:", lambda: gen.side_exit(0))
    for i in range(len(plans)):
        _emit(gen, i)
    gen.depth = 1
    if loops:
        gen.side_exits.add(0)
        gen.emit("else:")
        gen.emit("    it = k")
        gen.emit("    x = 0")
    gen.epilogue()
    return gen


def _reads(ins: Instruction) -> set[int]:
    """Register numbers an instruction may read or write (what the block loads)."""
    form = ins.spec.form
    ops: Any = ins.operands
    out: set[int] = set()
    operand_kinds = [k for k in FORMS[form].operands if k not in ("ecx", "edx", "cs")]
    for kind, op in zip(operand_kinds, ops, strict=True):
        if kind == "r":
            out.add(op)
        elif kind in ("m", "m8") and op.base is not None:
            out.add(op.base)
    mn = ins.spec.mnemonic
    if form is Form.RECX:
        out.add(1)
    if mn in ("push", "pop", "call", "ret"):
        out.add(4)
    if mn == "div":
        out.update((0, 2))
    return out


def compile_block(cpu: Cpu, eip: int, pa: int, key: int) -> Block:
    """Compile the block at ``eip`` (physical ``pa``)."""
    insns, end = _decode_block(cpu, eip, pa)
    if not insns:
        return Block(key, eip, pa, end, None)
    plans = [_plan(veip, ins) for veip, ins in insns]
    for i, plan in enumerate(plans):
        _make_writer(i, plan)
    last = insns[-1][1]
    loops = last.spec.mnemonic in ("jmp", *("j" + cc for cc in set(JCC.values()))) and (
        last.spec.form is Form.I and last.operands[0] == eip
    )
    # Two passes: the first finds which operands must be saved, the second emits with them.
    gen = _generate(plans, eip, loops, set())
    if gen.saves:
        gen = _generate(plans, eip, loops, gen.saves)
    body = "\n".join(gen.lines)
    source = f"def block(S, R, D, M32, rc, wc, t, lim, W):\n{body}\n"
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<block {eip:#x}>", "exec"), _GLOBALS, namespace)
    return Block(key, eip, pa, end, namespace["block"], len(plans), loops, source)
