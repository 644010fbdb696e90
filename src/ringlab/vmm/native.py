"""``native``: no hypervisor, the reference for equivalence and overhead.

The VM runs with no intercepts and direct paging, so it is ``machine.run_image`` through the
VMM's loop (the same device back end, the same counters, all zero).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ringlab.machine.exits import Controls, Exit, ExitReason
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
        match exit.reason:
            case ExitReason.BUDGET:
                return None
            case ExitReason.IO_OUT:
                return vm.device_out(exit)
            case ExitReason.IO_IN:
                vm.device_in(exit)
                return None
            case ExitReason.HALT:
                return Stop("halt", None, exit.detail)
            case ExitReason.SHUTDOWN:
                return Stop("shutdown", None, exit.detail)
            case _:
                raise AssertionError(f"unexpected exit natively: {exit}")
