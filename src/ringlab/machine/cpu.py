"""The RL-32 CPU: the run loop, event delivery, the core devices (timer, POST) and reset.

``Cpu.run(budget)`` executes until an exit (``exits.Exit``) or until ``budget`` instructions
retired.  With ``fast=True`` straight-line code runs as compiled Python blocks
(``blocks.CompiledBlocks``); everything else (and every fault) goes through the
interpreter's ``step``, so both modes give the same results to the bit and the same
``stats.guest``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace

from ringlab.errors import ImageError
from ringlab.image import Image
from ringlab.isa import BY_OPCODE, MASK32, TABLE, Class, Instruction, decode
from ringlab.machine.blocks import CompiledBlocks
from ringlab.machine.exits import Budget, Controls, Exit, Intercept, Raised, Shutdown
from ringlab.machine.faults import DF, GP, HAS_ERROR_CODE, PF, TIMER, Fault
from ringlab.machine.flags import IF
from ringlab.machine.interpreter import HANDLERS
from ringlab.machine.memory import PAGE_SIZE, Memory
from ringlab.machine.mmu import Mmu, mode_index
from ringlab.machine.state import CR0_PE, CR0_PG, CR0_WP, CpuState
from ringlab.machine.stats import Stats

__all__ = ["Cpu"]

_BARE = Controls()

ESP = 4
_NAMES = {0: "#DE", 6: "#UD", 8: "#DF", 13: "#GP", 14: "#PF", 18: "#MC", 32: "timer"}


def vector_name(vector: int) -> str:
    return _NAMES.get(vector, f"vector {vector}")


class Cpu:
    """One RL-32 CPU attached to a physical ``Memory``."""

    def __init__(
        self,
        memory: Memory,
        state: CpuState | None = None,
        *,
        controls: Controls | None = None,
        fast: bool = True,
    ) -> None:
        self.memory = memory
        self.stats = Stats()
        self._state = state if state is not None else CpuState()
        self.mmu = Mmu(memory, self._state, self.stats, fast_caches=fast)
        self.fast = fast
        self._controls = controls or Controls()
        self.mmu.guest_perms = self._controls.guest_perms
        self._intercepted = self._intercepted_opcodes()
        self._pending_in: int | None = None
        self._decoded: dict[int, tuple[Instruction, bytes]] = {}
        self.compiled_blocks = CompiledBlocks(self) if fast else None

    @classmethod
    def boot(
        cls, image: Image, memory_size: int = 4 << 20, controls: Controls | None = None, fast: bool = True
    ) -> Cpu:
        """A fresh machine in the docs/machine.md Reset state with ``image`` loaded."""
        if image.base < 0 or image.end > memory_size:
            raise ImageError(
                f"the image spans {image.base:#x}-{image.end:#x} but RAM is {memory_size:#x} bytes "
                f"({memory_size} B): load it lower or give the machine more memory"
            )
        memory = Memory(memory_size)
        memory.load(image.base, image.data)
        memory.clear_dirty()
        memory.take_recent()  # the image is where both sides of a world switch start
        state = CpuState(eip=image.entry & MASK32)
        state.regs[ESP] = memory_size & MASK32  # esp = top of RAM
        return cls(memory, state, controls=controls, fast=fast)

    # -- configuration ---------------------------------------------------------------------
    @property
    def state(self) -> CpuState:
        return self._state

    @state.setter
    def state(self, state: CpuState) -> None:
        """Import a whole architectural state (a VMM restoring a vCPU): the TLB is flushed."""
        self._state = state
        self.mmu.state = state
        self.mmu.flush()

    @property
    def controls(self) -> Controls:
        return self._controls

    @controls.setter
    def controls(self, controls: Controls) -> None:
        self._controls = controls
        self.mmu.guest_perms = controls.guest_perms
        self._intercepted = self._intercepted_opcodes()
        if self.compiled_blocks is not None:
            self.compiled_blocks.clear()  # compiled blocks embed which mnemonics exit

    @contextmanager
    def without_intercepts(self) -> Iterator[None]:
        """Deliver events as the bare machine would (#DF, triple fault) while the body runs:
        how a VMM reflects an event it intercepted into the guest.  Unlike setting
        ``controls``, this keeps the compiled blocks (intercepted *mnemonics* do not change)."""
        saved = self._controls
        self._controls = _BARE
        try:
            yield
        finally:
            self._controls = saved

    def _intercepted_opcodes(self) -> frozenset[int]:
        return frozenset(spec.opcode for spec in TABLE if self._controls.intercepts(spec))

    def is_intercepted(self, opcode: int) -> bool:
        return opcode in self._intercepted

    # -- running -----------------------------------------------------------------------------
    def run(self, budget: int) -> Exit:
        """Run until an exit or until ``budget`` more instructions have retired."""
        if self._pending_in is not None:
            raise RuntimeError("an IO_IN exit is pending: call complete_in(value) before run()")
        self.stats.runs += 1
        self.mmu.sync()
        s = self._state
        if s.halted:
            self.wait_for_tick()
        end = self.stats.retired + budget
        if self.compiled_blocks is not None:
            return self.compiled_blocks.run(end)
        return self.interpret(end)

    def run_straight(self, count: int, follow: Callable[[int, int], bool] | None = None) -> int:
        """Run up to ``count`` innocuous instructions from ``eip`` on the fast path; return how
        many retired (0 without the fast path, or when the code there is not compiled).
        ``follow(eip, pa)`` lets the run go on from one compiled block to the next while it
        says yes (``blocks.CompiledBlocks.run_straight``)."""
        if self.compiled_blocks is None:
            # What the fast path's first step does whatever it then runs: the code page's
            # translation, as a fetch would make it (a TLB miss walks), so that the simulated
            # costs of a VMM's translated code do not depend on the fast path being on.
            s = self._state
            with suppress(Fault):
                self.mmu.translate(s.eip, False, s.cs & 3 == 3)
            return 0
        self.stats.runs += 1
        return self.compiled_blocks.run_straight(count, follow)

    def interpret(self, end: int) -> Exit:
        """The pure interpreter's run loop, until an exit or ``stats.retired`` reaches ``end``."""
        s = self._state
        stats = self.stats
        while True:
            if stats.retired >= end:
                return Budget()
            if s.timer_pending and s.eflags & IF:
                exit: Exit | None = self.take_timer()
                if exit is not None:
                    return exit
                continue
            exit = self.step()
            if exit is not None:
                return exit

    def step(self) -> Exit | None:
        """Execute one instruction (no pending-interrupt check)."""
        s = self._state
        eip = s.eip
        cpl = s.cs & 3
        try:
            insn = self._fetch_cached(eip, cpl) if self.fast else None
            if insn is None:
                insn = self.mmu.fetch(eip, cpl == 3)
            spec = insn.spec
            if spec.opcode in self._intercepted:
                return Intercept(insn, eip)
            if spec.cls is Class.PRIVILEGED:
                if cpl:
                    raise Fault(GP, 0)
            elif spec.cls is Class.IOPL and cpl > (s.eflags >> 12) & 3:
                raise Fault(GP, 0)
            outcome = HANDLERS[spec.opcode](self, insn, eip, (eip + spec.length) & MASK32)
        except Fault as fault:
            return self.exception(fault, eip)
        if outcome is None:
            self.retire(cpl)
            return None
        if outcome is True:
            return None
        assert not isinstance(outcome, bool)
        return outcome

    def _fetch_cached(self, eip: int, cpl: int) -> Instruction | None:
        """The fast path's instruction fetch: the page's translation from the read cache of
        the current mode (fetch needs what a read needs), the decoding from a cache keyed by
        physical address and checked against the bytes (self-modifying code stays exact)."""
        off = self.mmu.read_cache[mode_index(cpl == 3, self._state.cr0)].get(eip >> 12)
        if off is None:
            return None
        pa = eip + off
        data = self.memory.data
        hit = self._decoded.get(pa)
        if hit is not None and data[pa : pa + len(hit[1])] == hit[1]:
            return hit[0]
        spec = BY_OPCODE.get(data[pa])
        if spec is None or (pa & 0xFFF) + spec.length > PAGE_SIZE:
            return None  # undefined or crossing a page: the MMU's fetch decides
        insn = decode(data, pa)
        if insn is not None:
            self._decoded[pa] = (insn, bytes(data[pa : pa + spec.length]))
        return insn

    def retire(self, cpl: int, count: int = 1) -> None:
        """Count ``count`` retired instructions at real ring ``cpl`` (and, in
        ``retired_by_ring``, at the guest ring it stands for: ``Stats.ring_1_counts_as``);
        advance time and the timer.  A VMM that emulates an instruction calls this after
        setting ``eip``, with the real ring the instruction was issued from."""
        s = self._state
        s.tsc += count
        stats = self.stats
        stats.retired += count
        stats.retired_by_real_ring[cpl] += count
        stats.retired_by_ring[stats.ring_1_counts_as if cpl == 1 else cpl] += count
        if s.timer_period and s.tsc >= s.timer_next:
            self.tick()

    def tick(self) -> None:
        # At most one tick is pending; lost ticks do not shift the next one (fixed multiples).
        s = self._state
        s.timer_pending = True
        missed = (s.tsc - s.timer_next) // s.timer_period + 1
        s.timer_next += missed * s.timer_period

    def wait_for_tick(self) -> None:
        """The idle half of ``hlt``: virtual time jumps to the next tick."""
        s = self._state
        s.halted = False
        if s.timer_pending or not s.timer_period:
            return
        self.stats.idle += s.timer_next - s.tsc
        s.tsc = s.timer_next
        self.tick()

    def write_timer(self, period: int) -> None:
        """``out 0x40``: called before the ``out`` retires, so the first tick falls ``period``
        instructions after its retirement.  A pending tick is discarded."""
        s = self._state
        s.timer_period = period & MASK32
        s.timer_pending = False
        s.timer_next = s.tsc + 1 + s.timer_period if s.timer_period else 0

    def expect_in(self, register: int) -> None:
        self._pending_in = register

    def complete_in(self, value: int) -> None:
        """Finish an ``IoIn`` exit: store the port's value in the ``in``'s register."""
        if self._pending_in is None:
            raise RuntimeError("no IO_IN exit is pending")
        self._state.regs[self._pending_in] = value & MASK32
        self._pending_in = None

    def cancel_in(self) -> None:
        """Forget a pending ``IoIn``: the VMM completed it on its own copy of the vCPU, whose
        registers arrive with the next world switch (``context.py``)."""
        self._pending_in = None

    # -- control registers ---------------------------------------------------------------------
    def read_cr(self, n: int) -> int:
        s = self._state
        return {0: s.cr0, 2: s.cr2, 3: s.cr3, 8: s.cr8}[n]

    def write_cr(self, n: int, value: int) -> None:
        s = self._state
        if n == 0:
            new = (value & (CR0_WP | CR0_PG)) | CR0_PE  # only WP and PG are writable
            toggles_pg = (new ^ s.cr0) & CR0_PG
            s.cr0 = new
            if toggles_pg:
                self.mmu.flush()
        elif n == 2:
            s.cr2 = value
        elif n == 3:
            s.cr3 = value
            self.mmu.flush()
        else:
            s.cr8 = value & 0xF

    def flush_tlb(self) -> None:
        self.mmu.flush()

    def invalidate_page(self, linear: int) -> None:
        self.mmu.invalidate(linear)

    # -- events ----------------------------------------------------------------------------------
    def take_timer(self) -> Raised | Shutdown | None:
        """Deliver the pending tick (IF = 1 was checked by the caller)."""
        s = self._state
        if TIMER in self._controls.intercept_vectors:
            s.timer_pending = False  # the VMM owns the tick now (it virtualizes IF)
            return Raised(TIMER, s.eip, tick=True)  # (not the ``int 32`` that may be at eip)
        try:
            self.deliver(TIMER, None, s.eip, software=False)
        except Fault as fault:
            if fault.vector in self._controls.intercept_vectors:
                return self._intercept_exit(fault, s.eip, delivering=TIMER)  # tick stays pending
            s.timer_pending = False  # the tick is consumed; the fault is delivered as itself
            out = self.exception(fault, s.eip)
            if isinstance(out, Raised):  # a VMM took over in the escalation: the tick stays pending
                s.timer_pending = True
                return replace(out, tick=True)
            return out
        s.timer_pending = False
        self.stats.interrupts += 1
        return None

    def software_interrupt(self, vector: int, eip: int, nxt: int) -> Raised | None:
        """``int n``: an intercepted vector exits with ``eip`` at the ``int``; a fault while
        delivering it is raised from the ``int`` (delivered as itself)."""
        self.stats.count_exception(vector)
        if vector in self._controls.intercept_vectors:
            return Raised(vector, eip)
        self.deliver(vector, None, nxt, software=True)
        return None

    def _intercept_exit(
        self, fault: Fault, eip: int, delivering: int | None = None, chain: tuple[int, ...] = ()
    ) -> Raised:
        return Raised(fault.vector, eip, fault.error_code, fault.cr2, delivering, chain)

    def exception(self, fault: Fault, eip: int, *, injected: bool = False) -> Raised | Shutdown | None:
        """Raise ``fault`` for the instruction at ``eip``: deliver it (with #DF and triple-fault
        escalation) or exit if a VMM intercepts its vector.  An ``injected`` fault (a VMM
        reflecting one it intercepted and already counted) is delivered, not intercepted."""
        s = self._state
        vectors = self._controls.intercept_vectors
        if not injected:
            self.stats.count_exception(fault.vector)
            if fault.vector in vectors:
                return self._intercept_exit(fault, eip)
        old_cr2 = s.cr2
        if fault.vector == PF:
            s.cr2 = fault.cr2 or 0
        try:
            self.deliver(fault.vector, fault.error_code, eip, software=False)
            return None
        except Fault as second:
            nested = second
        counted = () if injected else (fault.vector,)
        if nested.vector in vectors:
            s.cr2 = old_cr2
            return self._intercept_exit(nested, eip, delivering=fault.vector, chain=counted)
        if nested.vector == PF:
            s.cr2 = nested.cr2 or 0
        if fault.vector == DF:
            return self._shutdown(nested, fault, eip)
        self.stats.count_exception(DF)
        if DF in vectors:
            s.cr2 = old_cr2
            return self._intercept_exit(Fault(DF, 0), eip, delivering=fault.vector, chain=counted)
        try:
            self.deliver(DF, 0, eip, software=False)
        except Fault as third:
            if third.vector in vectors:
                s.cr2 = old_cr2
                return self._intercept_exit(third, eip, delivering=DF, chain=(*counted, DF))
            return self._shutdown(third, Fault(DF, 0), eip)
        return None

    def _shutdown(self, fault: Fault, delivering: Fault, eip: int) -> Shutdown:
        detail = (
            f"triple fault: {vector_name(fault.vector)} while delivering #DF (instruction at {eip:#x})"
            if delivering.vector == DF
            else f"triple fault at {eip:#x}"
        )
        return Shutdown(fault.vector, eip, detail)

    def deliver(self, vector: int, error_code: int | None, eip: int, *, software: bool) -> None:
        """Enter the IDT gate of ``vector`` pushing ``eip``; raises ``Fault`` with nothing
        changed when the gate is bad or a push faults (docs/machine.md Interrupts, Precise rules)."""
        s = self._state
        mmu = self.mmu
        cpl = s.cs & 3
        gate_error = vector * 8 + 2
        if vector * 8 + 7 > s.idtr_limit:
            raise Fault(GP, gate_error)
        gate = mmu.read_bytes((s.idtr_base + vector * 8) & MASK32, 8, False)
        handler = int.from_bytes(gate[:4], "little")
        attrs = int.from_bytes(gate[4:], "little")
        if not attrs & 0x8000:
            raise Fault(GP, gate_error)
        if software and (attrs >> 13) & 3 < cpl:
            raise Fault(GP, gate_error)
        ring = attrs & 3
        if ring > cpl:
            raise Fault(GP, gate_error)
        esp = s.regs[ESP]
        frame = [s.eflags, s.cs, eip]
        if ring < cpl:  # switch to the TSS stack of the handler's ring
            frame.insert(0, esp)
            esp = mmu.read32((s.tr + 4 + 8 * ring) & MASK32, False)
        if error_code is not None:
            frame.append(error_code)
        esp = (esp - 4 * len(frame)) & MASK32
        blob = b"".join((v & MASK32).to_bytes(4, "little") for v in reversed(frame))
        mmu.write_bytes(esp, blob, False)  # entry pushes are supervisor accesses
        s.regs[ESP] = esp
        s.cs = ring
        s.eip = handler
        if attrs & 0x100:  # interrupt gate
            s.eflags &= ~IF

    def inject(
        self, vector: int, *, error_code: int | None = None, cr2: int | None = None
    ) -> Raised | Shutdown | None:
        """Deliver an exception into the guest as if its current instruction raised it (a VMM
        reflecting a fault it intercepted).  Returns an exit only on shutdown or intercept."""
        code = error_code if error_code is not None or vector not in HAS_ERROR_CODE else 0
        return self.exception(Fault(vector, code, cr2), self._state.eip, injected=True)

    def inject_interrupt(self, vector: int) -> Raised | Shutdown | None:
        """Deliver an external interrupt at the current ``eip`` (a VMM's virtual timer)."""
        s = self._state
        try:
            self.deliver(vector, None, s.eip, software=False)
        except Fault as fault:
            return self.exception(fault, s.eip)
        self.stats.interrupts += 1
        return None
