"""Booting a VM from its definition: the VMM object a technique sets up around the image, and
the commit 0 that ``CreateVm`` (and ``StartVm`` of an ended VM) stores for it.  A VM is booted
once: the hypervisor's copy that took commit 0 is the one its first slice runs
(``Runtimes.adopt``); only a replica without that copy boots it again, to replay it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ringlab.hypervisor.vm_copy import VmCopy
from ringlab.image import Image
from ringlab.machine.stats import Stats, stats_to_json
from ringlab.vmm import IN_PROCESS, VM, CoreRunner, make_technique

__all__ = ["Boot", "boot", "new_vm"]


def new_vm(definition: Mapping[str, Any], image: Image, runner: CoreRunner = IN_PROCESS) -> VM:
    """The VM a definition describes, booted (the state ``CreateVm`` stores as commit 0)."""
    technique = make_technique(definition["technique"], nested_paging=bool(definition.get("nested_paging")))
    return VM(
        image,
        technique,
        memory_size=int(definition["memory_size"]),
        input=str(definition.get("input", "")).encode("latin-1"),
        runner=runner,
    )


@dataclass(frozen=True)
class Boot:
    """Commit 0 of a VM: its registers, statistics and every non-zero page, as the store keeps
    them, and the size of its host memory (RAM, plus the shadow tables' pool above it)."""

    state: dict[str, Any]
    stats: dict[str, Any]
    pages: dict[int, bytes]
    host_memory_size: int
    copy: VmCopy
    """The hypervisor's copy of the VM, at commit 0: its first slice runs it."""


def boot(definition: Mapping[str, Any], image: Image) -> Boot:
    """Boot the VM ``definition`` describes and take its commit 0."""
    copy = VmCopy(lambda runner: new_vm(definition, image, runner=runner), 0)
    vm = copy.vm
    memory = vm.cpu.memory
    pages = {p: page for p in range(memory.pages) if (page := memory.page(p)).count(0) != len(page)}
    return Boot(vm.cpu.state.to_dict(), stats_to_json(Stats()), pages, memory.size, copy)
