"""Emulation of privileged instructions against the virtual CPU state.

Shared by every technique that must emulate (trap-emulate after a #GP, bt in a callout, hw on a
VM exit): control-register accesses and ``invlpg`` go to the VM's paging (virtual cr0/cr3,
shadow entries), everything else runs the core's own handler inside ``guest_view``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ringlab.isa import MASK32, Class, Form, Instruction, Mem
from ringlab.machine.exits import Exit
from ringlab.machine.faults import GP, Fault
from ringlab.machine.interpreter import effective_address
from ringlab.vmm.events import reflect_exception, reflect_software_interrupt
from ringlab.vmm.execute import execute
from ringlab.vmm.vcpu import guest_view

if TYPE_CHECKING:
    from ringlab.vmm.vm import VM

__all__ = ["emulate", "privilege_fault"]


def privilege_fault(vm: VM, insn: Instruction) -> bool:
    """Would the guest's own CPL/IOPL make ``insn`` raise #GP(0)?  VM exits and translated code
    come before the CPU's privilege checks, so the VMM makes them (VT-x checks CPL first too)."""
    s = vm.cpu.state
    flags = vm.vcpu.flags if vm.deprivilege is not None else s.eflags
    cpl = vm.vcpu.cpl if vm.deprivilege is not None else s.cs & 3
    cls = insn.spec.cls
    return (cls is Class.PRIVILEGED and cpl > 0) or (cls is Class.IOPL and cpl > (flags >> 12) & 3)


def emulate(vm: VM, insn: Instruction, eip: int) -> Exit | None:
    """Emulate ``insn`` at ``eip`` as the guest's (virtual) CPU would run it; it retires at the
    real ring it was issued from.  Returns an exit the caller must handle (device I/O, halt)."""
    cpu = vm.cpu
    s = cpu.state
    ring = s.cs & 3
    nxt = (eip + insn.length) & MASK32
    if privilege_fault(vm, insn):
        return reflect_exception(vm, Fault(GP, 0), counted=False)
    mnemonic, form, ops = insn.mnemonic, insn.spec.form, insn.operands
    if mnemonic == "mov" and form is Form.CRR:
        n, r = ops
        assert isinstance(n, int) and isinstance(r, int)
        vm.paging.write_cr(n, s.regs[r])
    elif mnemonic == "mov" and form is Form.RCR:
        r, n = ops
        assert isinstance(n, int) and isinstance(r, int)
        s.regs[r] = vm.paging.read_cr(n) & MASK32
    elif mnemonic == "invlpg":
        (mem,) = ops
        assert isinstance(mem, Mem)
        vm.paging.invlpg(effective_address(s.regs, mem))
    elif mnemonic == "int":
        (vector,) = ops
        assert isinstance(vector, int)
        cpu.stats.count_exception(vector)  # int n counts as raised, delivered or not
        return reflect_software_interrupt(vm, vector, eip, ring)
    else:
        timer = (s.timer_period, s.timer_next)
        with guest_view(s, vm.vcpu, vm.deprivilege):
            exit = execute(cpu, insn, eip, ring)
        if (s.timer_period, s.timer_next) != timer:
            vm.vcpu.pending_tick = False  # writing port 0x40 discards a pending tick
        return exit
    s.eip = nxt
    cpu.retire(ring)
    return None
