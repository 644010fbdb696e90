"""Every Hypervisor RPC against a real deployment: what succeeds, and the status code and message
of what does not."""

from __future__ import annotations

import functools
import time
from typing import Any

import grpc
import pytest

from ringlab.guestos.build import build_image
from ringlab.v1 import common_pb2, hypervisor_pb2
from tests.services.conftest import Deployment, code_of, unique

HELLO = build_image("hello", "stock").to_bytes()


def create(
    hv: Any, name: str, *, start: bool = False, image: bytes = HELLO, **fields: Any
) -> hypervisor_pb2.Vm:
    request = hypervisor_pb2.CreateVmRequest(
        name=name,
        technique=fields.pop("technique", common_pb2.TECHNIQUE_NATIVE),
        kernel=common_pb2.KERNEL_FLAVOUR_STOCK,
        workload=fields.pop("workload", "hello"),
        image=image,
        start=start,
        **fields,
    )
    return hv.CreateVm(request, timeout=30)


def test_create_is_idempotent_by_name(deployment: Deployment) -> None:
    hv = deployment.hypervisor_stub()
    name = unique("same")
    first = create(hv, name)
    second = create(hv, name)
    assert first.id == second.id
    assert first.status == hypervisor_pb2.VM_STATUS_CREATED


@pytest.mark.parametrize(
    ("fields", "code", "words"),
    [
        ({"name": "bad name!"}, grpc.StatusCode.INVALID_ARGUMENT, "not valid"),
        (
            {"technique": common_pb2.TECHNIQUE_UNSPECIFIED},
            grpc.StatusCode.INVALID_ARGUMENT,
            "choose a technique",
        ),
        ({"nested_paging": True}, grpc.StatusCode.INVALID_ARGUMENT, "nested_paging applies to technique hw"),
        ({"memory_size": 1 << 30}, grpc.StatusCode.INVALID_ARGUMENT, "per-VM limit"),
        ({"memory_size": 99_999_999_999_999}, grpc.StatusCode.INVALID_ARGUMENT, "per-VM limit of 67108864"),
        ({"memory_size": 5000}, grpc.StatusCode.INVALID_ARGUMENT, "multiple of 4096"),
        ({"cap": 150}, grpc.StatusCode.INVALID_ARGUMENT, "percent"),
        ({"image": b"", "workload": "nope"}, grpc.StatusCode.INVALID_ARGUMENT, "valid workloads are hello,"),
        ({"image": b"", "workload": ""}, grpc.StatusCode.INVALID_ARGUMENT, "name a guest-OS workload"),
        ({"image": b"not an image"}, grpc.StatusCode.INVALID_ARGUMENT, "not a Ringlab image"),
    ],
)
def test_create_rejects_bad_requests_with_an_actionable_message(
    deployment: Deployment, fields: dict[str, Any], code: grpc.StatusCode, words: str
) -> None:
    hv = deployment.hypervisor_stub()
    name = str(fields.pop("name", unique("bad")))
    with pytest.raises(grpc.RpcError) as err:
        create(hv, name, **fields)
    assert err.value.code() == code
    assert words in (err.value.details() or "")


def test_unknown_vm_is_not_found_everywhere(deployment: Deployment) -> None:
    hv = deployment.hypervisor_stub()
    ref = hypervisor_pb2.VmRef(vm="no-such-vm")
    for method in (hv.DescribeVm, hv.StartVm, hv.PauseVm, hv.ResumeVm, hv.StopVm, hv.DestroyVm):
        assert code_of(functools.partial(method, ref, timeout=10)) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: hv.WaitVm(hypervisor_pb2.WaitVmRequest(vm="no-such-vm"), timeout=10)) == (
        grpc.StatusCode.NOT_FOUND
    )
    stream = hv.StreamConsole(hypervisor_pb2.StreamConsoleRequest(vm="no-such-vm"), timeout=10)
    assert code_of(lambda: list(stream)) == grpc.StatusCode.NOT_FOUND
    assert (
        code_of(lambda: hv.DescribeVm(hypervisor_pb2.VmRef(vm=""), timeout=10))
        == grpc.StatusCode.INVALID_ARGUMENT
    )


def test_lifecycle_start_pause_resume_stop_destroy(deployment: Deployment) -> None:
    hv = deployment.hypervisor_stub()
    name = unique("life")
    image = build_image("compute", "stock", {"ROUNDS": 100_000}).to_bytes()  # runs for minutes
    create(hv, name, image=image)
    ref = hypervisor_pb2.VmRef(vm=name)
    assert code_of(lambda: hv.PauseVm(ref, timeout=10)) == grpc.StatusCode.FAILED_PRECONDITION
    assert code_of(lambda: hv.ResumeVm(ref, timeout=10)) == grpc.StatusCode.FAILED_PRECONDITION
    assert hv.StartVm(ref, timeout=10).status in (
        hypervisor_pb2.VM_STATUS_RUNNABLE,
        hypervisor_pb2.VM_STATUS_RUNNING,
    )
    assert hv.PauseVm(ref, timeout=10).status == hypervisor_pb2.VM_STATUS_PAUSED
    assert hv.ResumeVm(ref, timeout=10).status in (
        hypervisor_pb2.VM_STATUS_RUNNABLE,
        hypervisor_pb2.VM_STATUS_RUNNING,
    )
    stopped = hv.StopVm(ref, timeout=10)
    assert stopped.status == hypervisor_pb2.VM_STATUS_STOPPED
    assert (
        hv.WaitVm(hypervisor_pb2.WaitVmRequest(vm=name, timeout_seconds=10), timeout=20).reason == "stopped"
    )
    assert hv.DestroyVm(ref, timeout=10).destroyed
    assert code_of(lambda: hv.DescribeVm(ref, timeout=10)) == grpc.StatusCode.NOT_FOUND


def test_wait_times_out_with_failed_precondition(deployment: Deployment) -> None:
    hv = deployment.hypervisor_stub()
    name = unique("idle")
    create(hv, name)  # never started
    status = code_of(
        lambda: hv.WaitVm(hypervisor_pb2.WaitVmRequest(vm=name, timeout_seconds=0.2), timeout=10)
    )
    assert status == grpc.StatusCode.FAILED_PRECONDITION


def test_console_events_list_and_stats_of_a_finished_vm(deployment: Deployment) -> None:
    hv = deployment.hypervisor_stub()
    name = unique("hello")
    vm = create(hv, name, start=True)
    hv.WaitVm(hypervisor_pb2.WaitVmRequest(vm=name, timeout_seconds=60), timeout=90)
    chunks = list(hv.StreamConsole(hypervisor_pb2.StreamConsoleRequest(vm=name, follow=True), timeout=30))
    assert b"".join(c.data for c in chunks) == b"Hello from ring 3! I am pid 1.\n"
    events = list(hv.StreamEvents(hypervisor_pb2.StreamEventsRequest(vm=name), timeout=30))
    kinds = [e.kind for e in events]
    assert kinds[0] == "created" and "scheduled" in kinds and "ended" in kinds
    deadline = time.monotonic() + 10  # the exit summary of the last slice joins the next grant
    while "exit" not in kinds and time.monotonic() < deadline:
        time.sleep(0.05)
        kinds = [e.kind for e in hv.StreamEvents(hypervisor_pb2.StreamEventsRequest(vm=name), timeout=30)]
    exits = [
        e.detail
        for e in hv.StreamEvents(hypervisor_pb2.StreamEventsRequest(vm=name), timeout=30)
        if e.kind == "exit"
    ]
    assert exits == ["io_out x32"]
    listed = {v.name: v for v in hv.ListVms(hypervisor_pb2.ListVmsRequest(), timeout=10).vms}
    assert listed[name].id == vm.id and listed[name].status == hypervisor_pb2.VM_STATUS_POWEROFF
    assert listed[name].stats.exits == 32  # 31 console bytes and the power-off
    stats = hv.GetStats(hypervisor_pb2.GetStatsRequest(), timeout=10)
    assert any(p.pcpu == deployment.pcpu and p.alive and p.slices > 0 for p in stats.pcpus)


def test_run_via_prints_what_the_in_process_run_prints(
    deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    from ringlab.cli import main

    assert main(["boot", "--workload", "hello", "--json"]) == 0
    local = capsys.readouterr().out
    assert main(["boot", "--workload", "hello", "--json", "--via", deployment.hypervisor_target]) == 0
    remote = capsys.readouterr().out
    import json

    a, b = json.loads(local), json.loads(remote)
    assert a["console"] == b["console"] and a["exit"] == b["exit"] and a["registers"] == b["registers"]
    assert a["stats"]["guest"] == b["stats"]["guest"]
    assert main(["boot", "--workload", "hello"]) == 0
    plain_local = capsys.readouterr()
    assert main(["boot", "--workload", "hello", "--via", deployment.hypervisor_target]) == 0
    plain_remote = capsys.readouterr()
    assert plain_local.out == plain_remote.out and plain_local.err == plain_remote.err


def test_run_via_an_unreachable_deployment_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    from ringlab.cli import main

    assert main(["boot", "--workload", "hello", "--via", "127.0.0.1:1"]) == 3
    err = capsys.readouterr().err
    assert "UNAVAILABLE" in err and "ringlab up" in err
