"""``pv``: paravirtualization (Xen).

The guest kernel is built to run in ring 1 and never executes a privileged or IOPL-sensitive
instruction: it asks the hypervisor with hypercalls (``int 0x82``, ``hypercalls.py``,
docs/pv-abi.md) and keeps its interrupt flag in a page it shares with the hypervisor (no
hypercall for cli/sti).  Its page tables are the real ones; every update it makes through
``mmu_update`` is validated.  Events (exceptions, ``int n``, the timer) exit and are delivered
through the trap table the guest registered, onto the stack it named with ``stack_switch``.

A stock kernel traps (#GP) at its first privileged instruction: pv does not emulate, it refuses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ringlab.asm import format_instruction
from ringlab.isa import MASK32, Class
from ringlab.machine.exits import Controls, Exit, Raised
from ringlab.machine.faults import GP, TIMER, Fault
from ringlab.vmm.events import event_reason, int_vector, reflect_exception, reflect_software_interrupt
from ringlab.vmm.hypercalls import ENOSYS, HYPERCALLS, NO_RETURN, SHARED_TSS
from ringlab.vmm.technique import Stop, TechniqueName
from ringlab.vmm.trap_emulate import ALL_VECTORS, instruction_at
from ringlab.vmm.vcpu import Deprivilege

if TYPE_CHECKING:
    from ringlab.isa import Instruction
    from ringlab.vmm.vm import VM

__all__ = ["HYPERCALL_VECTOR", "Paravirt"]

HYPERCALL_VECTOR = 0x82
SHARED_SYMBOL = "pv_shared"
_VIF, _PENDING, _CR2, _TPR = 0, 4, 8, 12
_IF = 0x200


class Paravirt:
    name = TechniqueName.PV.value
    deprivilege: Deprivilege | None = Deprivilege(vmm_tables=False, user_flags_direct=True)
    shadow_paging = False

    def __init__(self) -> None:
        self.shared = 0
        self.updates = 0
        """Page-table entries written through mmu_update."""

    def controls(self) -> Controls:
        return Controls(intercept_vectors=ALL_VECTORS)

    def attach(self, vm: VM) -> None:
        self.shared = vm.image.symbols.get(SHARED_SYMBOL, 0)
        vm.vcpu.cs = 1  # a pv kernel is built for ring 1 (KERNEL_RING = 1)
        vm.vcpu.tr = self.shared + SHARED_TSS
        assert vm.deprivilege is not None
        vm.deprivilege.apply(vm.cpu.state, vm.vcpu)

    def run(self, vm: VM, budget: int) -> Exit | Stop:
        return vm.runner.run_core(vm, budget)

    # -- the shared page -------------------------------------------------------------------------
    def _load(self, vm: VM) -> None:
        """The guest changes its virtual IF without exiting: read it at every exit."""
        vm.sync()
        if self.shared and vm.vcpu.cpl != 3:
            vif = vm.cpu.memory.read32(self.shared + _VIF) & _IF
            vm.vcpu.flags = (vm.vcpu.flags & ~_IF) | vif

    def _store(self, vm: VM) -> None:
        if self.shared:
            memory = vm.cpu.memory
            memory.write32(self.shared + _VIF, vm.vcpu.flags & _IF)
            memory.write32(self.shared + _PENDING, int(vm.vcpu.pending_tick))
            memory.write32(self.shared + _CR2, vm.cpu.state.cr2)

    # -- exits -----------------------------------------------------------------------------------
    def handle(self, vm: VM, exit: Exit) -> Exit | Stop | None:
        self._load(vm)
        result = self._handle(vm, exit)
        self._store(vm)
        return result

    def _handle(self, vm: VM, exit: Exit) -> Exit | Stop | None:
        match exit:
            case Raised(vector=vector, eip=eip, error_code=error_code):
                insn = instruction_at(vm, eip)
                is_int = int_vector(insn) == vector and not (vector == TIMER and exit.tick)
                if vector == TIMER and not is_int:
                    vm.counters.world_switch(event_reason(TIMER, False))
                    return vm.timer_tick()
                if is_int and vector == HYPERCALL_VECTOR and vm.vcpu.cpl == 1:
                    return self._hypercall(vm, eip)
                vm.counters.world_switch(event_reason(vector, is_int and error_code is None, insn))
                if is_int and error_code is None:
                    return reflect_software_interrupt(vm, vector, eip, vm.cpu.state.cs & 3)
                if (
                    vector == GP
                    and insn is not None
                    and insn.spec.cls in (Class.PRIVILEGED, Class.IOPL)
                    and vm.vcpu.cpl != 3
                ):
                    return self._refuse(vm, insn, eip)
                return reflect_exception(vm, Fault(vector, error_code, exit.cr2), counted=True)
            case _:
                return vm.common_exit(exit)

    def _hypercall(self, vm: VM, eip: int) -> Exit | Stop | None:
        cpu, counters = vm.cpu, vm.counters
        s = cpu.state
        vm.hide(HYPERCALL_VECTOR)  # a hypercall, counted as one, not as a guest exception
        number, ebx, ecx, edx = s.regs[0], s.regs[3], s.regs[1], s.regs[2]
        call = HYPERCALLS.get(number)
        name = call.name if call is not None else f"unknown ({number})"
        counters.world_switch(f"hypercall {number} ({name})" if call is not None else f"hypercall {name}")
        counters.hypercalls[name] += 1
        result = ENOSYS if call is None else call.handler(self, vm, ebx, ecx, edx)
        if isinstance(result, Stop):
            cpu.retire(s.cs & 3)
            return result
        if result is NO_RETURN:  # iret: the handler loaded eip, esp, cs and flags
            cpu.retire(1)
            assert vm.deprivilege is not None
            vm.deprivilege.apply(s, vm.vcpu)
        else:
            s.regs[0] = result & MASK32
            s.eip = (eip + 2) & MASK32
            cpu.retire(1)
        return vm.deliver_pending()

    def _refuse(self, vm: VM, insn: Instruction, eip: int) -> Stop:
        kind = "privileged" if insn.spec.cls is Class.PRIVILEGED else "I/O-privileged (IOPL-sensitive)"
        shared = (
            ""
            if self.shared
            else f" (the image has no {SHARED_SYMBOL!r} page, so it is not a paravirt kernel)"
        )
        return Stop(
            "refused",
            None,
            f"pv runs only a paravirtualized kernel{shared}: this guest's kernel executed "
            f"'{format_instruction(insn)}' at {eip:#010x}, a {kind} instruction. Under pv the kernel "
            f"runs in ring 1, where that instruction traps, and pv does not emulate it: a pv kernel "
            f"asks the hypervisor with a hypercall (int 0x82, docs/pv-abi.md) instead. Build the "
            f"guest with the paravirt kernel flavour ('ringlab boot --kernel paravirt --technique pv'; "
            f"build_image(workload, 'paravirt') in Python), or run this unmodified kernel under bt or hw.",
        )
