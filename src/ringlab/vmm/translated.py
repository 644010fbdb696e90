"""Executing the translation cache: the loop that runs translated guest-kernel code (bt).

Translated code calls the VMM in five places: a cache miss (translate), a fault, a timer tick the
virtual IF lets through, an inline op the guest's privilege forbids, and a callout (and it hands
back to the VMM when the guest enters user mode).  ``VmmCall`` names them, on both sides of the
world switch; ``Port`` is those calls.  In-process (``ringlab run``) the port is the VMM itself and the loop goes on after
each call.  On a pCPU (the cpu service), where the VMM is across the world switch, every call
ends the run with a ``ToVmm`` event instead (``Remote``); the hypervisor makes the same call on
its copy of the vCPU and runs the translation again.  Either way the same code decides what runs
where, so the guest sees the same thing.

``Executor`` is a pCPU's side: the translations the hypervisor installed (a ``TranslationCache``
that cannot translate), the virtual CPU the inline ops work on, and what it counted.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, cast

from ringlab.isa import Instruction, encode
from ringlab.machine.cpu import Cpu
from ringlab.machine.exits import Budget, Exit
from ringlab.machine.faults import Fault
from ringlab.vmm.counters import EventCounter
from ringlab.vmm.emulate import privilege_fault
from ringlab.vmm.execute import execute
from ringlab.vmm.technique import Stop
from ringlab.vmm.translation_cache import Block, Kind, Op, TranslationCache, Untranslated
from ringlab.vmm.vcpu import Deprivilege, VirtualCpu, guest_view

if TYPE_CHECKING:
    from ringlab.vmm.vm import VM

__all__ = [
    "YIELD",
    "BlockSpec",
    "Executor",
    "Guest",
    "Port",
    "Remote",
    "TcReport",
    "TcRun",
    "TcState",
    "ToVmm",
    "VmmCall",
    "run_translated",
]

STRAIGHT = 3
"""Runs of at least this many innocuous kernel instructions go to the core's compiled code."""
YIELD = Budget()
"""Back to the VMM loop (the guest changed mode, or the budget ran out)."""
_DIRECT = Kind.DIRECT
_INDIRECT = Kind.INDIRECT
BT_DEPRIVILEGE = Deprivilege(vmm_tables=False, user_flags_direct=True)
"""bt's ring compression (the kernel at real ring 1; the guest's own tables and, in ring 3, flags)."""


class VmmCall(enum.StrEnum):
    """A call translated code makes into the VMM: its value is its name on the wire (``TcReport.event``)
    and, as ``exit_name``, among a VM's exits by reason."""

    MISS = "miss"
    """No translation for the next block: the VMM translates it."""
    FAULT = "fault"
    TICK = "tick"
    """A timer tick the virtual IF lets through."""
    PRIVILEGED = "privileged"
    """An inline op (cli/sti) the guest's IOPL forbids: #GP."""
    CALLOUT = "callout"
    USER = "user"
    RESET = "reset"
    """The pCPU holds none of the VM's translations (it loaded the VM afresh, after an eviction or
    on another pCPU) and was not sent the whole cache: it ran nothing; the VMM sends it all (the
    blocks and the instructions it adapted) with a reset, and the run goes on."""
    """The guest entered user mode: deliver what is pending, and back to the VMM loop."""

    @property
    def exit_name(self) -> str:
        """Its name among a VM's exits by reason (``translation_miss``, ...)."""
        return f"translation_{self.value}"


class Port(Protocol):
    """What translated code asks of the VMM.  Each call returns what the run does next: None, the
    VMM handled it and the translation runs on (from a fresh lookup); else the ``Exit`` or
    ``Stop`` that ends the run."""

    def fault(self, fault: Fault) -> Exit | Stop | None: ...
    def tick(self) -> Exit | Stop | None: ...
    def privileged(self) -> Exit | Stop | None: ...
    def callout(self, op: Op) -> Exit | Stop | None: ...
    def to_user(self) -> Exit | Stop: ...


class Guest(Protocol):
    """What translated code runs against (a ``VM``, or a pCPU's ``Executor``)."""

    cpu: Cpu
    vcpu: VirtualCpu
    counters: EventCounter
    deprivilege: Deprivilege | None


@dataclass
class TcState:
    step_over: bool = False
    """The last hidden fault dropped translations: run the faulting instruction once from an
    uncached translation, so it is not write-protected again before it writes."""


class ToVmm(Exception):
    """Translated code on a pCPU needs the VMM: the run ends here (nothing of this step done)."""

    def __init__(
        self, event: VmmCall, eip: int, *, fault: Fault | None = None, insn: Instruction | None = None
    ):
        super().__init__(event)
        self.event, self.eip, self.fault, self.insn = event, eip, fault, insn


class Remote:
    """A pCPU's port: every call into the VMM is an exit across the world switch."""

    def __init__(self, cpu: Cpu) -> None:
        self.cpu = cpu

    def fault(self, fault: Fault) -> Exit | Stop | None:
        raise ToVmm(VmmCall.FAULT, self.cpu.state.eip, fault=fault)

    def tick(self) -> Exit | Stop | None:
        raise ToVmm(VmmCall.TICK, self.cpu.state.eip)

    def privileged(self) -> Exit | Stop | None:
        raise ToVmm(VmmCall.PRIVILEGED, self.cpu.state.eip)

    def callout(self, op: Op) -> Exit | Stop | None:
        raise ToVmm(VmmCall.CALLOUT, op.eip, insn=op.insn)

    def to_user(self) -> Exit | Stop:
        raise ToVmm(VmmCall.USER, self.cpu.state.eip)


def run_translated(
    g: Guest, cache: TranslationCache, port: Port, end: int, state: TcState, epoch: Callable[[], int]
) -> Exit | Stop:
    """Execute the guest kernel's translation until it leaves ring 0, exits or ``end``: find the
    block at ``eip`` (``_find_block``), run it (``_exec_block``), repeat, as QEMU's ``cpu_exec``
    loops on ``tb_find`` and ``cpu_loop_exec_tb``."""
    vcpu, s, stats = g.vcpu, g.cpu.state, g.cpu.stats
    previous: Block | None = None
    while stats.retired < end:
        result: Block | Exit | Stop | None
        if _tick_due(g):  # as the core's run loop: the budget, then a pending tick, then the fetch
            result = port.tick()
        else:
            try:
                block = _find_block(cache, state, s.eip, previous, epoch)
            except Fault as fault:
                result = port.fault(fault)
            else:
                result = _exec_block(g, cache, port, block, end)
        if result is not None and not isinstance(result, Block):
            return result
        previous = result
        if vcpu.cpl == 3:
            return YIELD
    return YIELD


def _find_block(
    cache: TranslationCache, state: TcState, eip: int, previous: Block | None, epoch: Callable[[], int]
) -> Block:
    """The translation to run at ``eip`` (chained from ``previous`` when it ran to its end), or
    once after a hidden fault that dropped translations an uncached one (``TcState.step_over``).
    Raises the ``Fault`` fetching the guest's code raised, or (a pCPU's cache) ``Untranslated``."""
    if state.step_over:
        state.step_over = False
        return cache.single(eip)
    return cache.lookup(eip, previous, epoch())


def _exec_block(
    g: Guest, cache: TranslationCache, port: Port, block: Block, end: int
) -> Block | Exit | Stop | None:
    """Run ``block``'s ops (and the DIRECT blocks its tail chains to) until its end, something
    for the VMM, or ``end``.  Returns an ``Exit`` or ``Stop`` that ends the run, else where the
    next lookup chains from: the ``Block`` it ran to the end of (or branched out of), or None (a
    VMM call that went on, a tick, the budget, a block that went stale: look up afresh)."""
    cpu, vcpu = g.cpu, g.vcpu
    s, stats = cpu.state, cpu.stats
    follow, run_straight = cache.follow, cpu.run_straight
    ops, runs, tails, i = block.ops, block.direct_runs, block.tails, 0
    while i < len(ops):
        op = ops[i]
        if stats.retired >= end:  # the core's order: the budget first, then a pending tick
            return None
        if s.timer_pending:  # (``_tick_due``, in line: this is every op's path)
            s.timer_pending = False
            vcpu.pending_tick = True
        if vcpu.pending_tick and vcpu.interrupts_enabled:
            return port.tick()
        if (
            not block.valid
            or s.eip != op.eip
            or (i and block.source is not None and not cache.unchanged(block))
        ):
            # (a self-checking block is compared again once some of it has run: an
            # instruction may have written the block's own code, with no fault to say so)
            return None
        if op.kind is not _DIRECT and op.kind is not _INDIRECT:
            result = _exec_sensitive(g, port, op)
            if result is not _Next.OP:
                return result
            i += 1
            continue
        if tails[i]:
            # Innocuous instructions translate to themselves: the rest of a block of nothing
            # else up to its branch runs on the core's compiled code (the simulated hardware's
            # speed, not the VMM's work), may loop there, and goes on into the blocks it is
            # chained to while they are all DIRECT too (``cache.follow``).
            cache.current = block
            if run_straight(end - stats.retired, follow):
                block = cache.current
                j = block.index.get(s.eip)
                if j is None:  # it branched out of its last block
                    return block
                ops, runs, tails, i = block.ops, block.direct_runs, block.tails, j
                continue
        elif runs[i] >= STRAIGHT:  # a run of innocuous instructions in a block
            done = run_straight(min(runs[i], end - stats.retired))
            if done:
                i += done
                continue
        try:
            outcome = op.handler(cpu, op.insn, op.eip, op.nxt)
        except Fault as fault:
            return port.fault(fault)
        if outcome is None:  # the interpreter's ``Outcome``: retire it here, at the real ring
            cpu.retire(s.cs & 3)
        elif isinstance(outcome, Exit):
            return outcome  # pragma: no cover - innocuous handlers do not exit
        if op.kind is _INDIRECT:
            # An indirect branch (always its block's last op): translated code looks its
            # target's translation up (the next ``_find_block``), priced per branch however
            # the lookup then finds the block.
            g.counters.indirect_lookups += 1
        i += 1
    return block


def _tick_due(g: Guest) -> bool:
    """Is a timer tick to be taken before the next instruction?  A tick that fell becomes the
    VMM's (``VirtualCpu.pending_tick``), held until the virtual IF lets it through."""
    s, vcpu = g.cpu.state, g.vcpu
    if s.timer_pending:
        s.timer_pending = False
        vcpu.pending_tick = True
    return vcpu.pending_tick and vcpu.interrupts_enabled


class _Next(enum.Enum):
    OP = enum.auto()
    """``_exec_sensitive``: the op is done, the block goes on with the next one."""


def _exec_sensitive(g: Guest, port: Port, op: Op) -> Exit | Stop | _Next | None:
    """An INLINE op (against the virtual CPU, unless the guest's IOPL forbids it: #GP) or a
    CALLOUT or ADAPTIVE op (the VMM emulates it).  ``_Next.OP`` when the block goes on, else what
    ``_exec_block`` returns."""
    vcpu = g.vcpu
    g.counters.handled(op.insn.mnemonic, op.kind.value)
    result: Exit | Stop | None
    if op.kind is Kind.INLINE:
        if privilege_fault(cast("VM", g), op.insn):  # cli/sti above the guest's IOPL
            return port.privileged()
        s = g.cpu.state
        ring = s.cs & 3  # the real ring: translated code runs at the guest kernel's compressed ring
        with guest_view(s, vcpu, g.deprivilege):
            result = execute(g.cpu, op.insn, op.eip, ring)
    else:
        result = port.callout(op)
    if result is not None:
        return result
    if vcpu.cpl == 3:
        return port.to_user()
    return _Next.OP


# -- what crosses the world switch -------------------------------------------------------------
@dataclass(frozen=True)
class BlockSpec:
    """A translation as the hypervisor installs it in a pCPU: enough to rebuild the block from
    the guest's code (the pCPU has the same memory)."""

    eip: int
    pa: int
    count: int
    source: tuple[int, bytes] | None = None

    @classmethod
    def of(cls, block: Block) -> BlockSpec:
        return cls(block.eip, block.pa, len(block.ops), block.source)


@dataclass
class TcRun:
    """Hypervisor -> pCPU: run the translation, with these changes to what the pCPU holds."""

    vcpu: dict[str, int]
    epoch: int
    step_over: bool
    reset: bool = False
    install: list[BlockSpec] = field(default_factory=list)
    drop: list[tuple[int, int]] = field(default_factory=list)
    adapted: list[int] = field(default_factory=list)
    """Instructions that translate to ``ADAPTIVE`` callouts from now on (all of them on reset)."""


@dataclass
class TcReport:
    """pCPU -> hypervisor: how the run ended and what the pCPU changed or counted."""

    vcpu: dict[str, int]
    step_over: bool
    event: VmmCall | None = None
    """None (the run ended with the returned exit), or the ``ToVmm`` event."""
    eip: int = 0
    fault: tuple[int, int | None, int | None] | None = None
    instruction: bytes = b""
    counts: dict[str, int] = field(default_factory=dict)
    """hits, chained, self_checks, invalidations, indirect_lookups since the last report."""
    dropped: list[tuple[int, int]] = field(default_factory=list)
    """Blocks a self-check found changed."""
    handled: dict[str, dict[str, int]] = field(default_factory=dict)


def vcpu_dict(v: VirtualCpu) -> dict[str, int]:
    return {k: int(x) for k, x in dataclasses.asdict(v).items()}


def load_vcpu(v: VirtualCpu, d: dict[str, int]) -> None:
    for f in dataclasses.fields(v):
        if f.name in d:
            setattr(v, f.name, bool(d[f.name]) if f.name == "pending_tick" else int(d[f.name]))


class Executor:
    """A pCPU's side of binary translation."""

    deprivilege: Deprivilege | None = BT_DEPRIVILEGE

    def __init__(self, cpu: Cpu) -> None:
        self.cpu = cpu
        self.vcpu = VirtualCpu()
        self.counters = EventCounter()
        self.cache = self._new_cache()
        self.state = TcState()
        self.epoch = 0
        self._port = Remote(cpu)
        self.needs_reset = True
        """Until a run resets the cache, this pCPU has not got the VMM's whole cache."""

    def _new_cache(self) -> TranslationCache:
        cache = TranslationCache(self.cpu, None)
        cache.forgotten = []  # self-check drops, for the report
        return cache

    def apply(self, run: TcRun) -> None:
        if run.reset:
            self.cache = self._new_cache()
            self.needs_reset = False
        load_vcpu(self.vcpu, run.vcpu)
        self.epoch, self.state.step_over = run.epoch, run.step_over
        self.cache.adapted.update(run.adapted)
        for key in run.drop:
            self.cache.forget(key)
        for spec in run.install:
            self.cache.install(spec.eip, spec.pa, spec.count, spec.source)

    def run(self, budget: int) -> Exit | ToVmm:
        if self.needs_reset:  # missing what the VMM adapted, it would translate differently
            return ToVmm(VmmCall.RESET, self.cpu.state.eip)
        try:
            outcome = run_translated(
                self, self.cache, self._port, self.cpu.stats.retired + budget, self.state, lambda: self.epoch
            )
        except ToVmm as event:
            return event
        except Untranslated as miss:
            return ToVmm(VmmCall.MISS, miss.eip)
        assert not isinstance(outcome, Stop), "a pCPU's port never ends the run itself"
        return outcome

    def report(self, outcome: Exit | ToVmm) -> TcReport:
        cache = self.cache
        out = TcReport(vcpu_dict(self.vcpu), self.state.step_over)
        if isinstance(outcome, ToVmm):
            out.event, out.eip = outcome.event, outcome.eip
            if outcome.fault is not None:
                f = outcome.fault
                out.fault = (f.vector, f.error_code, f.cr2)
            if outcome.insn is not None:
                out.instruction = encode(outcome.insn.spec, outcome.insn.operands)
        out.counts = {
            "hits": cache.hits,
            "chained": cache.chained,
            "self_checks": cache.self_checks,
            "invalidations": cache.invalidations,
            "indirect_lookups": self.counters.indirect_lookups,
        }
        cache.hits = cache.chained = cache.self_checks = cache.invalidations = 0
        self.counters.indirect_lookups = 0
        out.dropped = cache.take_dropped()
        out.handled = {m: dict(c) for m, c in self.counters.sensitive.items()}
        self.counters.sensitive.clear()
        return out
