"""Live migration between two deployments (issue 16): a running VM moved by pre-copy ends with the
console, exit, registers and guest statistics of a VM never moved, under every technique; the
report says the rounds (a full copy first, stop-and-copy last) and the downtime; the VM is then
gone from the source.  A migration that fails (the destination unreachable, the name taken
there) leaves the VM running at the source, and the destination with nothing; a destination
that holds a committed but unstarted copy drops it when the source aborts."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from ringlab.guestos.build import build_image
from ringlab.hypervisor.migration import memory_digest
from ringlab.image import Image
from ringlab.rpc.convert import KERNELS, TECHNIQUES
from ringlab.store import LocalRedis
from ringlab.store.server import free_port
from ringlab.v1 import hypervisor_pb2
from ringlab.vmm import VM, make_technique, run_vm
from ringlab.vmm.snapshot import encode_snapshot, snapshot
from tests.services.conftest import Deployment, unique
from tests.services.moving import comparable, every_technique, host

PARAMS = every_technique("hw")
WORKLOAD, DEFINES = "multi", {"ITERATIONS": 3}
"""About 1.2 million instructions: hundreds of the deployments' slices."""
SLICE = 5_000
CAP = 10
"""Percent of a pCPU each VM may use: it runs ten times longer in wall time (and so is still
running when a migration is asked for, however fast the host), with the same results."""
LINK = 2_000_000
"""The modelled link, bytes per second: a full copy of the VM takes a good part of a second, so
the VM runs (and dirties pages) while pre-copy goes on."""
Chunk = hypervisor_pb2.MigrationChunk


@pytest.fixture(scope="module")
def source(redis_server: LocalRedis) -> Iterator[Deployment]:
    with host(redis_server, db=4, slice=SLICE) as d:
        yield d


@pytest.fixture(scope="module")
def destination(redis_server: LocalRedis) -> Iterator[Deployment]:
    with host(redis_server, db=5, slice=SLICE) as d:
        yield d


def running(d: Deployment, technique: str, nested: bool, kernel: str, image: Image) -> str:
    """A VM created, started, and seen to commit progress (so it is mid-run)."""
    hv = d.hypervisor_stub()
    name = hv.CreateVm(
        hypervisor_pb2.CreateVmRequest(
            name=unique(f"mig-{technique}"),
            technique=TECHNIQUES[technique],
            nested_paging=nested,
            kernel=KERNELS[kernel],
            workload=WORKLOAD,
            defines=DEFINES,
            image=image.to_bytes(),
            cap=CAP,
            start=True,
        ),
        timeout=30,
    ).name
    for _ in range(4000):
        if hv.DescribeVm(hypervisor_pb2.VmRef(vm=name), timeout=10).stats.guest.retired > 0:
            return name
        time.sleep(0.005)
    raise AssertionError(f"{name} committed no progress")


def runs_on(d: Deployment, name: str) -> None:
    """The VM is not paused and goes on committing progress (then it is stopped: its whole run
    to the end is the every-technique test's)."""
    hv, ref = d.hypervisor_stub(), hypervisor_pb2.VmRef(vm=name)
    first = hv.DescribeVm(ref, timeout=10)
    assert first.status != hypervisor_pb2.VM_STATUS_PAUSED
    for _ in range(4000):
        now = hv.DescribeVm(ref, timeout=10)
        if (
            now.stats.guest.retired > first.stats.guest.retired
            or now.status == hypervisor_pb2.VM_STATUS_POWEROFF
        ):
            break
        time.sleep(0.005)
    else:
        raise AssertionError(f"{name} made no progress after the failed migration")
    hv.StopVm(ref, timeout=10)


def result_of(d: Deployment, name: str) -> dict[str, Any]:
    reply = d.hypervisor_stub().WaitVm(
        hypervisor_pb2.WaitVmRequest(vm=name, timeout_seconds=240), timeout=260
    )
    doc: dict[str, Any] = json.loads(reply.result_json)
    doc["console"] = reply.console.decode("latin-1")
    return doc


def migrate(source: Deployment, name: str, to: str, **kw: Any) -> hypervisor_pb2.MigrationReport:
    request = hypervisor_pb2.MigrateVmRequest(vm=name, to=to, bandwidth=LINK, **kw)
    report: hypervisor_pb2.MigrationReport = source.hypervisor_stub().MigrateVm(request, timeout=300)
    return report


def names(d: Deployment) -> set[str]:
    return {v.name for v in d.hypervisor_stub().ListVms(hypervisor_pb2.ListVmsRequest(), timeout=10).vms}


@pytest.mark.parametrize(("technique", "nested", "kernel"), PARAMS)
def test_a_running_vm_moved_to_another_deployment_ends_as_if_never_moved(
    source: Deployment, destination: Deployment, technique: str, nested: bool, kernel: str
) -> None:
    image = build_image(WORKLOAD, kernel, DEFINES)
    want = run_vm(image, technique=technique, nested_paging=nested).to_json()
    name = running(source, technique, nested, kernel, image)
    report = migrate(source, name, destination.hypervisor_target)
    rounds = list(report.rounds)
    assert rounds[0].round == 0 and rounds[0].pages > 0 and not rounds[0].stop_and_copy
    assert rounds[-1].stop_and_copy and [r.round for r in rounds] == list(range(len(rounds)))
    assert all(r.bytes >= r.pages * 4096 for r in rounds)
    assert report.name == name and report.destination_vm and report.started
    assert report.downtime_seconds > 0 and report.total_seconds >= report.downtime_seconds
    assert report.downtime_cycles == round(report.downtime_link_seconds * 3.8e9)
    assert name not in names(source)
    kinds = [(e["kind"], e["vm"]) for e in source.state.events_read("0-0", count=100_000)]
    assert [k for k in kinds if k[1] == report.vm and k[0].startswith("migrat")] == [
        ("migrating", report.vm),
        ("migrated", report.vm),
    ]
    assert ("destroyed", report.vm) in kinds
    arrived = [
        e for e in destination.state.events_read("0-0", count=100_000) if e["vm"] == report.destination_vm
    ]
    assert [e["kind"] for e in arrived][:3] == ["created", "migrated-in", "started"]
    moved = result_of(destination, name)
    assert comparable(moved, technique) == comparable(want, technique)


def test_a_migration_to_an_unreachable_deployment_leaves_the_vm_running_at_the_source(
    source: Deployment, destination: Deployment
) -> None:
    image = build_image(WORKLOAD, "stock", DEFINES)
    name = running(source, "hw", False, "stock", image)
    with pytest.raises(grpc.RpcError) as err:
        migrate(source, name, f"127.0.0.1:{free_port()}")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value.details()
    assert "does not answer" in (err.value.details() or "")
    vm = source.state.resolve(name)
    failed = [
        e for e in source.state.events_read("0-0", count=100_000) if e["vm"] == vm and "migrat" in e["kind"]
    ]
    assert [e["kind"] for e in failed] == ["migration-failed"] and "127.0.0.1:" in failed[0]["detail"]
    runs_on(source, name)
    assert name not in names(destination)


def test_a_name_taken_at_the_destination_is_refused_and_the_vm_runs_on(
    source: Deployment, destination: Deployment
) -> None:
    image = build_image(WORKLOAD, "stock", DEFINES)
    name = running(source, "bt", False, "stock", image)
    destination.hypervisor_stub().CreateVm(
        hypervisor_pb2.CreateVmRequest(name=name, technique=TECHNIQUES["native"], workload="hello"),
        timeout=30,
    )
    with pytest.raises(grpc.RpcError) as err:
        migrate(source, name, destination.hypervisor_target)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS and "--name" in (err.value.details() or "")
    runs_on(source, name)


def _state_of(pages_every: int = 1) -> tuple[bytes, dict[int, bytes], str]:
    """A small VM's state as a COMMIT carries it (no pages), its pages, and their digest."""
    vm = VM(build_image("hello", "stock"), make_technique("hw"))
    vm.advance(500)
    snap = snapshot(vm)
    state = encode_snapshot(type(snap)(**{**snap.__dict__, "pages": {}}))
    return state, snap.pages, memory_digest(snap.pages)


def test_the_destination_checks_the_memory_and_drops_a_committed_copy_when_the_source_aborts(
    destination: Deployment,
) -> None:
    hv = destination.hypervisor_stub()
    state, pages, digest = _state_of()
    name, migration = unique("incoming"), unique("m")
    hv.ReceiveMigration(Chunk(migration=migration, step=Chunk.STEP_BEGIN, name=name), timeout=30)
    some = dict(list(pages.items())[:-1])  # one page short
    held = hv.ReceiveMigration(Chunk(migration=migration, step=Chunk.STEP_PAGES, pages=some), timeout=30)
    assert held.pages_held == len(some)
    commit = Chunk(migration=migration, step=Chunk.STEP_COMMIT, snapshot=state, memory_sha256=digest)
    with pytest.raises(grpc.RpcError) as err:
        hv.ReceiveMigration(commit, timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "memory" in (err.value.details() or "")
    assert name not in names(destination)
    hv.ReceiveMigration(Chunk(migration=migration, step=Chunk.STEP_PAGES, pages=pages), timeout=30)
    made = hv.ReceiveMigration(commit, timeout=60).vm
    vm = hv.DescribeVm(hypervisor_pb2.VmRef(vm=made), timeout=10)
    assert vm.name == name and vm.status == hypervisor_pb2.VM_STATUS_CREATED  # not started
    hv.ReceiveMigration(Chunk(migration=migration, step=Chunk.STEP_ABORT), timeout=30)
    assert name not in names(destination)


def test_a_step_of_a_migration_never_begun_is_not_found(destination: Deployment) -> None:
    hv = destination.hypervisor_stub()
    page = {1: hashlib.sha256(b"x").digest() * 128}
    with pytest.raises(grpc.RpcError) as err:
        hv.ReceiveMigration(Chunk(migration="nothing", step=Chunk.STEP_PAGES, pages=page), timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "begin again" in (err.value.details() or "")


def test_a_paused_vm_moves_in_one_round_and_arrives_created(
    source: Deployment, destination: Deployment
) -> None:
    """A VM its operator paused does not run while it moves: one full copy, the stop-and-copy,
    and at the destination it waits, created, until started there; then it ends as it would
    have."""
    image = build_image(WORKLOAD, "stock", DEFINES)
    name = running(source, "hw", False, "stock", image)
    source.hypervisor_stub().PauseVm(hypervisor_pb2.VmRef(vm=name), timeout=10)
    report = migrate(source, name, destination.hypervisor_target)
    assert not report.started and [r.stop_and_copy for r in report.rounds] == [False, True]
    there = destination.hypervisor_stub()
    assert (
        there.DescribeVm(hypervisor_pb2.VmRef(vm=name), timeout=10).status == hypervisor_pb2.VM_STATUS_CREATED
    )
    there.StartVm(hypervisor_pb2.VmRef(vm=name), timeout=10)
    assert comparable(result_of(destination, name), "hw") == comparable(
        run_vm(image, technique="hw").to_json(), "hw"
    )


class Failing:
    """The real destination (``GrpcDestination``), with one fault at one phase of the migration:
    the call refused before it reaches the destination, or (``lost``) made there and its answer
    lost on the way back; after it, the destination does not answer at all if ``gone``; with
    ``paused``, only once the source has paused the VM (stop-and-copy)."""

    def __init__(
        self, address: str, phase: str, *, lost: bool = False, gone: bool = False, paused: bool = False
    ) -> None:
        from ringlab_hypervisor.migration_link import GrpcDestination

        self.real = GrpcDestination(address, "")
        self.phase, self.lost, self.gone, self.when_paused = phase, lost, gone, paused
        self.failed = False
        self.source_paused = False
        """Set by ``SourceStore`` when the source pauses the VM (stop-and-copy has begun)."""

    def _call(self, phase: str, call: Any) -> Any:
        if self.failed and self.gone:
            raise ConnectionError("the destination does not answer")
        if phase != self.phase or self.failed or (self.when_paused and not self.source_paused):
            return call()
        self.failed = True
        if self.lost:
            call()
        raise ConnectionError(f"injected: the {phase} step {'answer lost' if self.lost else 'refused'}")

    def begin(self, migration: str, name: str) -> None:
        self._call("begin", lambda: self.real.begin(migration, name))

    def pages(self, migration: str, pages: Any) -> int:
        return int(self._call("pages", lambda: self.real.pages(migration, pages)))

    def commit(self, migration: str, snapshot: bytes, digest: str) -> str:
        return str(self._call("commit", lambda: self.real.commit(migration, snapshot, digest)))

    def abort(self, migration: str) -> None:
        self._call("abort", lambda: self.real.abort(migration))

    def start(self, vm: str) -> None:
        self._call("start", lambda: self.real.start(vm))

    def status(self, vm: str) -> str:
        return str(self._call("status", lambda: self.real.status(vm)))


class SourceStore:
    """The source deployment's store as migration uses it (its own DestroyVm is the store's),
    telling ``failing`` when the VM is paused for stop-and-copy."""

    def __init__(self, d: Deployment, failing: Failing) -> None:
        s, self._failing, self._control = d.state, failing, d.state.control
        self.vm_record, self.vm_image, self.load_vcpu = s.vm_record, s.vm_image, s.load_vcpu
        self.sched_entry, self.destroy_vm, self.add_event = s.sched_entry, s.destroy_vm, s.add_event

    def control(self, vm: str, action: str) -> str:
        self._failing.source_paused |= action == "pause"
        return self._control(vm, action)


RUNNING = ("runnable", "running", "blocked")
FAULTS = {
    "begin refused": {"phase": "begin"},
    "first pages refused": {"phase": "pages"},
    "the state refused, the VM paused": {"phase": "commit", "paused": True},
    "commit's answer lost": {"phase": "commit", "lost": True},
    "start refused": {"phase": "start"},
    "start's answer lost, then no answer": {"phase": "start", "lost": True, "gone": True},
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_migration_failing_at_any_phase_leaves_exactly_one_running_copy(
    source: Deployment, destination: Deployment, fault: str
) -> None:
    from ringlab.hypervisor.migration import MigrationFailed, MigrationOptions, migrate

    image = build_image(WORKLOAD, "stock", DEFINES)
    name = running(source, "hw", False, "stock", image)
    vm = source.state.resolve(name)
    failing = Failing(destination.hypervisor_target, **FAULTS[fault])  # type: ignore[arg-type]
    with pytest.raises((ConnectionError, MigrationFailed)):
        migrate(SourceStore(source, failing), vm, failing, MigrationOptions(bandwidth=LINK * 4, name=name))
    assert failing.failed, "the fault was never injected"
    here = source.state.sched_entry(vm).get("status")
    there_id = destination.state.vm_by_name(name)
    there = destination.state.sched_entry(there_id).get("status") if there_id else None
    copies = [where for where, status in (("source", here), ("destination", there)) if status in RUNNING]
    assert len(copies) == 1, (fault, here, there)
    if fault == "start's answer lost, then no answer":  # it runs there; here it waits, paused
        assert (here, copies) == ("paused", ["destination"])
    else:  # aborted: it runs on here, and nothing is left there
        assert copies == ["source"] and there is None
    for d, ref in ((source, vm), (destination, there_id)):
        if ref:
            d.state.destroy_vm(ref)
