"""``native``: no hypervisor, the reference for equivalence and overhead.

The VM runs with no intercepts and direct paging, so it is ``machine.run_image`` through the
VMM's loop (the same device back end, the same counters, all zero).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ringlab.machine.exits import Controls, Exit
from ringlab.vmm.technique import Stop, TechniqueName
from ringlab.vmm.vcpu import Deprivilege

if TYPE_CHECKING:
    from ringlab.vmm.vm import VM

__all__ = ["Native"]


class Native:
    name = TechniqueName.NATIVE.value
    deprivilege: Deprivilege | None = None
    shadow_paging = False

    def controls(self) -> Controls:
        return Controls()

    def attach(self, vm: VM) -> None:
        pass

    def run(self, vm: VM, budget: int) -> Exit:
        return vm.runner.run_core(vm, budget)

    def handle(self, vm: VM, exit: Exit) -> Exit | Stop | None:
        return vm.common_exit(exit)  # natively the core exits only for devices and the end
