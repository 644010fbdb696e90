"""Virtual event delivery: exceptions, interrupts and ``int n`` reflected into the guest.

The VMM delivers through the guest's *virtual* IDT and TSS with the core's own ``deliver``
(gate checks, stack switch, frame, #DF and triple-fault escalation), by running it inside
``guest_view``; afterwards ``Deprivilege.apply`` compresses the new ring (guest ring 0 runs at
real ring 1).  Before that, ``Paging.prepare_delivery`` fills the shadow entries the delivery
touches, so with intercepts off the only faults left are the ones the guest would take natively.
Inside ``guest_view`` the real ``cs`` is the guest's, so its CPL is ``cs & 3`` under every technique.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ringlab.isa import TABLE, Instruction
from ringlab.machine.cpu import vector_name
from ringlab.machine.exits import Exit
from ringlab.machine.faults import GP, Fault
from ringlab.vmm.execute import no_intercepts
from ringlab.vmm.vcpu import count_guest_ring, enter_guest, guest_view, leave_guest

if TYPE_CHECKING:
    from ringlab.vmm.vm import VM

__all__ = [
    "INT_OPCODE",
    "event_reason",
    "int_vector",
    "reflect_exception",
    "reflect_interrupt",
    "reflect_software_interrupt",
]

INT_OPCODE = next(spec.opcode for spec in TABLE if spec.mnemonic == "int")
"""``int n``'s opcode: its first byte, for a check that does not decode (bt's ``_may_be_int``)."""


def int_vector(insn: Instruction | None) -> int | None:
    """``n`` when ``insn`` is ``int n``, else None (another instruction, or none could be fetched).
    The core exits alike on ``int n`` and on an exception or tick of the same vector: this is how
    a VMM tells them apart (and with ``exit.error_code is None``, that the ``int`` itself exited)."""
    if insn is None or insn.spec.mnemonic != "int":
        return None
    (vector,) = insn.operands
    assert isinstance(vector, int)
    return vector


def event_reason(vector: int, software: bool, insn: Instruction | None = None) -> str:
    """Why the guest left for the VMM, for an event it trapped on (``EventCounter.exits``):
    ``"int 0x30"`` for ``int n``; a #GP with the instruction that raised it (``"#GP (cli)"``: a
    trap-and-emulate VMM's trap); else the vector's name (``"#PF"``, ``"timer"``)."""
    if software:
        return f"int {vector:#x}"
    if vector == GP and insn is not None:
        return f"#GP ({insn.mnemonic})"
    return vector_name(vector)


def reflect_exception(vm: VM, fault: Fault, *, counted: bool) -> Exit | None:
    """The guest's current instruction raised ``fault``: deliver it (``counted``: the core
    already counted it when it exited; otherwise count it here, as the CPU would)."""
    cpu = vm.cpu
    if not counted:
        cpu.stats.count_exception(fault.vector)
    vm.counters.reflected += 1
    with guest_view(cpu.state, vm.vcpu, vm.deprivilege):
        vm.paging.prepare_delivery(fault.vector, cpu.state.cs & 3)
        with no_intercepts(cpu):
            exit = cpu.inject(fault.vector, error_code=fault.error_code, cr2=fault.cr2)
    count_guest_ring(cpu.stats, vm.vcpu, vm.deprivilege)
    return exit


def reflect_interrupt(vm: VM, vector: int) -> Exit | None:
    """An external interrupt (the virtual timer) at the current ``eip``: ``Cpu.inject_interrupt``
    done in two steps, so intercepts are switched off only when delivering it faults (the one
    part that consults them).  Every timer tick comes this way, so ``guest_view`` is unrolled
    here too (``enter_guest`` / ``leave_guest``)."""
    cpu = vm.cpu
    s = cpu.state
    vm.counters.reflected += 1
    policy = vm.deprivilege
    if policy is not None:
        enter_guest(s, vm.vcpu)
    try:
        vm.paging.prepare_delivery(vector, s.cs & 3)
        try:
            cpu.deliver(vector, None, s.eip, software=False)
        except Fault as fault:
            with no_intercepts(cpu):
                return cpu.exception(fault, s.eip)
        cpu.stats.interrupts += 1
        return None
    finally:
        if policy is not None:
            leave_guest(s, vm.vcpu, policy)
            count_guest_ring(cpu.stats, vm.vcpu, policy)


def reflect_software_interrupt(vm: VM, vector: int, eip: int, ring: int) -> Exit | None:
    """``int n`` at ``eip`` (already counted by the core, or by the caller): deliver it and
    retire it at real ring ``ring`` (the ring it was issued from); a fault while delivering it
    is raised as itself."""
    cpu = vm.cpu
    vm.counters.reflected += 1
    exit: Exit | None = None
    delivered = False
    with guest_view(cpu.state, vm.vcpu, vm.deprivilege):
        vm.paging.prepare_delivery(vector, cpu.state.cs & 3)
        with no_intercepts(cpu):
            try:
                cpu.deliver(vector, None, (eip + 2) & 0xFFFFFFFF, software=True)
                delivered = True
            except Fault as fault:  # the int does not retire: the fault is delivered instead
                exit = cpu.exception(fault, eip)
    if delivered:
        cpu.retire(ring)
    count_guest_ring(cpu.stats, vm.vcpu, vm.deprivilege)  # after the retirement, at the old ring
    return exit
