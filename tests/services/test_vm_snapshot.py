"""Snapshots through the services (issue 16): ``SnapshotVm`` writes a running VM's last commit
into the snapshot file format ``ringlab run --snapshot`` writes, and ``RestoreVm`` runs it on in
this deployment or another, to the same console, exit, registers and guest statistics as the
VM never snapshotted, under every technique.  The file goes both ways: an in-process snapshot
runs on in a deployment, a deployment's snapshot runs on in-process.  A bad file is refused with
INVALID_ARGUMENT naming ``snapshot`` and nothing is created; an ended VM cannot be snapshotted."""

from __future__ import annotations

import hashlib
import json
import time
import zlib
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from ringlab.guestos.build import build_image
from ringlab.image import Image
from ringlab.rpc.convert import KERNELS, TECHNIQUES
from ringlab.store.server import LocalRedis
from ringlab.v1 import hypervisor_pb2
from ringlab.vmm import VM, make_technique, run_from, run_vm
from ringlab.vmm.snapshot import MAGIC, VERSION, encode_snapshot, parse_snapshot, restore, snapshot
from tests.services.conftest import Deployment, unique
from tests.services.moving import comparable, every_technique, host

PARAMS = every_technique("pv")
WORKLOAD, DEFINES = "syscall", {"ITERATIONS": 2000}
SLICE = 5_000
"""The deployments' slice (instructions): the workload (130,000 to 165,000 instructions) runs
dozens of slices, so a VM paused after its first commits is mid-run."""


@pytest.fixture(scope="module")
def deployment(redis_server: LocalRedis) -> Iterator[Deployment]:
    with host(redis_server, db=2, slice=SLICE) as d:
        yield d


@pytest.fixture(scope="module")
def other(redis_server: LocalRedis) -> Iterator[Deployment]:
    with host(redis_server, db=3, slice=SLICE) as d:
        yield d


def create(d: Deployment, technique: str, nested: bool, kernel: str, image: Image) -> str:
    return (
        d.hypervisor_stub()
        .CreateVm(
            hypervisor_pb2.CreateVmRequest(
                name=unique(f"snap-{technique}"),
                technique=TECHNIQUES[technique],
                nested_paging=nested,
                kernel=KERNELS[kernel],
                workload=WORKLOAD,
                defines=DEFINES,
                image=image.to_bytes(),
                start=False,
            ),
            timeout=30,
        )
        .name
    )


def paused_mid_run(d: Deployment, name: str) -> None:
    """Run the VM (created, not started) for a while, then pause it: again, a little longer each
    time, until it has committed some progress.  (A pause revokes the slice in flight, so the VM
    stands at a commit; every step runs a few slices at most, of the dozens the workload needs.)"""
    hv = d.hypervisor_stub()
    ref = hypervisor_pb2.VmRef(vm=name)
    hv.StartVm(ref, timeout=10)
    for step in range(1, 200):
        time.sleep(0.002 * step)
        now = hv.PauseVm(ref, timeout=10)
        assert now.status == hypervisor_pb2.VM_STATUS_PAUSED, f"{name} ended before it could be snapshotted"
        if now.stats.guest.retired > 0:
            return
        hv.ResumeVm(ref, timeout=10)
    raise AssertionError(f"{name} committed no progress")


def result_of(d: Deployment, name: str) -> dict[str, Any]:
    reply = d.hypervisor_stub().WaitVm(
        hypervisor_pb2.WaitVmRequest(vm=name, timeout_seconds=180), timeout=200
    )
    doc: dict[str, Any] = json.loads(reply.result_json)
    doc["console"] = reply.console.decode("latin-1") if not doc.get("console") else doc["console"]
    return doc


def restore_in(d: Deployment, blob: bytes, name: str, start: bool = True) -> hypervisor_pb2.Vm:
    request = hypervisor_pb2.RestoreVmRequest(name=name, snapshot=blob, start=start)
    return d.hypervisor_stub().RestoreVm(request, timeout=60)


@pytest.mark.parametrize(("technique", "nested", "kernel"), PARAMS)
def test_a_vm_snapshotted_mid_run_goes_on_in_another_deployment_as_if_never_stopped(
    deployment: Deployment, other: Deployment, technique: str, nested: bool, kernel: str
) -> None:
    image = build_image(WORKLOAD, kernel, DEFINES)
    want = run_vm(image, technique=technique, nested_paging=nested).to_json()
    name = create(deployment, technique, nested, kernel, image)
    paused_mid_run(deployment, name)
    taken = deployment.hypervisor_stub().SnapshotVm(hypervisor_pb2.VmRef(vm=name), timeout=120)
    assert 0 < taken.retired < want["stats"]["guest"]["retired"]
    snap = parse_snapshot(taken.snapshot)
    assert snap.retired == taken.retired and snap.definition["vm"]["name"] == name
    copy = restore_in(other, taken.snapshot, f"{name}-copy")
    assert copy.technique == TECHNIQUES[technique] and copy.nested_paging == nested
    assert copy.workload == WORKLOAD and copy.kernel == KERNELS[kernel]
    deployment.hypervisor_stub().ResumeVm(hypervisor_pb2.VmRef(vm=name), timeout=10)
    restored, original = result_of(other, copy.name), result_of(deployment, name)
    assert comparable(restored, technique) == comparable(want, technique)
    assert comparable(original, technique) == comparable(want, technique)


def test_a_deployments_snapshot_runs_on_in_process_and_an_in_process_one_in_a_deployment(
    deployment: Deployment,
) -> None:
    """The one file format: ``ringlab run --restore`` takes a deployment's snapshot, and a
    deployment takes the snapshot of an in-process run (``ringlab run --snapshot``)."""
    image = build_image(WORKLOAD, "paravirt", DEFINES)
    want = run_vm(image, technique="pv").to_json()
    name = create(deployment, "pv", False, "paravirt", image)
    paused_mid_run(deployment, name)
    taken = deployment.hypervisor_stub().SnapshotVm(hypervisor_pb2.VmRef(vm=name), timeout=120)
    deployment.hypervisor_stub().StopVm(hypervisor_pb2.VmRef(vm=name), timeout=10)
    in_process = run_from(restore(parse_snapshot(taken.snapshot))).to_json()
    assert comparable(in_process, "pv") == comparable(want, "pv")

    vm = VM(image, make_technique("pv"))
    vm.advance(want["stats"]["guest"]["retired"] // 2)
    blob = encode_snapshot(snapshot(vm))
    restored = restore_in(deployment, blob, unique("from-run"))
    assert restored.kernel == KERNELS["none"]  # an in-process snapshot knows no kernel flavour
    assert comparable(result_of(deployment, restored.name), "pv") == comparable(want, "pv")


def test_a_restored_vm_restarted_boots_from_its_snapshot_again(deployment: Deployment) -> None:
    """StartVm of an ended VM boots it afresh: a restored VM from its snapshot (console so far
    and all), so it ends as it did the first time."""
    image = build_image(WORKLOAD, "stock", DEFINES)
    vm = VM(image, make_technique("hw"))
    vm.advance(20_000)
    name = restore_in(deployment, encode_snapshot(snapshot(vm)), unique("again")).name
    first = result_of(deployment, name)
    deployment.hypervisor_stub().StartVm(hypervisor_pb2.VmRef(vm=name), timeout=60)
    assert comparable(result_of(deployment, name), "hw") == comparable(first, "hw")
    assert first["console"] == run_vm(image, technique="hw").console.decode("latin-1")


def _bad_snapshots(good: bytes) -> dict[str, tuple[bytes, str]]:
    body = good[len(MAGIC) + 36 :]
    doc = json.loads(zlib.decompress(body))
    doc["definition"]["memory_size"] = 1 << 30
    big = zlib.compress(json.dumps(doc).encode())
    big_file = MAGIC + VERSION.to_bytes(4, "big") + hashlib.sha256(big).digest() + big
    return {
        "truncated": (good[: len(good) // 2], "checksum"),
        "not a snapshot": (b"\x7fELF" + good[4:], "not a Ringlab snapshot"),
        "another version": (MAGIC + (VERSION + 1).to_bytes(4, "big") + good[len(MAGIC) + 4 :], "version"),
        "damaged": (good[:-10] + bytes(10), "checksum"),
        "too large a VM": (big_file, "more than"),
        "empty": (b"", "send the snapshot file"),
    }


def test_a_bad_snapshot_is_refused_naming_what_is_wrong_and_nothing_is_created(
    deployment: Deployment,
) -> None:
    vm = VM(build_image("hello", "stock"), make_technique("hw"))
    vm.advance(1000)
    good = encode_snapshot(snapshot(vm))
    hv = deployment.hypervisor_stub()
    before = {v.name for v in hv.ListVms(hypervisor_pb2.ListVmsRequest(), timeout=10).vms}
    for what, (blob, says) in _bad_snapshots(good).items():
        name = unique("bad")
        with pytest.raises(grpc.RpcError) as err:
            restore_in(deployment, blob, name)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, what
        assert says in (err.value.details() or ""), (what, err.value.details())
    after = {v.name for v in hv.ListVms(hypervisor_pb2.ListVmsRequest(), timeout=10).vms}
    assert after == before


def test_restoring_a_name_again_is_idempotent_for_the_same_snapshot_only(deployment: Deployment) -> None:
    vm = VM(build_image("hello", "stock"), make_technique("hw"))
    vm.advance(1000)
    first = encode_snapshot(snapshot(vm))
    vm.advance(1000)
    second = encode_snapshot(snapshot(vm))
    name = unique("twice")
    made = restore_in(deployment, first, name, start=False)
    assert restore_in(deployment, first, name, start=False).id == made.id
    with pytest.raises(grpc.RpcError) as err:
        restore_in(deployment, second, name, start=False)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "snapshot" in (err.value.details() or "")


def test_an_ended_vm_cannot_be_snapshotted(deployment: Deployment) -> None:
    image = build_image("hello", "stock")
    name = create(deployment, "hw", False, "stock", image)
    deployment.hypervisor_stub().StartVm(hypervisor_pb2.VmRef(vm=name), timeout=10)
    result_of(deployment, name)
    with pytest.raises(grpc.RpcError) as err:
        deployment.hypervisor_stub().SnapshotVm(hypervisor_pb2.VmRef(vm=name), timeout=30)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "has ended" in (err.value.details() or "")
