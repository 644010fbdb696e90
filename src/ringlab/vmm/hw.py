"""``hw``: hardware-assisted virtualization (first-generation VT-x).

The guest kernel runs at its own ring 0 in VMX non-root mode, so every instruction behaves as
natively except those the VMCS's controls name (``Vmcs``): they cause VM exits, handled here in
one place and counted by Intel's exit-reason number.  ``cpuid`` always exits (and announces the
hypervisor in leaf 1 ecx bit 31, the one difference equivalence allows).

- I/O: the I/O bitmap decides, port by port: an ``in``/``out`` to a port whose bit is set exits
  (the devices the VMM emulates: the console's data and line-status ports, power); one whose
  bit is clear reaches its device without an exit (a device assigned to the guest).  The timer
  (0x40) and the POST port (0x80) are devices of the vCPU itself (docs/design.md), which the
  bitmap cannot name.
- TPR shadow (on, as on the first-generation parts [AA06] measured): ``cr8`` reads and writes
  go to the virtual APIC's task-priority register without an exit, whatever the paging mode.
- With shadow paging, the other control registers, ``invlpg`` and the guest's page faults
  exit; with nested paging (EPT) none do: the MMU walks the guest's tables and then the P2M.
- Traced page tables (shadow paging only; Adams & Agesen 2006, sections 4.2 and 6's ptemod):
  as a shadow-paging VMM does, hw write-protects the guest page directory and page table each
  hidden page fault read (``_trace``), so the guest kernel's store to a page-table entry is a #PF
  exit; the VMM decodes the instruction and makes the write itself (with the real cr0.WP lifted
  for it, as bt's traced writes), counted as an ``EXCEPTION_NMI`` exit and, per mnemonic, in
  ``sensitive`` as ``traced``.  There is no adaptive translation to take the exit away: every
  such store exits, which is why Figure 4's hardware VMM pays 12,733 cycles for ptemod against
  the software VMM's 391.  The shadow keeps itself coherent (``shadow.py``), so what the trace
  models is the exit and its price.  Traces end at a shadow flush (a guest cr3 write); a traced
  page written other than by a kernel store the VMM can emulate (user code, an event's stack
  frame, an instruction that is not a plain store) is given up until the next flush, as bt's.

The core intercepts control-register moves by direction, not by register, so a move the VMCS
does not name (``cr8`` under the TPR shadow, ``cr3`` under nested paging) can reach this
handler: it is completed as the hardware would, and no exit is counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ringlab.isa import MASK32, Form, Instruction, Mem
from ringlab.machine.cpu import vector_name
from ringlab.machine.exits import Controls, Exit, Intercept, IoIn, IoOut, Raised, Shutdown
from ringlab.machine.faults import DF, PF, TIMER, UD, Fault
from ringlab.machine.interpreter import effective_address
from ringlab.machine.memory import PAGE_SHIFT
from ringlab.machine.platform import CONSOLE_PORT, CONSOLE_STATUS_PORT, POWER_PORT
from ringlab.machine.state import CR0_PG
from ringlab.vmm.emulate import emulate, run_with_wp_lifted
from ringlab.vmm.events import int_vector, reflect_exception, reflect_software_interrupt
from ringlab.vmm.execute import no_intercepts
from ringlab.vmm.exit_reasons import VmxExitReason as R
from ringlab.vmm.technique import Stop, TechniqueName
from ringlab.vmm.trap_emulate import instruction_at
from ringlab.vmm.vcpu import Deprivilege

if TYPE_CHECKING:
    from ringlab.vmm.vm import VM

__all__ = ["EMULATED_PORTS", "VCPU_PORTS", "Hw", "Vmcs"]

EMULATED_PORTS = frozenset({CONSOLE_PORT, CONSOLE_STATUS_PORT, POWER_PORT})
"""The ports of the devices the VMM emulates: their bits are set in the default I/O bitmap."""
VCPU_PORTS = frozenset({0x40, 0x80})
"""The timer and the POST port: devices of the vCPU itself (the core's), never in the bitmap."""
CR8 = 8


@dataclass(frozen=True)
class Vmcs:
    """The VM-execution controls of the VMCS (the subset RL-32 needs)."""

    cpuid_exiting: bool = True  # architectural: cpuid always exits
    hlt_exiting: bool = True
    io_bitmap: frozenset[int] = EMULATED_PORTS
    """"Use I/O bitmaps": an ``in``/``out`` exits iff its port's bit is set (here: is listed)."""
    cr3_load_exiting: bool = True
    """Moves to ``cr0``, ``cr2`` and ``cr3`` exit (with the CR0 guest/host mask, what shadow
    paging needs)."""
    cr3_store_exiting: bool = True
    """Moves from ``cr0``, ``cr2`` and ``cr3`` exit."""
    tpr_shadow: bool = True
    """"Use TPR shadow": ``cr8`` moves use the virtual APIC's TPR and never exit; off, every
    ``cr8`` move exits (CR8-load and CR8-store exiting).  Independent of the paging mode."""
    invlpg_exiting: bool = True
    exception_bitmap: frozenset[int] = frozenset({PF})
    nested_paging: bool = False

    def __post_init__(self) -> None:
        if self.io_bitmap & VCPU_PORTS:
            raise ValueError(
                f"ports {', '.join(f'{p:#x}' for p in sorted(self.io_bitmap & VCPU_PORTS))} are the vCPU's "
                "own devices (timer, POST): the I/O bitmap cannot make them exit"
            )

    @classmethod
    def for_paging(cls, nested: bool, *, tpr_shadow: bool = True) -> Vmcs:
        if nested:
            return cls(
                cr3_load_exiting=False,
                cr3_store_exiting=False,
                invlpg_exiting=False,
                exception_bitmap=frozenset(),
                nested_paging=True,
                tpr_shadow=tpr_shadow,
            )
        return cls(tpr_shadow=tpr_shadow)

    def io_exits(self, port: int) -> bool:
        """Does an ``in``/``out`` to ``port`` exit?"""
        return port in self.io_bitmap

    def cr_exits(self, n: int, write: bool) -> bool:
        """Does a move to (``write``) or from control register ``n`` exit?"""
        if n == CR8:
            return not self.tpr_shadow
        return self.cr3_load_exiting if write else self.cr3_store_exiting

    def controls(self) -> Controls:
        mnemonics = {"cpuid"} if self.cpuid_exiting else set()
        if self.hlt_exiting:
            mnemonics.add("hlt")
        # The core intercepts a direction of control-register move, not a register: what a
        # listed direction brings that the VMCS does not name, ``Hw.handle`` completes unexited.
        if self.cr3_load_exiting or not self.tpr_shadow:
            mnemonics.add("mov cr,r")
        if self.cr3_store_exiting or not self.tpr_shadow:
            mnemonics.add("mov r,cr")
        if self.invlpg_exiting:
            mnemonics.add("invlpg")
        return Controls(
            intercept_vectors=self.exception_bitmap,
            intercept_mnemonics=frozenset(mnemonics),
            vmx_nonroot=True,
            cpuid_hypervisor_bit=True,
        )


_P, _W, _U = 1, 2, 4
_FRAME = 0xFFFFF000
_ESP = 4
_STORES = frozenset({Form.M, Form.MR, Form.MI, Form.M8R})
"""Forms whose first operand is memory the instruction may write (a traced write's exit)."""
_PUSHES = frozenset({"push", "call", "pushf"})
"""Instructions that write the stack (a kernel stack on a traced page table)."""
_BY_MNEMONIC = {"cpuid": R.CPUID, "hlt": R.HLT, "vmcall": R.VMCALL, "invlpg": R.INVLPG, "mov": R.CR_ACCESS}


class Hw:
    name = TechniqueName.HW.value
    deprivilege: Deprivilege | None = None

    def __init__(self, nested_paging: bool = False, vmcs: Vmcs | None = None) -> None:
        self.vmcs = vmcs if vmcs is not None else Vmcs.for_paging(nested_paging)
        self.nested_paging = self.vmcs.nested_paging
        self.shadow_paging = not self.nested_paging
        self.traced: set[int] = set()
        """Host frame numbers of the guest page tables being traced (write-protected)."""
        self._given_up: set[int] = set()
        """Page-table frames written other than by an emulable kernel store: not traced again
        before the next shadow flush."""
        self._traced_under = 0
        """The shadow flush the traces were made after (``EventCounter.shadow_flushes``)."""

    def controls(self) -> Controls:
        return self.vmcs.controls()

    def attach(self, vm: VM) -> None:
        if self.nested_paging:
            vm.cpu.mmu.second_stage = vm.p2m
            return
        shadow = vm.shadow
        assert shadow is not None

        def written(frame: int) -> None:  # a traced page written other than by an emulated store
            self.traced.discard(frame)
            self._given_up.add(frame)
            shadow.unprotect(frame)

        shadow.on_protected_write = written

    def run(self, vm: VM, budget: int) -> Exit:
        return vm.runner.run_core(vm, budget)

    def _exit(self, vm: VM, reason: R) -> None:
        vm.counters.world_switch(reason.label)  # first: the exit's price is counted after it began
        vm.counters.vm_exits[reason.label] += 1

    def handle(self, vm: VM, exit: Exit) -> Exit | Stop | None:
        match exit:
            case IoOut(port=port) | IoIn(port=port):
                if self.vmcs.io_exits(port):
                    self._exit(vm, R.IO_INSTRUCTION)
                else:  # its bit is clear: the guest reached the device itself
                    vm.counters.io_passthrough += 1
                return vm.common_exit(exit)
            case Intercept(instruction=insn, eip=eip):
                if insn.mnemonic == "mov" and not self._cr_exits(insn):
                    return emulate(vm, insn, eip)  # the hardware's own (TPR shadow, EPT): no exit
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

    def _cr_exits(self, insn: Instruction) -> bool:
        write = insn.spec.form is Form.CRR
        n = insn.operands[0] if write else insn.operands[1]
        assert isinstance(n, int)
        return self.vmcs.cr_exits(n, write)

    def _page_fault(self, vm: VM, exit: Raised) -> Exit | Stop | None:
        """#PF is the only vector in the exception bitmap (shadow paging)."""
        assert exit.vector == PF
        cpu = vm.cpu
        delivering = exit.delivering
        self._untrace_if_flushed(vm)
        if delivering is None:
            insn = self._traced_store(vm, exit)
            if insn is not None:
                return self._traced_write(vm, insn, exit.eip)
            fault = vm.shadow_fault(exit)
            if fault is None:  # a shadow miss: the instruction is retried
                _hide_software_interrupt(vm, exit)
                self._trace(vm, exit.cr2 or 0)
                return None
            return vm.reflect_fault(fault)
        fault = vm.shadow_fault(exit, counted=False)  # a #PF while delivering: the core did not count it
        if fault is None:  # a shadow miss: the delivery is retried
            for vector in exit.chain:  # the retry raises (and counts) the escalation again
                vm.hide(vector)
            self._trace(vm, exit.cr2 or 0)
            return None  # a tick the chain began with is still pending: the retry retakes it
        # The guest's own fault while delivering ``delivering``: what the CPU does next.
        if exit.tick or delivering == TIMER:
            cpu.state.timer_pending = False  # the tick is consumed; the fault is delivered as itself
        if delivering == TIMER:
            return reflect_exception(vm, fault, counted=False)
        if delivering == DF:  # the CPU shuts down; this last fault writes no cr2
            return Stop(
                "shutdown",
                None,
                f"triple fault: {vector_name(fault.vector)} while delivering #DF "
                f"(instruction at {cpu.state.eip:#x})",
            )
        if fault.vector == PF:
            cpu.state.cr2 = fault.cr2 or 0  # written before the CPU turns to #DF (docs/machine.md)
        return _double_fault(vm)

    # -- traced page tables ----------------------------------------------------------------------
    def _trace(self, vm: VM, linear: int) -> None:
        """Write-protect the guest page directory and page table that map ``linear`` (what the
        hidden fault just read)."""
        shadow = vm.shadow
        assert shadow is not None
        if not shadow.cr0 & CR0_PG:
            return
        directory = vm.p2m.translate(shadow.cr3 & _FRAME, False)
        if directory + 4 > vm.memory_size:
            return  # the guest's cr3 points beyond its RAM: nothing to trace
        frames = [directory >> PAGE_SHIFT]
        pde = vm.cpu.memory.read32(directory + ((linear >> 22) & 0x3FF) * 4)
        table = vm.p2m.translate(pde & _FRAME, False)
        if pde & _P and table + 4 <= vm.memory_size:
            frames.append(table >> PAGE_SHIFT)
        for frame in frames:
            if frame not in self.traced and frame not in self._given_up:
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
            shadow.unprotect(frame)
        self.traced.clear()
        self._given_up.clear()

    def _traced_store(self, vm: VM, exit: Raised) -> Instruction | None:
        """The instruction, when this #PF is a kernel store the guest's tables allow, refused
        only because it writes a traced page table, and one the VMM can make itself."""
        if not self.traced or (exit.error_code or 0) & (_P | _W | _U) != _P | _W:
            return None
        shadow = vm.shadow
        assert shadow is not None
        frame = shadow.refused_by_protection(exit.cr2 or 0)
        if frame is None or frame not in self.traced:
            return None
        insn = instruction_at(vm, exit.eip)
        if insn is None:
            return None
        s = vm.cpu.state
        if insn.spec.form in _STORES and isinstance(insn.operands[0], Mem):
            start = effective_address(s.regs, insn.operands[0])
            size = 1 if insn.spec.form is Form.M8R else 6 if insn.mnemonic in ("sgdt", "sidt") else 4
        elif insn.mnemonic in _PUSHES:
            start, size = (s.regs[_ESP] - 4) & MASK32, 4
        else:
            return None
        if start >> PAGE_SHIFT != ((start + size - 1) & MASK32) >> PAGE_SHIFT:
            return None  # a store across pages: lifting WP would lift it for the other page too
        return insn

    def _traced_write(self, vm: VM, insn: Instruction, eip: int) -> Exit | Stop | None:
        """The guest kernel's store to a traced page table exited: the VMM makes it, running the
        instruction with the real cr0.WP lifted (the guest's tables allow the write; the shadow
        entry is read-only only to trace it).  It retires at the guest's ring, as natively."""
        vm.hide(PF)  # the guest never sees this #PF: the core counted it
        vm.counters.handled(insn.mnemonic, "traced")
        cpu = vm.cpu
        try:
            outcome = run_with_wp_lifted(cpu, insn, eip)
        except Fault as fault:  # another access of the instruction's faulted: as natively
            return cpu.exception(fault, eip)
        if outcome is None:
            cpu.retire(cpu.state.cs & 3)
            return None
        if outcome is True:
            return None
        assert not isinstance(outcome, bool)
        return outcome


def _double_fault(vm: VM) -> Exit | Stop | None:
    """Deliver #DF for the instruction at ``eip``, whose exception's delivery faulted: as
    ``Cpu.exception`` escalates (counted, and a fault while delivering it is the triple fault,
    which writes no cr2), with interception off, as every reflection."""
    cpu = vm.cpu
    eip = cpu.state.eip
    cpu.stats.count_exception(DF)
    vm.counters.reflected += 1
    vm.paging.prepare_delivery(DF, cpu.state.cs & 3)
    with no_intercepts(cpu):
        try:
            cpu.deliver(DF, 0, eip, software=False)
        except Fault as third:
            return Stop(
                "shutdown",
                None,
                f"triple fault: {vector_name(third.vector)} while delivering #DF (instruction at {eip:#x})",
            )
    return None


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
