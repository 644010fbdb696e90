"""Booting a VM from its definition: the VMM object a technique sets up around the image, and
the commit 0 that ``CreateVm`` (and ``StartVm`` of an ended VM) stores for it.  A VM is booted
once: the hypervisor's copy that took commit 0 is the one its first slice runs
(``Runtimes.adopt``); only a replica without that copy boots it again, to replay it.

A VM restored from a snapshot (``RestoreVm``) is booted from the snapshot instead of its image:
its definition says ``snapshot`` (the instruction count it was taken at, and the file's SHA-256),
the store keeps the snapshot file where another VM keeps its image, and its commit 0 is the
snapshot's state (registers, memory, statistics, the console so far)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from ringlab.hypervisor.vm_copy import VmCopy
from ringlab.image import Image
from ringlab.machine.stats import Stats, stats_to_json
from ringlab.vmm import IN_PROCESS, VM, CoreRunner, Stop, make_technique
from ringlab.vmm.snapshot import Snapshot, parse_snapshot, restore, snapshot

__all__ = ["Boot", "boot", "new_vm", "snapshot_at", "vm_from"]


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


def vm_from(definition: Mapping[str, Any], blob: bytes, runner: CoreRunner = IN_PROCESS) -> VM:
    """The VM at its commit 0, from what the store keeps for it (``blob``): booted from its image,
    or, for a VM restored from a snapshot, that snapshot restored (on compiled blocks)."""
    if definition.get("snapshot"):
        # the snapshot was checked whole when RestoreVm stored it (and the store is trusted)
        snap = parse_snapshot(blob, max_memory=int(definition["memory_size"]))
        return restore(snap, runner, fast=True)
    return new_vm(definition, Image.from_bytes(blob), runner=runner)


@dataclass(frozen=True)
class Boot:
    """Commit 0 of a VM: its registers, statistics and every non-zero page, as the store keeps
    them, its console so far (empty but for a restored VM), and the size of its host memory (RAM,
    plus the shadow tables' pool above it)."""

    state: dict[str, Any]
    stats: dict[str, Any]
    pages: dict[int, bytes]
    host_memory_size: int
    copy: VmCopy
    """The hypervisor's copy of the VM, at commit 0: its first slice runs it."""
    console: bytes = b""


def boot(definition: Mapping[str, Any], blob: bytes) -> Boot:
    """Boot the VM ``definition`` describes from ``blob`` (its image, or its snapshot) and take
    its commit 0."""
    copy = VmCopy(lambda runner: vm_from(definition, blob, runner=runner), 0)
    vm = copy.vm
    memory = vm.cpu.memory
    pages = {p: page for p in range(memory.pages) if (page := memory.page(p)).count(0) != len(page)}
    return Boot(
        vm.cpu.state.to_dict(),
        stats_to_json(vm.cpu.stats if definition.get("snapshot") else Stats()),
        pages,
        memory.size,
        copy,
        bytes(vm.devices.console),
    )


def snapshot_at(definition: Mapping[str, Any], blob: bytes, retired: int) -> Snapshot:
    """The snapshot of the VM ``definition`` describes at its commit of ``retired`` instructions
    (``SnapshotVm``): booted from ``blob`` (its image or its own snapshot) and replayed here, in
    this process, to that count, as a replica that has no copy of a VM replays it (runs are
    deterministic).  The snapshot's definition also says what the deployment knew of the VM
    (``vm``: its name, kernel, workload, defines, weight, cap, limits), for a ``RestoreVm``."""
    vm = vm_from(definition, blob)
    start = vm.cpu.stats.retired
    if retired > start:
        outcome = vm.advance(retired - start)
        if vm.cpu.stats.retired != retired or isinstance(outcome, Stop):
            raise RuntimeError(
                f"replaying VM {definition.get('name')!r} to its commit at {retired} instructions "
                f"reached {vm.cpu.stats.retired} ({outcome}): the run is not deterministic"
            )
    snap = snapshot(vm)
    known = {k: definition.get(k) for k in _CARRIED if k in definition}
    return replace(snap, definition={**snap.definition, "vm": known})


_CARRIED = ("name", "kernel", "workload", "defines", "weight", "cap", "max_instructions", "console_quota")
"""What a services snapshot keeps of the VM's definition beyond what the machine needs."""
