"""The hypervisor runtime's copies of its VMs (``ringlab.hypervisor.Runtimes``), against a real
store: a VM is booted once, and a replica without its copy replays it to the last commit."""

from __future__ import annotations

from typing import Any

from ringlab.asm import assemble
from ringlab.hypervisor import Defined, Runtimes, boot, define, new_vm
from ringlab.sched import Entry
from ringlab.store import Commit, SharedState

COUNTING = """
    mov eax, 0
again:
    add eax, 1
    jmp again
"""


DEFINED: Defined = define(name="vm", technique="hw", image=assemble(COUNTING).to_bytes())


def created(state: SharedState) -> tuple[str, Any]:
    """Create the VM as CreateVm does (a raw image under hw): (its id, its boot)."""
    defined = DEFINED
    commit0 = boot(defined.definition, defined.blob)
    ok, vm = state.create_vm(
        "vm",
        defined.definition,
        defined.blob,
        commit0.state,
        commit0.stats,
        Entry(status="runnable").to_dict(),
        commit0.pages,
    )
    assert ok
    return vm, commit0


def test_a_created_vm_is_booted_once_its_first_slice_runs_the_copy_that_took_commit_0(
    state: SharedState,
) -> None:
    vm, commit0 = created(state)
    runtimes = Runtimes()
    runtimes.adopt(vm, 0, commit0.copy)
    rt = runtimes.take(vm, state, boot=0)
    assert rt.copy is commit0.copy
    assert rt.generation == 0 and rt.definition["name"] == "vm"


def test_without_its_copy_a_replica_boots_the_vm_and_replays_it_to_the_commit(state: SharedState) -> None:
    vm, commit0 = created(state)
    version, _ = state.sched_snapshot()
    grant = state.grant(
        version=version, pcpu="p", now=1.0, lease_seconds=10.0, chosen=vm, updates={}, events=[]
    )
    reference = new_vm(DEFINED.definition, DEFINED.image)  # the same VM, run in-process
    reference.advance(1_000)  # what a pCPU ran and committed
    state.commit(
        Commit(
            vm,
            grant.token,
            0,
            reference.cpu.state.to_dict(),
            {"retired": reference.cpu.stats.retired},
            {"exits": 0},
        )
    )
    runtimes = Runtimes()
    runtimes.adopt(vm, 0, commit0.copy)  # a copy at commit 0 is stale once the VM made progress
    rt = runtimes.take(vm, state, boot=0)
    assert rt.copy is not commit0.copy
    assert rt.copy.vm.cpu.stats.retired == 1_000
    assert rt.copy.vm.cpu.state.to_dict() == reference.cpu.state.to_dict()
    assert rt.generation == 1


def test_a_copy_of_another_boot_is_never_run(state: SharedState) -> None:
    vm, commit0 = created(state)
    runtimes = Runtimes()
    runtimes.adopt(vm, 1, commit0.copy)  # StartVm's reboot, while the driver asks for boot 0
    assert runtimes.take(vm, state, boot=0).copy is not commit0.copy


def test_a_destroyed_vm_leaves_no_copy_behind(state: SharedState) -> None:
    vm, commit0 = created(state)
    runtimes = Runtimes()
    runtimes.adopt(vm, 0, commit0.copy)
    runtimes.forget(vm)
    assert runtimes.take(vm, state, boot=0).copy is not commit0.copy
