"""``trap-emulate``: the classical VMM (Popek and Goldberg), on a machine that breaks its rule.

The guest kernel is deprivileged to ring 1 (real IF = 1 so the VMM keeps the timer, IOPL = 0 so
port I/O traps, the real IDT/GDT/TR are the VMM's).  Every exception, interrupt and ``int n``
exits, and is reflected through the guest's virtual IDT.  Privileged and IOPL-sensitive
instructions trap (#GP) and are emulated against the virtual state.  The sensitive-unprivileged
ones (``pushf popf sgdt sidt str smsw``, ``mov r, cs``, ``iret`` to ring 3) do not trap: they run
against the real state and the guest visibly misbehaves; ``diagnostics.py`` records each.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ringlab.isa import MASK32, Class
from ringlab.machine.exits import Controls, Exit, Intercept, Raised
from ringlab.machine.faults import GP, PF, TIMER, Fault
from ringlab.vmm.diagnostics import PROBED, observe
from ringlab.vmm.emulate import emulate
from ringlab.vmm.events import event_reason, int_vector, reflect_exception, reflect_software_interrupt
from ringlab.vmm.execute import execute
from ringlab.vmm.technique import Stop, TechniqueName
from ringlab.vmm.vcpu import Deprivilege, count_guest_ring

if TYPE_CHECKING:
    from ringlab.isa import Instruction
    from ringlab.vmm.vm import VM

__all__ = ["TrapEmulate", "instruction_at"]

ALL_VECTORS = frozenset(range(256))
_ESP = 4


def instruction_at(vm: VM, eip: int) -> Instruction | None:
    try:
        return vm.cpu.mmu.fetch(eip, vm.cpu.state.cs & 3 == 3)
    except Fault:
        return None


def allowed_natively(vm: VM, insn: Instruction) -> bool:
    """Would the guest's own CPL/IOPL let it run ``insn``?  Then a #GP is the VMM's to emulate."""
    v = vm.vcpu
    cls = insn.spec.cls
    if cls is Class.PRIVILEGED:
        return v.cpl == 0
    if cls is Class.IOPL:
        return v.cpl <= (v.flags >> 12) & 3
    return insn.mnemonic == "iret" and v.cpl == 0  # iret to guest ring 0 = real ring 1 < ... traps


class TrapEmulate:
    name = TechniqueName.TRAP_EMULATE.value
    deprivilege: Deprivilege | None = Deprivilege(vmm_tables=True, user_flags_direct=False)
    shadow_paging = True

    def controls(self) -> Controls:
        return Controls(intercept_vectors=ALL_VECTORS, intercept_mnemonics=PROBED)

    def attach(self, vm: VM) -> None:
        count_guest_ring(vm.cpu.stats, vm.vcpu, vm.deprivilege)  # the kernel starts in guest ring 0

    def run(self, vm: VM, budget: int) -> Exit:
        return vm.runner.run_core(vm, budget)

    def handle(self, vm: VM, exit: Exit) -> Exit | Stop | None:
        cpu = vm.cpu
        vm.sync()
        match exit:
            case Intercept(instruction=probed, eip=eip):  # a probe: not a trap, not an exit, just watched
                if probed.mnemonic == "iret" and _iret_between_kernel_rings(vm):
                    return self._emulate(vm, probed, eip)
                observe(vm, probed, eip)
                result = execute(cpu, probed, eip, cpu.state.cs & 3)
                vm.sync()
                return result
            case Raised(vector=vector, eip=eip, error_code=error_code):
                insn = instruction_at(vm, eip)
                is_int = int_vector(insn) == vector and not (vector == TIMER and exit.tick)
                vm.counters.world_switch(event_reason(vector, is_int and error_code is None, insn))
                if vector == TIMER and not is_int:
                    return vm.timer_tick()
                if is_int and error_code is None:  # ``int n``, ``int 14`` included: not a #PF
                    return reflect_software_interrupt(vm, vector, eip, cpu.state.cs & 3)
                if vector == PF:
                    fault = vm.shadow_fault(exit)
                    return None if fault is None else vm.reflect_fault(fault)
                if vector == GP and insn is not None and error_code == 0 and allowed_natively(vm, insn):
                    vm.hide(GP)
                    return self._emulate(vm, insn, eip)
                return reflect_exception(vm, Fault(vector, error_code, exit.cr2), counted=True)
            case _:  # an I/O exit comes from an emulated in/out
                return vm.common_exit(exit)

    @staticmethod
    def _emulate(vm: VM, insn: Instruction, eip: int) -> Exit | Stop | None:
        """Emulate ``insn`` against the virtual state (it trapped, or it is an ``iret`` between
        kernel rings), then deliver a tick it let through."""
        vm.counters.traps[insn.mnemonic] += 1
        vm.counters.handled(insn.mnemonic, "trap")
        result = emulate(vm, insn, eip)
        if result is not None:
            return result
        return vm.deliver_pending()


def _iret_between_kernel_rings(vm: VM) -> bool:
    """Is the ``iret`` about to run one that returns to a guest kernel ring (0-2) without
    faulting at the real ring?  Ring compression runs guest rings 0 and 1 both at real ring 1,
    and the real ``iret`` applies the real ring's rules (no stack switch from ring 0 to 1, the
    VMM's IF and IOPL kept), so such an ``iret`` would change or keep the guest's ring behind the
    VMM's back: the VMM emulates it against the virtual state instead (its probe sees every
    ``iret``).  One that faults at the real ring (a return inward) traps as #GP as before, and
    one to ring 3 runs on the real state (the Popek-Goldberg flaw ``diagnostics`` records)."""
    s = vm.cpu.state
    try:
        target = vm.cpu.mmu.read32((s.regs[_ESP] + 4) & MASK32, s.cs & 3 == 3) & 3
    except Fault:  # the frame's page faults: the real iret raises it, as it would
        return False
    return s.cs & 3 <= target < 3
