"""The flight recorder through the services (issue 15): the hypervisor records every slice a VM
runs and the exits in it, keeps them in the store with the VM, and GetFlightRecord and
``ringlab trace vm`` hand them out; the exits kept are the VM's statistics, reason by reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from ringlab.guestos.build import build_image
from ringlab.rpc.convert import KERNELS, TECHNIQUES
from ringlab.store import LocalRedis
from ringlab.v1 import hypervisor_pb2
from ringlab.vmm.recorder import exits_by_reason
from tests.services.conftest import Deployment, start_deployment, unique

EVERY_SLICE = 1_000_000
"""The deployment here keeps every slice of its VMs: the exits kept are then all the VM's exits,
however many slices a busy host cuts a run into (the default keeps the last 256)."""


@pytest.fixture(scope="module")
def deployment(redis_server: LocalRedis) -> Iterator[Deployment]:
    before = os.environ.get("RINGLAB_FLIGHT_SLICES")
    os.environ["RINGLAB_FLIGHT_SLICES"] = str(EVERY_SLICE)  # read once, as the hypervisor starts
    try:
        d = start_deployment(redis_server)
    finally:
        if before is None:
            del os.environ["RINGLAB_FLIGHT_SLICES"]
        else:
            os.environ["RINGLAB_FLIGHT_SLICES"] = before
    yield d
    d.hypervisor.stop(1)
    d.cpu.stop(1)


def run(deployment: Deployment, technique: str, workload: str = "syscall") -> tuple[str, dict[str, Any]]:
    hv = deployment.hypervisor_stub()
    kernel = "paravirt" if technique == "pv" else "stock"
    name = unique(f"flight-{technique}")
    hv.CreateVm(
        hypervisor_pb2.CreateVmRequest(
            name=name,
            technique=TECHNIQUES[technique],
            kernel=KERNELS[kernel],
            workload=workload,
            image=build_image(workload, kernel).to_bytes(),
            start=True,
        )
    )
    result = hv.WaitVm(hypervisor_pb2.WaitVmRequest(vm=name, timeout_seconds=120), timeout=150)
    return name, json.loads(result.result_json)


@pytest.mark.parametrize("technique", ["bt", "hw", "pv"])
def test_the_exits_a_deployment_recorded_are_the_vms_statistics(
    deployment: Deployment, technique: str
) -> None:
    name, result = run(deployment, technique)
    reply = deployment.hypervisor_stub().GetFlightRecord(hypervisor_pb2.FlightRecordRequest(vm=name))
    records = json.loads(reply.records_json)
    assert reply.name == name
    assert exits_by_reason(records) == result["stats"]["guest"]["exits"]
    slices = [r for r in records if r["kind"] == "slice"]
    assert slices and all(s["pcpu"] == deployment.pcpu for s in slices)
    numbers = [s["slice"] for s in slices]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    assert slices[-1]["why"] == "ended"
    exits = [r for r in records if r["kind"] == "exit"]
    assert {e["slice"] for e in exits} <= set(numbers)
    kept = {s["slice"]: s["exits"] for s in slices if s["why"] != "lost"}
    assert all(kept[n] == sum(1 for e in exits if e["slice"] == n) for n in kept)


def test_asking_for_the_last_slices_gives_the_newest(deployment: Deployment) -> None:
    name, _ = run(deployment, "hw", workload="spawnwait")
    hv = deployment.hypervisor_stub()
    every = json.loads(hv.GetFlightRecord(hypervisor_pb2.FlightRecordRequest(vm=name)).records_json)
    last = json.loads(hv.GetFlightRecord(hypervisor_pb2.FlightRecordRequest(vm=name, slices=1)).records_json)
    assert [r for r in last if r["kind"] == "slice"] == [r for r in every if r["kind"] == "slice"][-1:]
    assert last == every[len(every) - len(last) :]


def test_the_flight_record_of_a_vm_that_does_not_exist_is_not_found(deployment: Deployment) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        deployment.hypervisor_stub().GetFlightRecord(hypervisor_pb2.FlightRecordRequest(vm="no-such-vm"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_destroying_a_vm_forgets_its_flight_record(deployment: Deployment) -> None:
    from ringlab.store import keys

    name, _ = run(deployment, "hw", workload="hello")
    hv = deployment.hypervisor_stub()
    vm = hv.DescribeVm(hypervisor_pb2.VmRef(vm=name)).id
    hv.GetFlightRecord(hypervisor_pb2.FlightRecordRequest(vm=name))  # its last slice is kept then
    assert deployment.state.r.exists(keys.vm_flight(vm))
    hv.DestroyVm(hypervisor_pb2.VmRef(vm=name))
    assert not deployment.state.r.exists(keys.vm_flight(vm))


def test_a_slice_kept_after_its_vm_was_destroyed_does_not_bring_the_record_back(
    deployment: Deployment,
) -> None:
    """The driver keeps a slice's records just after its commit: DestroyVm may come between, and
    the late records must not recreate the stream, which nothing would delete again."""
    from ringlab.store import keys

    name, _ = run(deployment, "hw", workload="hello")
    hv = deployment.hypervisor_stub()
    vm = hv.DescribeVm(hypervisor_pb2.VmRef(vm=name)).id
    hv.DestroyVm(hypervisor_pb2.VmRef(vm=name))
    deployment.state.flight_append(vm, [{"kind": "slice", "slice": 99, "why": "ended"}], 256)
    assert not deployment.state.r.exists(keys.vm_flight(vm))


def test_ringlab_trace_vm_writes_the_deployments_history(deployment: Deployment, tmp_path: Path) -> None:
    name, result = run(deployment, "hw", workload="hello")
    out = tmp_path / "deployment.json"
    p = subprocess.run(
        [sys.executable, "-m", "ringlab.cli", "trace", "vm", name, "--target", deployment.hypervisor_target,
         "-o", str(out), "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert {r["reason"]: r["count"] for r in doc["summary"]} == result["stats"]["guest"]["exits"]
    events = json.loads(out.read_text())["traceEvents"]
    tracks = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    assert tracks == {f"VM {name}", f"pCPU {deployment.pcpu}"}


def test_ringlab_trace_vm_of_an_unknown_vm_is_one_line_and_status_3(
    deployment: Deployment, tmp_path: Path
) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "ringlab.cli", "trace", "vm", "no-such-vm", "--target", deployment.hypervisor_target,
         "-o", str(tmp_path / "x.json")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert p.returncode == 3, p.stderr
    assert "Traceback" not in p.stderr and "no-such-vm" in p.stderr
