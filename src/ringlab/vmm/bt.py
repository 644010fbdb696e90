"""``bt``: full virtualization by binary translation (VMware's kernel-mode BT).

User code (ring 3) runs directly on the core, fast path included; every exception, interrupt
and ``int n`` exits and is reflected into the guest kernel.  Guest kernel code (ring 0, run at
real ring 1) never runs directly: the VMM executes its translation from the translation cache
(``translation_cache.py``) - innocuous instructions as they are, sensitive ones inline against
the virtual CPU, privileged ones as callouts.  So, unlike trap-and-emulate, nothing sensitive
escapes: ``popf`` restores the virtual IF, ``pushf`` shows it, ``iret`` to user mode restores it,
and the guest is equivalent to native, virtual time included.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ringlab.isa import TABLE
from ringlab.machine.exits import Controls, Exit, ExitReason
from ringlab.machine.faults import GP, PF, TIMER, Fault
from ringlab.machine.memory import PAGE_SHIFT
from ringlab.machine.mmu import mode_index
from ringlab.vmm.emulate import emulate, privilege_fault
from ringlab.vmm.events import reflect_exception, reflect_interrupt, reflect_software_interrupt
from ringlab.vmm.execute import execute
from ringlab.vmm.technique import Stop
from ringlab.vmm.translation_cache import Block, Kind, TranslationCache
from ringlab.vmm.trap_emulate import ALL_VECTORS, instruction_at
from ringlab.vmm.vcpu import Deprivilege, guest_view

if TYPE_CHECKING:
    from ringlab.vmm.vm import VM

__all__ = ["BinaryTranslation"]

_STRAIGHT = 3
"""Runs of at least this many innocuous kernel instructions go to the core's compiled code."""
_YIELD = Exit(ExitReason.BUDGET)
"""Back to the VMM loop (the guest changed mode, or the budget ran out)."""
_DIRECT = Kind.DIRECT
_INT = next(spec.opcode for spec in TABLE if spec.mnemonic == "int")


class BinaryTranslation:
    name = "bt"
    deprivilege: Deprivilege | None = Deprivilege(vmm_tables=False, user_flags_direct=True)
    shadow_paging = True

    def __init__(self) -> None:
        self.cache: TranslationCache | None = None
        self._step_over_write = False
        """The last hidden fault dropped translations: run the faulting instruction once from
        an uncached translation, so it is not write-protected again before it writes."""

    def controls(self) -> Controls:
        return Controls(intercept_vectors=ALL_VECTORS)

    def attach(self, vm: VM) -> None:
        shadow = vm.shadow
        assert shadow is not None
        self.cache = TranslationCache(vm.cpu, shadow.protect)

        def written(frame: int) -> None:
            assert self.cache is not None
            self.cache.invalidate_frame(frame)
            shadow.unprotect(frame)

        shadow.on_protected_write = written

    # -- running -------------------------------------------------------------------------------
    def run(self, vm: VM, budget: int) -> Exit | Stop:
        if vm.vcpu.cpl == 3:
            return vm.run_core(budget)  # user code: directly on the core
        exit = self._run_translated(vm, vm.cpu.stats.retired + budget)
        self._publish(vm)
        return exit

    def _run_translated(self, vm: VM, end: int) -> Exit | Stop:
        """Execute the guest kernel's translation until it leaves ring 0, exits or ``end``."""
        cpu, vcpu, counters = vm.cpu, vm.vcpu, vm.counters
        s, stats = cpu.state, cpu.stats
        cache = self.cache
        assert cache is not None
        follow, run_straight = cache.follow, cpu.run_straight
        previous: Block | None = None
        while True:
            if stats.retired >= end:
                return _YIELD
            try:
                if self._step_over_write:
                    self._step_over_write = False
                    block = cache.single(s.eip)
                else:
                    block = cache.lookup(s.eip, previous, counters.shadow_flushes)
            except Fault as fault:
                result = self._fault(vm, fault)
                if result is not None:
                    return result
                previous = None
                if vcpu.cpl == 3:
                    return _YIELD
                continue
            previous = block
            ops, runs, tails, i = block.ops, block.direct_runs, block.tails, 0
            while i < len(ops):
                op = ops[i]
                if s.timer_pending:  # a tick fell: the VMM holds it until the virtual IF allows
                    s.timer_pending = False
                    vcpu.pending_tick = True
                if vcpu.pending_tick and vcpu.interrupts_enabled:
                    vcpu.pending_tick = False
                    result = reflect_interrupt(vm, TIMER)
                    if result is not None:
                        return result
                    previous = None
                    break
                if (
                    stats.retired >= end
                    or not block.valid
                    or s.eip != op.eip
                    or (i and block.source is not None and not cache.unchanged(block))
                ):
                    # (a self-checking block is compared again once some of it has run: an
                    # instruction may have written the block's own code, with no fault to say so)
                    previous = None
                    break
                kind = op.kind
                if kind is _DIRECT:
                    if tails[i]:
                        # Innocuous instructions translate to themselves: the rest of a block
                        # of nothing else up to its branch runs on the core's compiled code (the
                        # simulated hardware's speed, not the VMM's work), may loop there, and
                        # goes on into the blocks it is chained to while they are all DIRECT
                        # too (``cache.follow``).
                        cache.current = block
                        if run_straight(end - stats.retired, follow):
                            block = previous = cache.current
                            j = block.index.get(s.eip)
                            if j is None:  # it branched out of its last block
                                break
                            ops, runs, tails, i = block.ops, block.direct_runs, block.tails, j
                            continue
                    elif runs[i] >= _STRAIGHT:  # a run of innocuous instructions in a block
                        done = run_straight(min(runs[i], end - stats.retired))
                        if done:
                            i += done
                            continue
                    try:
                        outcome = op.handler(cpu, op.insn, op.eip, op.nxt)
                    except Fault as fault:
                        result = self._fault(vm, fault)
                        if result is not None:
                            return result
                        previous = None
                        break
                    if outcome is None:
                        cpu.retire(1)
                    elif isinstance(outcome, Exit):
                        return outcome  # pragma: no cover - innocuous handlers do not exit
                    i += 1
                    continue
                i += 1
                counters.handled(op.insn.mnemonic, kind.value)
                if kind is Kind.INLINE:
                    if privilege_fault(vm, op.insn):  # cli/sti above the guest's IOPL
                        result = reflect_exception(vm, Fault(GP, 0), counted=False)
                        if result is not None:
                            return result
                        previous = None
                        break
                    with guest_view(s, vcpu, self.deprivilege):
                        result = execute(cpu, op.insn, op.eip, 1)
                else:
                    counters.callouts += 1
                    counters.world_switches += 1
                    result = emulate(vm, op.insn, op.eip)
                if result is not None:
                    return result
                if vcpu.cpl == 3:
                    result = vm.deliver_pending()
                    return result if result is not None else _YIELD
            if vcpu.cpl == 3:
                return _YIELD

    def _fault(self, vm: VM, fault: Fault) -> Exit | Stop | None:
        """A fault raised by translated code (or by fetching it) at ``eip``."""
        if fault.vector == PF:
            assert self.cache is not None
            dropped = self.cache.invalidations
            hidden = vm.paging.page_fault(
                Exit(ExitReason.EXCEPTION, vector=PF, error_code=fault.error_code, cr2=fault.cr2)
            )
            if hidden is None:
                self._step_over_write = self.cache.invalidations != dropped
                return None
            fault = hidden
        result = reflect_exception(vm, fault, counted=False)
        return result

    def _publish(self, vm: VM) -> None:
        cache, counters = self.cache, vm.counters
        assert cache is not None
        counters.translations = cache.translations
        counters.translated_instructions = cache.translated_instructions
        counters.cache_hits = cache.hits
        counters.chained = cache.chained
        counters.cache_invalidations = cache.invalidations

    # -- exits -------------------------------------------------------------------------------
    def handle(self, vm: VM, exit: Exit) -> Exit | Stop | None:
        vm.sync()
        match exit.reason:
            case ExitReason.BUDGET:
                return None
            case ExitReason.IO_OUT:  # from a callout
                return vm.device_out(exit)
            case ExitReason.IO_IN:
                vm.device_in(exit)
                return None
            case ExitReason.HALT:
                return Stop("halt", None, exit.detail)
            case ExitReason.SHUTDOWN:
                return Stop("shutdown", None, exit.detail)
            case ExitReason.EXCEPTION:
                vm.counters.world_switches += 1
                vector, eip = exit.vector, exit.eip
                assert vector is not None and eip is not None
                if vector == TIMER and not _may_be_int(vm, eip):
                    return vm.timer_tick()  # a tick: no need to decode the guest's instruction
                insn = instruction_at(vm, eip)
                is_int = insn is not None and insn.mnemonic == "int" and insn.operands == (vector,)
                if vector == TIMER and not is_int:
                    return vm.timer_tick()
                if vector == PF:
                    assert self.cache is not None
                    dropped = self.cache.invalidations
                    fault = vm.paging.page_fault(exit)
                    if fault is None:
                        vm.hide(PF)
                        self._step_over_write = self.cache.invalidations != dropped
                        return None
                    if fault.vector != PF:
                        vm.hide(PF)
                    return reflect_exception(vm, fault, counted=fault.vector == PF)
                if is_int and exit.error_code is None:
                    return reflect_software_interrupt(vm, vector, eip, vm.cpu.state.cs & 3)
                return reflect_exception(vm, Fault(vector, exit.error_code, exit.cr2), counted=True)
            case _:
                raise AssertionError(f"unexpected exit under bt: {exit}")


def _may_be_int(vm: VM, eip: int) -> bool:
    """Could the instruction at ``eip`` be an ``int n``?  False only when its first byte, read
    through the MMU's cache for the current mode, is another opcode (a timer tick, then, not
    ``int 0x20``); True when it is ``int``'s or the page is not in that cache."""
    s = vm.cpu.state
    mmu = vm.cpu.mmu
    off = mmu.read_cache[mode_index(s.cs & 3 == 3, s.cr0)].get(eip >> PAGE_SHIFT)
    return off is None or vm.cpu.memory.data[eip + off] == _INT
