"""Emulation of privileged instructions against the virtual CPU state.

Shared by every technique that must emulate (trap-emulate after a #GP, bt in a callout, hw on a
VM exit): control-register accesses and ``invlpg`` go to the VM's paging (virtual cr0/cr3,
shadow entries), everything else runs the core's own handler inside ``guest_view`` (unrolled
into ``enter_guest`` / ``leave_guest``: this is on every callout's path).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ringlab.isa import MASK32, Class, Form, Instruction, Mem
from ringlab.machine.cpu import Cpu
from ringlab.machine.exits import Exit
from ringlab.machine.faults import GP, Fault
from ringlab.machine.interpreter import HANDLERS, Outcome, effective_address
from ringlab.machine.state import CR0_WP
from ringlab.vmm.events import reflect_exception, reflect_software_interrupt
from ringlab.vmm.execute import execute
from ringlab.vmm.vcpu import count_guest_ring, enter_guest, leave_guest

if TYPE_CHECKING:
    from ringlab.vmm.vm import VM

__all__ = ["emulate", "privilege_fault", "run_with_wp_lifted"]


_PRIVILEGED, _IOPL = Class.PRIVILEGED, Class.IOPL
_OWN_PATHS = frozenset({"mov", "invlpg", "int"})
"""Mnemonics that may not simply run the core's handler (control registers, ``invlpg``,
``int n``); every other one does, inside the guest's view of the registers."""


def run_with_wp_lifted(cpu: Cpu, insn: Instruction, eip: int) -> Outcome:
    """The core's handler for ``insn`` at ``eip``, run with the real cr0.WP off: how bt and hw
    make a guest kernel's store to a traced page table, whose shadow entries are read-only only
    to trace the writes the guest's own tables allow.  cr0 is restored whatever happens (a
    ``Fault`` of another access of the instruction propagates)."""
    s = cpu.state
    cr0 = s.cr0
    s.cr0 = cr0 & ~CR0_WP
    try:
        return HANDLERS[insn.spec.opcode](cpu, insn, eip, (eip + insn.length) & MASK32)
    finally:
        s.cr0 = cr0


def privilege_fault(vm: VM, insn: Instruction) -> bool:
    """Would the guest's own CPL/IOPL make ``insn`` raise #GP(0)?  VM exits and translated code
    come before the CPU's privilege checks, so the VMM makes them (VT-x checks CPL first too)."""
    cls = insn.spec.cls
    if cls is _PRIVILEGED:
        return (vm.vcpu.cs if vm.deprivilege is not None else vm.cpu.state.cs) & 3 > 0
    if cls is _IOPL:
        if vm.deprivilege is not None:
            cpl, flags = vm.vcpu.cs & 3, vm.vcpu.flags
        else:
            s = vm.cpu.state
            cpl, flags = s.cs & 3, s.eflags
        return cpl > (flags >> 12) & 3
    return False


def emulate(vm: VM, insn: Instruction, eip: int) -> Exit | None:
    """Emulate ``insn`` at ``eip`` as the guest's (virtual) CPU would run it; it retires at the
    real ring it was issued from (counted at the guest's ring: ``Stats.ring_1_counts_as``), but
    for ``in``, ``out`` and ``hlt``, whose core handlers retire themselves, inside the guest's
    view, at the guest's ring.  Returns an exit the caller must handle (device I/O, halt)."""
    cpu = vm.cpu
    s = cpu.state
    ring = s.cs & 3
    if privilege_fault(vm, insn):
        return reflect_exception(vm, Fault(GP, 0), counted=False)
    mnemonic = insn.spec.mnemonic
    if mnemonic not in _OWN_PATHS or (mnemonic == "mov" and insn.spec.form not in (Form.CRR, Form.RCR)):
        # The core's own handler on the guest-visible registers (``guest_view``, unrolled).
        timer_period, timer_next = s.timer_period, s.timer_next
        policy = vm.deprivilege
        if policy is None:
            exit = execute(cpu, insn, eip, ring)
        else:
            vcpu = vm.vcpu
            enter_guest(s, vcpu)
            try:
                exit = execute(cpu, insn, eip, ring)
            finally:
                leave_guest(s, vcpu, policy)
                count_guest_ring(cpu.stats, vcpu, policy)
        if s.timer_period != timer_period or s.timer_next != timer_next:
            vm.vcpu.pending_tick = False  # writing port 0x40 discards a pending tick
        return exit
    nxt = (eip + insn.length) & MASK32
    form, ops = insn.spec.form, insn.operands
    if mnemonic == "mov" and form is Form.CRR:
        n, r = ops
        assert isinstance(n, int) and isinstance(r, int)
        vm.paging.write_cr(n, s.regs[r])
    elif mnemonic == "mov":  # Form.RCR
        r, n = ops
        assert isinstance(n, int) and isinstance(r, int)
        s.regs[r] = vm.paging.read_cr(n) & MASK32
    elif mnemonic == "invlpg":
        (mem,) = ops
        assert isinstance(mem, Mem)
        vm.paging.invlpg(effective_address(s.regs, mem))
    else:  # int
        (vector,) = ops
        assert isinstance(vector, int)
        cpu.stats.count_exception(vector)  # int n counts as raised, delivered or not
        return reflect_software_interrupt(vm, vector, eip, ring)
    s.eip = nxt
    cpu.retire(ring)
    return None
