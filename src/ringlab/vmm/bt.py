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
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from ringlab.machine.exits import Controls, Exit, Raised
from ringlab.machine.faults import GP, PF, TIMER, Fault
from ringlab.machine.interpreter import HANDLERS
from ringlab.machine.memory import PAGE_SHIFT
from ringlab.machine.mmu import mode_index
from ringlab.vmm.emulate import emulate
from ringlab.vmm.events import (
    INT_OPCODE,
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
from ringlab.vmm.translation_cache import Op, TranslationCache, kind_of
from ringlab.vmm.trap_emulate import ALL_VECTORS, instruction_at
from ringlab.vmm.vcpu import Deprivilege

if TYPE_CHECKING:
    from ringlab.vmm.vm import VM

__all__ = ["BinaryTranslation"]


class BinaryTranslation:
    name = TechniqueName.BT.value
    deprivilege: Deprivilege | None = BT_DEPRIVILEGE
    shadow_paging = True

    def __init__(self) -> None:
        self._cache: TranslationCache | None = None
        self.state = TcState()

    def controls(self) -> Controls:
        return Controls(intercept_vectors=ALL_VECTORS)

    @property
    def cache(self) -> TranslationCache:
        """The translation cache (``attach`` makes it, on the VM's shadow page tables)."""
        if self._cache is None:
            raise AssertionError("bt has no translation cache before attach(vm)")
        return self._cache

    def attach(self, vm: VM) -> None:
        shadow = vm.shadow
        assert shadow is not None
        self._cache = cache = TranslationCache(vm.cpu, shadow.protect)

        def written(frame: int) -> None:
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
                    result = port.callout(Op(kind_of(insn), insn, outcome.eip, 0, HANDLERS[insn.spec.opcode]))
                    if result is None and vm.vcpu.cpl == 3:
                        result = port.to_user()
                case VmmCall.USER:
                    result = port.to_user()
            if result is not None:
                return result

    def tc_run(self, vm: VM, reset: bool) -> TcRun:
        """What the pCPU needs to run the translation (``remote.py``)."""
        if reset:  # from now on, keep what the pCPU's cache must learn
            self.cache.track()
        fresh, forgotten = self.cache.take()
        return TcRun(
            vcpu_dict(vm.vcpu),
            vm.counters.shadow_flushes,
            self.state.step_over,
            reset,
            [BlockSpec.of(b) for b in fresh if b.valid],
            forgotten,
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
        dropped translations runs the faulting instruction once uncached (``TcState.step_over``)."""
        dropped = self.cache.invalidations
        fault = vm.shadow_fault(exit, counted=counted)
        if fault is None:
            self.state.step_over = self.cache.invalidations != dropped
            return None
        return vm.reflect_fault(fault, counted=counted)

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
                vm.counters.world_switches += 1
                if vector == TIMER and not _may_be_int(vm, eip):
                    return vm.timer_tick()  # a tick: no need to decode the guest's instruction
                insn = instruction_at(vm, eip)
                is_int = int_vector(insn) == vector
                if vector == TIMER and not is_int:
                    return vm.timer_tick()
                if vector == PF:
                    return self._page_fault(vm, exit, counted=True)
                if is_int and error_code is None:
                    return reflect_software_interrupt(vm, vector, eip, vm.cpu.state.cs & 3)
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
        counters.callouts += 1
        counters.world_switches += 1
        return emulate(self.vm, op.insn, op.eip)

    def to_user(self) -> Exit | Stop:
        result = self.vm.deliver_pending()
        return result if result is not None else YIELD


def _may_be_int(vm: VM, eip: int) -> bool:
    """Could the instruction at ``eip`` be an ``int n``?  False only when its first byte, read
    through the MMU's cache for the current mode, is another opcode (a timer tick, then, not
    ``int 0x20``); True when it is ``int``'s or the page is not in that cache."""
    s = vm.cpu.state
    mmu = vm.cpu.mmu
    off = mmu.read_cache[mode_index(s.cs & 3 == 3, s.cr0)].get(eip >> PAGE_SHIFT)
    return off is None or vm.cpu.memory.data[eip + off] == INT_OPCODE
