"""Hosted techniques: a ``ringlab.vmm.VM`` kept beside the core in the pCPU.

The techniques library (``ringlab.vmm``) handles exits on a local ``Cpu`` object (emulation,
translation, shadow paging, hypercalls all touch the CPU and memory directly), so until it can
run against a remote vCPU (see the services notes in docs) a hosted VM's software exits are
handled here, in the pCPU process.  The hypervisor still schedules it, commits it (fenced), and
owns its lifecycle; what crosses the boundary per call is a slice, not each exit.

The VM's technique state (virtual CPU, shadow tables, translations) is not in Redis, so a pCPU
that must load a hosted VM it does not have cached rebuilds it by *replaying* from the image up
to the committed instruction count: runs are deterministic (DESIGN.md), so the state is the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ringlab.image import Image
from ringlab.machine import Exit, ExitReason
from ringlab.vmm import VM, Stop, make_technique
from ringlab.vmm.vm import VmRunResult

__all__ = ["HostedVm", "Outcome"]


@dataclass
class Outcome:
    exit: Exit
    stop: Stop | None
    console: bytes


class HostedVm:
    def __init__(self, image: Image, definition: dict[str, Any]) -> None:
        technique = make_technique(
            definition["technique"], nested_paging=bool(definition.get("nested_paging"))
        )
        self.vm = VM(
            image,
            technique,
            memory_size=int(definition["memory_size"]),
            input=str(definition.get("input", "")).encode("latin-1"),
        )
        self.console_sent = 0
        self.console_committed = 0
        self.stop: Stop | None = None

    @property
    def cpu(self) -> Any:
        return self.vm.cpu

    def run(self, budget: int) -> Outcome:
        """Run until ``budget`` instructions retired or the VM stops, handling every exit the
        technique handles (device ones included: the VM's own device back end)."""
        vm = self.vm
        cpu = vm.cpu
        end = cpu.stats.retired + budget
        while self.stop is None and cpu.stats.retired < end:
            outcome: Exit | Stop | None = vm.technique.run(vm, end - cpu.stats.retired)
            while isinstance(outcome, Exit):
                outcome = vm.technique.handle(vm, outcome)
            if isinstance(outcome, Stop):
                self.stop = outcome
        console = bytes(vm.devices.console[self.console_sent :])
        self.console_sent = len(vm.devices.console)
        return Outcome(Exit(ExitReason.BUDGET), self.stop, console)

    def uncommitted_console(self) -> bytes:
        return bytes(self.vm.devices.console[self.console_committed :])

    def replay(self, retired: int) -> None:
        """Re-execute from the image to ``retired`` instructions (the committed point)."""
        while self.stop is None and self.vm.cpu.stats.retired < retired:
            self.run(retired - self.vm.cpu.stats.retired)
        self.console_sent = self.console_committed = len(self.vm.devices.console)

    def result_doc(self, reason: str, code: int | None, detail: str) -> dict[str, Any]:
        """ISA.md's JSON object exactly as ``run_vm(...).to_json()`` builds it (console and wall
        time are filled in by the hypervisor from the committed stream and its clock)."""
        from ringlab.vmm.costs import cycles

        vm = self.vm
        result = VmRunResult(
            console=b"",
            reason=reason,
            code=code,
            detail=detail,
            state=vm.guest_state(),
            stats=vm.guest_stats(),
            wall_seconds=0.0,
            technique=vm.technique.name,
            nested_paging=getattr(vm.technique, "nested_paging", False),
            counters=vm.counters,
            diagnostics=list(vm.diagnostics.values()),
            cycles=cycles(vm.technique.name, vm.guest_stats(), vm.counters),
        )
        return result.to_json()
