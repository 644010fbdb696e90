"""The service boundary is the world switch (docs/design.md): the pCPU runs guest code only (under bt,
the translation the hypervisor installed), and every exit it takes crosses to the hypervisor,
which handles it (emulation, hypercalls, shadow syncs, translation, callouts, devices) on its copy
of the vCPU.  So the exits the hypervisor counts for a VM are exactly the exits its core takes
in-process, reason by reason, and under bt each callout of the translated code is one too."""

from __future__ import annotations

from collections import Counter

import pytest

from ringlab.guestos.build import build_image
from ringlab.machine import Exit, ExitReason
from ringlab.rpc.convert import KERNELS, TECHNIQUES
from ringlab.v1 import hypervisor_pb2
from ringlab.vmm import VM, InProcessCore, make_technique
from tests.services.conftest import Deployment, unique


def _core_exits_in_process(technique: str, workload: str) -> tuple[Counter[str], int]:
    """The core's exits by reason, and the translated code's callouts (bt), in-process."""
    kernel = "paravirt" if technique == "pv" else "stock"
    exits: Counter[str] = Counter()

    class Counted(InProcessCore):
        @staticmethod
        def run_core(vm: VM, budget: int) -> Exit:
            exit = InProcessCore.run_core(vm, budget)
            if exit.reason is not ExitReason.BUDGET:
                exits[exit.reason.value] += 1
            return exit

    vm = VM(build_image(workload, kernel), make_technique(technique), runner=Counted())
    assert vm.run().reason == "poweroff"
    return exits, vm.counters.callouts


@pytest.mark.parametrize("technique", ["trap-emulate", "bt", "pv", "hw"])
def test_every_exit_of_the_core_crosses_to_the_hypervisor(deployment: Deployment, technique: str) -> None:
    kernel = "paravirt" if technique == "pv" else "stock"
    hv = deployment.hypervisor_stub()
    name = unique(f"switch-{technique}")
    hv.CreateVm(
        hypervisor_pb2.CreateVmRequest(
            name=name,
            technique=TECHNIQUES[technique],
            kernel=KERNELS[kernel],
            workload="syscall",
            image=build_image("syscall", kernel).to_bytes(),
            start=True,
        ),
        timeout=30,
    )
    result = hv.WaitVm(hypervisor_pb2.WaitVmRequest(vm=name, timeout_seconds=120), timeout=150)
    assert result.reason == "poweroff"
    crossed = dict(result.vm.stats.exits_by_reason)
    want, callouts = _core_exits_in_process(technique, "syscall")
    translation = {k: crossed.pop(k) for k in list(crossed) if k.startswith("translation_")}
    assert crossed == dict(want)
    assert sum(crossed.values()) + sum(translation.values()) == result.vm.stats.exits > 0
    if technique == "bt":  # the kernel's translation ran on the pCPU and called the VMM from there
        assert translation["translation_callout"] == callouts > 0
        assert translation["translation_miss"] > 0  # the hypervisor translated, the pCPU ran it
    else:
        assert translation == {}


@pytest.mark.parametrize("technique", ["native", "trap-emulate", "hw"])
def test_a_guest_idling_in_hlt_yields_its_slice_whoever_handles_the_hlt(
    deployment: Deployment, technique: str
) -> None:
    """DESIGN: a vCPU that executes hlt with IF = 1 yields the rest of its slice (and is boosted
    when it wakes) - under native the pCPU's core idles, under the others the VMM emulates the
    hlt; either way the slice ends as 'idle'. (``multi``'s parent waits for its workers in hlt.)"""
    hv = deployment.hypervisor_stub()
    name = unique(f"idle-{technique}")
    hv.CreateVm(
        hypervisor_pb2.CreateVmRequest(
            name=name,
            technique=TECHNIQUES[technique],
            kernel=KERNELS["stock"],
            workload="multi",
            image=build_image("multi", "stock").to_bytes(),
            start=True,
        ),
        timeout=30,
    )
    result = hv.WaitVm(hypervisor_pb2.WaitVmRequest(vm=name, timeout_seconds=120), timeout=150)
    assert result.reason == "poweroff"
    ended = [
        e.detail.split()[0]
        for e in hv.StreamEvents(hypervisor_pb2.StreamEventsRequest(vm=result.vm.id), timeout=30)
        if e.kind == "descheduled"
    ]
    assert "idle" in ended, ended
