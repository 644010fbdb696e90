"""``bt``: full virtualization by binary translation (VMware's kernel-mode BT).

User code (ring 3) runs directly on the core, fast path included; every exception, interrupt
and ``int n`` exits and is reflected into the guest kernel.  Guest kernel code (ring 0, run at
real ring 1) never runs directly: the VMM executes its translation from the translation cache
(``translation_cache.py``) - innocuous instructions as they are, sensitive ones inline against
the virtual CPU, privileged ones as callouts.  So, unlike trap-and-emulate, nothing sensitive
escapes: ``popf`` restores the virtual IF, ``pushf`` shows it, ``iret`` to user mode restores it,
and the guest is equivalent to native, virtual time included.

The loop that runs the translation is ``translated.py``: in-process it calls this VMM directly;
through the services it runs on the pCPU (the VM's ``CoreRunner.run_translated``) and each call
into the VMM comes back here as an event (``_run_remote``).

Traced page tables and adaptive translation (Adams & Agesen 2006, sections 4.2 and 6's ptemod):
as VMware's VMM does, bt write-protects the guest page tables its shadow mirrors (the directory
and the page table a hidden page fault read), so a guest kernel that rewrites an entry traps
into the VMM, which makes the write itself (``traced_writes``).  Ringlab's shadow is exact
under the machine's TLB rule (``shadow.py``: the guest's ``invlpg`` and cr3 writes keep it
coherent), so the write changes no shadow entry; what is modelled is the trap and its price.
An instruction that traps ``ADAPT_AFTER`` times is translated again as an ``ADAPTIVE`` callout
(``TranslationCache.adapt``), which makes the write without the trap.  Traces belong to the
current shadow: a shadow flush (a guest cr3 write) ends them, and a page-table page written
other than from translated kernel code (user code, an event's stack frame) stops being traced
until the next flush.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from ringlab.isa import MASK32, Form, Instruction, Mem
from ringlab.machine.exits import Controls, Exit, Raised
from ringlab.machine.faults import GP, PF, TIMER, Fault
from ringlab.machine.interpreter import HANDLERS, effective_address
from ringlab.machine.memory import PAGE_SHIFT
from ringlab.machine.mmu import mode_index
from ringlab.machine.state import CR0_PG, CpuState
from ringlab.vmm.emulate import emulate, run_with_wp_lifted
from ringlab.vmm.events import (
    INT_OPCODE,
    event_reason,
    int_vector,
    reflect_exception,
    reflect_interrupt,
    reflect_software_interrupt,
)
from ringlab.vmm.technique import Stop, TechniqueName
from ringlab.vmm.translated import (
    BT_DEPRIVILEGE,
    YIELD,
    BlockSpec,
    TcReport,
    TcRun,
    TcState,
    ToVmm,
    VmmCall,
    load_vcpu,
    run_translated,
    vcpu_dict,
)
from ringlab.vmm.translation_cache import Kind, Op, TranslationCache, kind_of
from ringlab.vmm.trap_emulate import ALL_VECTORS, instruction_at
from ringlab.vmm.vcpu import Deprivilege, count_guest_ring

if TYPE_CHECKING:
    from ringlab.vmm.vm import VM

__all__ = ["ADAPT_AFTER", "BinaryTranslation"]

ADAPT_AFTER = 4
"""Traps on traced page tables at one instruction after which it becomes an adaptive callout."""
_P, _W, _U = 1, 2, 4
_FRAME = 0xFFFFF000
_ESP = 4
_STORES = frozenset({Form.M, Form.MR, Form.MI, Form.M8R})
"""Forms whose first operand is memory the instruction writes (``inc``/``dec``/``neg``/``not``
[m], ``mov``/``add``... [m], r|imm, ``mov byte [m], r``); ``lgdt``/``lidt``/``invlpg`` [m] read
or name memory, but they are callouts, never adaptive."""


class BinaryTranslation:
    name = TechniqueName.BT.value
    deprivilege: Deprivilege | None = BT_DEPRIVILEGE
    shadow_paging = True

    def __init__(self) -> None:
        self._cache: TranslationCache | None = None
        self.state = TcState()
        self.traced: set[int] = set()
        """Host frame numbers of the guest page tables being traced (write-protected)."""
        self._given_up: set[int] = set()
        """Page-table frames written other than by translated code: not traced again before
        the next shadow flush (a page table the guest's user code may write, say)."""
        self._traced_under = 0
        """The shadow flush the traces were made after (``EventCounter.shadow_flushes``)."""
        self.traps_at: Counter[int] = Counter()
        """Guest eip -> writes to traced page tables that trapped there."""

    def controls(self) -> Controls:
        return Controls(intercept_vectors=ALL_VECTORS)

    @property
    def cache(self) -> TranslationCache:
        """The translation cache (``attach`` makes it, on the VM's shadow page tables)."""
        if self._cache is None:
            raise AssertionError("bt has no translation cache before attach(vm)")
        return self._cache

    def attach(self, vm: VM) -> None:
        count_guest_ring(vm.cpu.stats, vm.vcpu, vm.deprivilege)  # the kernel starts in guest ring 0
        shadow = vm.shadow
        assert shadow is not None
        self._cache = cache = TranslationCache(vm.cpu, shadow.protect)

        def written(frame: int) -> None:
            if frame in self.traced:  # a page table written other than by translated code
                self.traced.discard(frame)
                self._given_up.add(frame)
                if not cache.holds_code(frame):
                    shadow.unprotect(frame)
                    return
            cache.invalidate_frame(frame)
            shadow.unprotect(frame)

        shadow.on_protected_write = written

    # -- running -------------------------------------------------------------------------------
    def run(self, vm: VM, budget: int) -> Exit | Stop:
        if vm.vcpu.cpl == 3:
            return vm.runner.run_core(vm, budget)  # user code: directly on the core
        end = vm.cpu.stats.retired + budget
        port = _VmmPort(self, vm)
        if not vm.runner.remote:  # in-process: the translation runs beside the VMM
            exit = run_translated(vm, self.cache, port, end, self.state, lambda: vm.counters.shadow_flushes)
        else:
            exit = self._run_remote(vm, port, end)
        self._publish(vm)
        return exit

    def _run_remote(self, vm: VM, port: _VmmPort, end: int) -> Exit | Stop:
        """The translation runs on the pCPU; each call it makes into the VMM comes back here as
        an event, is answered on this copy of the vCPU, and the translation runs on."""
        stats = vm.cpu.stats
        while True:
            if vm.vcpu.cpl == 3 or stats.retired >= end:
                return YIELD
            outcome = vm.runner.run_translated(vm, end - stats.retired)
            if not isinstance(outcome, ToVmm):
                return outcome
            result: Exit | Stop | None
            match outcome.event:
                case VmmCall.MISS:
                    try:
                        self.cache.translate_for_peer(outcome.eip, vm.counters.shadow_flushes)
                        result = None
                    except Fault as fault:
                        result = port.fault(fault)
                case VmmCall.FAULT:
                    assert outcome.fault is not None
                    result = port.fault(outcome.fault)
                case VmmCall.TICK:
                    result = port.tick()
                case VmmCall.PRIVILEGED:
                    result = port.privileged()
                case VmmCall.CALLOUT:
                    assert outcome.insn is not None
                    insn = outcome.insn
                    kind = kind_of(insn, self.cache.adapted, outcome.eip)
                    nxt = (outcome.eip + insn.length) & MASK32
                    result = port.callout(Op(kind, insn, outcome.eip, nxt, HANDLERS[insn.spec.opcode]))
                    if result is None and vm.vcpu.cpl == 3:
                        result = port.to_user()
                case VmmCall.USER:
                    result = port.to_user()
                case VmmCall.RESET:  # the runner resets the pCPU's cache on its next run
                    result = None
            if result is not None:
                return result

    def tc_run(self, vm: VM, reset: bool) -> TcRun:
        """What the pCPU needs to run the translation (``remote.py``)."""
        if reset:  # from now on, keep what the pCPU's cache must learn
            self.cache.track()
        fresh, forgotten = self.cache.take()
        adapted = sorted(self.cache.adapted) if reset else self.cache.take_adapted()
        return TcRun(
            vcpu_dict(vm.vcpu),
            vm.counters.shadow_flushes,
            self.state.step_over,
            reset,
            [BlockSpec.of(b) for b in fresh if b.valid],
            forgotten,
            adapted,
        )

    def tc_report(self, vm: VM, report: TcReport) -> None:
        """What the pCPU's run of the translation changed and counted."""
        cache = self.cache
        load_vcpu(vm.vcpu, report.vcpu)
        self.state.step_over = report.step_over
        cache.hits += report.counts.get("hits", 0)
        cache.chained += report.counts.get("chained", 0)
        cache.self_checks += report.counts.get("self_checks", 0)
        cache.invalidations += report.counts.get("invalidations", 0)
        vm.counters.indirect_lookups += report.counts.get("indirect_lookups", 0)
        for key in report.dropped:
            cache.forget(key)
        for mnemonic, kinds in report.handled.items():
            for how, n in kinds.items():
                vm.counters.sensitive.setdefault(mnemonic, Counter())[how] += n

    def _fault(self, vm: VM, fault: Fault) -> Exit | Stop | None:
        """A fault raised by translated code (or by fetching it) at ``eip``: the core did not
        count it (the VMM ran the code), so delivering it counts it."""
        if fault.vector == PF:
            exit = Raised(PF, vm.cpu.state.eip, fault.error_code, fault.cr2)
            return self._page_fault(vm, exit, counted=False)
        return reflect_exception(vm, fault, counted=False)

    def _page_fault(self, vm: VM, exit: Raised, *, counted: bool) -> Exit | Stop | None:
        """Shadow paging's one #PF decision (``VM.shadow_fault``, ``VM.reflect_fault``), for a #PF
        the core exited on (``counted``) or one translated code raised.  A hidden fault that
        dropped translations runs the faulting instruction once uncached (``TcState.step_over``).
        Translated code's write to a traced page table is the VMM's to make (``_traced_write``);
        a hidden fault that filled the shadow traces the page tables it read (``_trace``)."""
        self._untrace_if_flushed(vm)
        if not counted and self._is_traced_write(vm, exit):
            return self._traced_write(vm)
        dropped = self.cache.invalidations
        fault = vm.shadow_fault(exit, counted=counted)
        if fault is None:
            self.state.step_over = self.cache.invalidations != dropped
            self._trace(vm, exit.cr2 or 0)
            return None
        return vm.reflect_fault(fault, counted=counted)

    # -- traced page tables and adaptive translation -------------------------------------------
    def _trace(self, vm: VM, linear: int) -> None:
        """Write-protect the guest page directory and page table that map ``linear`` (what the
        hidden fault just read), unless translations came from them (they are protected then)."""
        shadow = vm.shadow
        assert shadow is not None
        if not shadow.cr0 & CR0_PG:
            return
        try:
            directory = vm.p2m.translate(shadow.cr3 & _FRAME, False)
            pde = vm.cpu.memory.read32(directory + ((linear >> 22) & 0x3FF) * 4)
            frames = [directory >> PAGE_SHIFT]
            if pde & _P:
                frames.append(vm.p2m.translate(pde & _FRAME, False) >> PAGE_SHIFT)
        except Fault:  # the guest's cr3 or PDE points beyond its RAM: nothing to trace
            return
        for frame in frames:
            if frame not in self.traced and frame not in self._given_up and not self.cache.holds_code(frame):
                self.traced.add(frame)
                shadow.protect(frame)

    def _untrace_if_flushed(self, vm: VM) -> None:
        """Traces belong to the shadow that read the tables: a flush ends them all."""
        flushes = vm.counters.shadow_flushes
        if flushes == self._traced_under:
            return
        self._traced_under = flushes
        shadow = vm.shadow
        assert shadow is not None
        for frame in self.traced:
            if not self.cache.holds_code(frame):
                shadow.unprotect(frame)
        self.traced.clear()
        self._given_up.clear()

    def _is_traced_write(self, vm: VM, exit: Raised) -> bool:
        """Is this #PF a kernel write, allowed by the guest's own tables, to a traced page table
        (and to nothing translations came from)?"""
        if exit.vector != PF or (exit.error_code or 0) & (_P | _W | _U) != _P | _W or not self.traced:
            return False
        shadow = vm.shadow
        assert shadow is not None
        try:
            frame, _ = shadow.walk(exit.cr2 or 0, True, False)
        except Fault:  # the guest's own fault: reflected as usual
            return False
        frame >>= PAGE_SHIFT
        return frame in self.traced and not self.cache.holds_code(frame)

    def _traced_write(self, vm: VM) -> Exit | Stop | None:
        """Translated code wrote a traced page table and trapped: the VMM makes the write (the
        instruction, with the trace's write protection lifted) and counts the trap; after
        ``ADAPT_AFTER`` traps at one instruction it is translated again as a callout."""
        counters = vm.counters
        counters.world_switch("traced write")
        counters.traced_writes += 1
        eip = vm.cpu.state.eip
        self.traps_at[eip] += 1
        if self.traps_at[eip] >= ADAPT_AFTER:
            self.cache.adapt(eip)
        insn = instruction_at(vm, eip)
        assert insn is not None, "the instruction that just faulted can be fetched"
        return self._write_lifted(vm, insn, eip)

    def _adaptive_callout(self, vm: VM, op: Op) -> Exit | Stop | None:
        """An ``ADAPTIVE`` op: the instruction run by the VMM, which writes a traced page table
        itself (no trap), and any other target as the instruction would."""
        cpu = vm.cpu
        linear = _written_address(cpu.state, op.insn)
        if linear is not None and self._is_traced_write(vm, Raised(PF, op.eip, _P | _W, linear)):
            return self._write_lifted(vm, op.insn, op.eip)
        try:
            outcome = op.handler(cpu, op.insn, op.eip, op.nxt)
        except Fault as fault:
            return self._fault(vm, fault)
        if outcome is None:
            cpu.retire(cpu.state.cs & 3)
        return None

    def _write_lifted(self, vm: VM, insn: Instruction, eip: int) -> Exit | Stop | None:
        """Run ``insn`` with the real cr0.WP off: the shadow entries of a traced page table are
        read-only only to trap the guest's writes, which the guest's own tables allow (checked
        by ``_is_traced_write``).  It retires at the ring translated code runs at."""
        cpu = vm.cpu
        try:
            outcome = run_with_wp_lifted(cpu, insn, eip)
        except Fault as fault:  # another access of the instruction's faulted: as usual
            return self._fault(vm, fault)
        if outcome is None:
            cpu.retire(cpu.state.cs & 3)
        return None

    def _publish(self, vm: VM) -> None:
        cache, counters = self.cache, vm.counters
        counters.translations = cache.translations
        counters.translated_instructions = cache.translated_instructions
        counters.cache_hits = cache.hits
        counters.chained = cache.chained
        counters.cache_invalidations = cache.invalidations

    # -- exits -------------------------------------------------------------------------------
    def handle(self, vm: VM, exit: Exit) -> Exit | Stop | None:
        vm.sync()
        match exit:
            case Raised(vector=vector, eip=eip, error_code=error_code):
                if vector == TIMER and (exit.tick or not _may_be_int(vm, eip)):
                    vm.counters.world_switch(event_reason(TIMER, False))
                    return vm.timer_tick()  # a tick: no need to decode the guest's instruction
                insn = instruction_at(vm, eip)
                is_int = int_vector(insn) == vector
                vm.counters.world_switch(event_reason(vector, is_int and error_code is None, insn))
                if vector == TIMER and not is_int:
                    return vm.timer_tick()
                if is_int and error_code is None:  # ``int n``, ``int 14`` included: not a #PF
                    return reflect_software_interrupt(vm, vector, eip, vm.cpu.state.cs & 3)
                if vector == PF:
                    return self._page_fault(vm, exit, counted=True)
                return reflect_exception(vm, Fault(vector, error_code, exit.cr2), counted=True)
            case _:  # an I/O exit comes from a callout
                return vm.common_exit(exit)


class _VmmPort:
    """Translated code's calls into the VMM, answered by the VMM (``translated.Port``)."""

    def __init__(self, bt: BinaryTranslation, vm: VM) -> None:
        self.bt, self.vm = bt, vm

    def fault(self, fault: Fault) -> Exit | Stop | None:
        return self.bt._fault(self.vm, fault)

    def tick(self) -> Exit | Stop | None:
        self.vm.vcpu.pending_tick = False
        return reflect_interrupt(self.vm, TIMER)

    def privileged(self) -> Exit | Stop | None:  # cli/sti above the guest's IOPL
        return reflect_exception(self.vm, Fault(GP, 0), counted=False)

    def callout(self, op: Op) -> Exit | Stop | None:
        counters = self.vm.counters
        adaptive = "adaptive " if op.kind is Kind.ADAPTIVE else ""
        counters.world_switch(f"{adaptive}callout {op.insn.mnemonic}")
        counters.callouts += 1
        if op.kind is Kind.ADAPTIVE:
            return self.bt._adaptive_callout(self.vm, op)
        result = emulate(self.vm, op.insn, op.eip)
        self.bt._untrace_if_flushed(self.vm)  # a cr3 or cr0 write flushes the shadow
        return result

    def to_user(self) -> Exit | Stop:
        result = self.vm.deliver_pending()
        return result if result is not None else YIELD


def _written_address(s: CpuState, insn: Instruction) -> int | None:
    """The linear address ``insn`` stores to (its memory operand, or the stack for a push or a
    call), None if it stores nothing."""
    if insn.spec.form in _STORES:
        mem = insn.operands[0]
        assert isinstance(mem, Mem)
        return effective_address(s.regs, mem)
    if insn.mnemonic in ("push", "call"):
        return (s.regs[_ESP] - 4) & MASK32
    return None


def _may_be_int(vm: VM, eip: int) -> bool:
    """Could the instruction at ``eip`` be an ``int n``?  False only when its first byte, read
    through the MMU's cache for the current mode, is another opcode (a timer tick, then, not
    ``int 0x20``); True when it is ``int``'s or the page is not in that cache."""
    s = vm.cpu.state
    mmu = vm.cpu.mmu
    off = mmu.read_cache[mode_index(s.cs & 3 == 3, s.cr0)].get(eip >> PAGE_SHIFT)
    return off is None or vm.cpu.memory.data[eip + off] == INT_OPCODE
