"""``hw``: hardware-assisted virtualization (first-generation VT-x).

The guest kernel runs at its own ring 0 in VMX non-root mode, so every instruction behaves as
natively except those the VMCS's exit controls name: they cause VM exits, handled here in one
place and counted by Intel's exit-reason number.  ``cpuid`` always exits (and announces the
hypervisor in leaf 1 ecx bit 31, the one difference equivalence allows); console and power
I/O exit (the I/O bitmap); the timer and POST ports are virtual devices in the vCPU context.
With shadow paging, cr accesses, ``invlpg`` and the guest's page faults exit; with nested
paging (EPT) none do: the MMU walks the guest's tables and then the P2M.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ringlab.machine.cpu import vector_name
from ringlab.machine.exits import Controls, Exit, Intercept, IoIn, IoOut, Raised, Shutdown
from ringlab.machine.faults import DF, PF, TIMER, UD, Fault
from ringlab.vmm.emulate import emulate
from ringlab.vmm.events import int_vector, reflect_exception, reflect_software_interrupt
from ringlab.vmm.exit_reasons import VmxExitReason as R
from ringlab.vmm.technique import Stop, TechniqueName
from ringlab.vmm.trap_emulate import instruction_at
from ringlab.vmm.vcpu import Deprivilege

if TYPE_CHECKING:
    from ringlab.vmm.vm import VM

__all__ = ["Hw", "Vmcs"]


@dataclass(frozen=True)
class Vmcs:
    """The exit controls of the VMCS (the subset RL-32 needs)."""

    cpuid_exiting: bool = True  # architectural: cpuid always exits
    hlt_exiting: bool = True
    io_bitmap_ports: frozenset[int] = frozenset({0x3F8, 0xF4})
    """Documentation of the I/O bitmap: ports the core does not model exit; 0x40/0x80 don't."""
    cr3_load_exiting: bool = True
    cr3_store_exiting: bool = True
    invlpg_exiting: bool = True
    exception_bitmap: frozenset[int] = frozenset({PF})
    nested_paging: bool = False

    @classmethod
    def for_paging(cls, nested: bool) -> Vmcs:
        if nested:
            return cls(
                cr3_load_exiting=False,
                cr3_store_exiting=False,
                invlpg_exiting=False,
                exception_bitmap=frozenset(),
                nested_paging=True,
            )
        return cls()

    def controls(self) -> Controls:
        mnemonics = {"cpuid"} if self.cpuid_exiting else set()
        if self.hlt_exiting:
            mnemonics.add("hlt")
        if self.cr3_load_exiting:
            mnemonics.add("mov cr,r")
        if self.cr3_store_exiting:
            mnemonics.add("mov r,cr")
        if self.invlpg_exiting:
            mnemonics.add("invlpg")
        return Controls(
            intercept_vectors=self.exception_bitmap,
            intercept_mnemonics=frozenset(mnemonics),
            vmx_nonroot=True,
            cpuid_hypervisor_bit=True,
        )


_BY_MNEMONIC = {"cpuid": R.CPUID, "hlt": R.HLT, "vmcall": R.VMCALL, "invlpg": R.INVLPG, "mov": R.CR_ACCESS}


class Hw:
    name = TechniqueName.HW.value
    deprivilege: Deprivilege | None = None

    def __init__(self, nested_paging: bool = False) -> None:
        self.nested_paging = nested_paging
        self.shadow_paging = not nested_paging
        self.vmcs = Vmcs.for_paging(nested_paging)

    def controls(self) -> Controls:
        return self.vmcs.controls()

    def attach(self, vm: VM) -> None:
        if self.nested_paging:
            vm.cpu.mmu.second_stage = vm.p2m

    def run(self, vm: VM, budget: int) -> Exit:
        return vm.runner.run_core(vm, budget)

    def _exit(self, vm: VM, reason: R) -> None:
        vm.counters.vm_exits[reason.label] += 1
        vm.counters.world_switches += 1

    def handle(self, vm: VM, exit: Exit) -> Exit | Stop | None:
        match exit:
            case IoOut() | IoIn():
                self._exit(vm, R.IO_INSTRUCTION)
                return vm.common_exit(exit)
            case Intercept(instruction=insn, eip=eip):
                self._exit(vm, _BY_MNEMONIC[insn.mnemonic])
                if insn.mnemonic == "vmcall":  # no hypercall ABI under hw: #UD, as natively
                    return reflect_exception(vm, Fault(UD), counted=False)
                return emulate(vm, insn, eip)
            case Raised(vector=vector, eip=eip, error_code=error_code):
                self._exit(vm, R.EXCEPTION_NMI)
                if int_vector(instruction_at(vm, eip)) is not None and error_code is None:
                    # ``int 14`` exits too (the exception bitmap names the vector): deliver it
                    return reflect_software_interrupt(vm, vector, eip, vm.cpu.state.cs & 3)
                return self._page_fault(vm, exit)
            case Shutdown():
                self._exit(vm, R.TRIPLE_FAULT)
                return vm.common_exit(exit)
            case _:  # budget; a halt from the emulated hlt (its HLT exit is counted already)
                return vm.common_exit(exit)

    def _page_fault(self, vm: VM, exit: Raised) -> Exit | Stop | None:
        """#PF is the only vector in the exception bitmap (shadow paging)."""
        assert exit.vector == PF
        cpu = vm.cpu
        delivering = exit.delivering
        if delivering is None:
            fault = vm.shadow_fault(exit)
            if fault is None:  # a shadow miss: the instruction is retried
                _hide_software_interrupt(vm, exit)
                return None
            return vm.reflect_fault(fault)
        fault = vm.shadow_fault(exit, counted=False)  # a #PF while delivering: the core did not count it
        if fault is None:  # a shadow miss: the delivery is retried
            if delivering != TIMER:
                vm.hide(delivering)  # the retried instruction raises it (and it is counted) again
            return None
        # The guest's own fault while delivering ``delivering``: what the CPU does next.
        if delivering == TIMER:
            cpu.state.timer_pending = False  # the tick is consumed; the fault is delivered as itself
            return reflect_exception(vm, fault, counted=False)
        if delivering == DF:
            return Stop(
                "shutdown",
                None,
                f"triple fault: {vector_name(fault.vector)} while delivering #DF "
                f"(instruction at {cpu.state.eip:#x})",
            )
        return reflect_exception(vm, Fault(DF, 0), counted=False)


def _hide_software_interrupt(vm: VM, exit: Raised) -> None:
    """A shadow miss while delivering ``int n`` re-executes the ``int``, which the core counts
    again: take the first count back (unless the miss was fetching the ``int`` itself)."""
    eip = exit.eip
    vector = int_vector(instruction_at(vm, eip))
    if vector is None:
        return
    fault_page = (exit.cr2 or 0) >> 12
    if fault_page not in (eip >> 12, (eip + 1) >> 12):
        vm.hide(vector)
