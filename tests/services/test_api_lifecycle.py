"""StartVm on a VM that has ended boots it afresh; WaitVm on a VM never started says so at once;
a followed event stream of one VM ends with it; malformed cursors are INVALID_ARGUMENT."""

from __future__ import annotations

import functools
import time
from typing import Any

import grpc
import pytest

from ringlab.guestos import WORKLOADS
from ringlab.rpc.convert import TECHNIQUES
from ringlab.v1 import common_pb2, hypervisor_pb2
from tests.services.conftest import Deployment, code_of, unique

LONG = {"ROUNDS": 100_000}
"""compute runs for minutes with this: only a stop ends it."""
SAFETY = 120.0
"""A safety net for polls, never an expectation of speed."""


def request(name: str, **fields: object) -> hypervisor_pb2.CreateVmRequest:
    fields.setdefault("technique", common_pb2.TECHNIQUE_NATIVE)
    fields.setdefault("workload", "compute")
    return hypervisor_pb2.CreateVmRequest(name=name, **fields)  # type: ignore[arg-type]


def wait(hv: object, name: str) -> hypervisor_pb2.VmResult:
    return hv.WaitVm(  # type: ignore[attr-defined]
        hypervisor_pb2.WaitVmRequest(vm=name, timeout_seconds=SAFETY), timeout=SAFETY + 30
    )


def until_retired(hv: object, name: str) -> None:
    """Poll until the VM has committed progress (it ran at least one slice)."""
    deadline = time.monotonic() + SAFETY
    while time.monotonic() < deadline:
        vm = hv.DescribeVm(hypervisor_pb2.VmRef(vm=name), timeout=10)  # type: ignore[attr-defined]
        if vm.stats.guest.retired > 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"VM {name} never committed progress")


def events(hv: object, name: str) -> list[hypervisor_pb2.Event]:
    request = hypervisor_pb2.StreamEventsRequest(vm=name)
    return list(hv.StreamEvents(request, timeout=30))  # type: ignore[attr-defined]


def test_start_on_an_ended_vm_boots_it_afresh(deployment: Deployment) -> None:
    hv = deployment.hypervisor_stub()
    name = unique("again")
    hv.CreateVm(request(name, defines={"ROUNDS": 3}, start=True), timeout=60)
    first = wait(hv, name)
    assert first.reason == "poweroff"
    started = hv.StartVm(hypervisor_pb2.VmRef(vm=name), timeout=60)
    assert started.status not in (hypervisor_pb2.VM_STATUS_POWEROFF, hypervisor_pb2.VM_STATUS_CREATED)
    second = wait(hv, name)
    # The same run again from the image: the console is not appended to, the counters restart.
    assert second.console == first.console == WORKLOADS["compute"].expected_output({"ROUNDS": 3})
    assert second.registers == first.registers and second.stats.retired == first.stats.retired
    assert any(e.kind == "started" and "rebooted" in e.detail for e in events(hv, name))


def test_start_on_a_vm_stopped_before_it_ran_boots_it(deployment: Deployment) -> None:
    hv = deployment.hypervisor_stub()
    name = unique("stopped")
    hv.CreateVm(request(name, defines={"ROUNDS": 3}), timeout=60)
    ref = hypervisor_pb2.VmRef(vm=name)
    assert hv.StopVm(ref, timeout=10).status == hypervisor_pb2.VM_STATUS_STOPPED
    hv.StartVm(ref, timeout=60)
    result = wait(hv, name)
    assert result.reason == "poweroff" and result.console == WORKLOADS["compute"].expected_output(
        {"ROUNDS": 3}
    )


@pytest.mark.parametrize("technique", ["native", "trap-emulate", "bt", "pv", "hw"])
def test_start_on_a_vm_stopped_mid_run_boots_it_afresh(deployment: Deployment, technique: str) -> None:
    hv = deployment.hypervisor_stub()
    limit = 1_500_000  # ends at its instruction limit: the same registers whenever it is stopped
    fields = {"technique": TECHNIQUES[technique], "defines": LONG, "max_instructions": limit, "start": True}
    reference = unique("ref")
    hv.CreateVm(request(reference, **fields), timeout=60)
    expected = wait(hv, reference)
    assert expected.reason == "limit"
    name = unique("midrun")
    hv.CreateVm(request(name, **fields), timeout=60)
    until_retired(hv, name)
    ref = hypervisor_pb2.VmRef(vm=name)
    stopped = hv.StopVm(ref, timeout=10)
    if stopped.status == hypervisor_pb2.VM_STATUS_STOPPED:  # (not if it reached its limit first)
        assert wait(hv, name).reason == "stopped"
    hv.StartVm(ref, timeout=60)
    result = wait(hv, name)
    assert result.reason == "limit" and result.stats.retired == limit
    assert result.registers == expected.registers and result.console == expected.console


def test_start_on_a_paused_vm_is_failed_precondition(deployment: Deployment) -> None:
    hv = deployment.hypervisor_stub()
    name = unique("paused")
    hv.CreateVm(request(name, defines=LONG, start=True), timeout=60)
    ref = hypervisor_pb2.VmRef(vm=name)
    try:
        hv.PauseVm(ref, timeout=10)
        with pytest.raises(grpc.RpcError) as err:
            hv.StartVm(ref, timeout=10)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "resume" in (err.value.details() or "")
    finally:
        hv.DestroyVm(ref, timeout=10)


def test_start_on_a_started_vm_leaves_it_running(deployment: Deployment) -> None:
    hv = deployment.hypervisor_stub()
    name = unique("twice")
    hv.CreateVm(request(name, defines=LONG, start=True), timeout=60)
    ref = hypervisor_pb2.VmRef(vm=name)
    try:
        until_retired(hv, name)
        assert hv.StartVm(ref, timeout=10).status in (
            hypervisor_pb2.VM_STATUS_RUNNABLE,
            hypervisor_pb2.VM_STATUS_RUNNING,
            hypervisor_pb2.VM_STATUS_BLOCKED,
        )
        assert not any("rebooted" in e.detail for e in events(hv, name))
    finally:
        hv.DestroyVm(ref, timeout=10)


def test_wait_on_a_vm_never_started_is_failed_precondition_at_once(deployment: Deployment) -> None:
    hv = deployment.hypervisor_stub()
    name = unique("idle")
    hv.CreateVm(request(name), timeout=60)
    with pytest.raises(grpc.RpcError) as err:
        hv.WaitVm(hypervisor_pb2.WaitVmRequest(vm=name), timeout=SAFETY)  # no timeout_seconds
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    message = err.value.details() or ""
    assert f"VM {name} was created but not started" in message and f"ringlab vm start {name}" in message


def test_wait_on_a_paused_vm_keeps_waiting(deployment: Deployment) -> None:
    hv = deployment.hypervisor_stub()
    name = unique("pwait")
    hv.CreateVm(request(name, defines={"ROUNDS": 3}, start=True), timeout=60)
    ref = hypervisor_pb2.VmRef(vm=name)
    paused = hv.PauseVm(ref, timeout=10)
    if paused.status == hypervisor_pb2.VM_STATUS_PAUSED:  # (not if it ended first)
        with pytest.raises(grpc.RpcError) as err:
            hv.WaitVm(hypervisor_pb2.WaitVmRequest(vm=name, timeout_seconds=0.3), timeout=SAFETY)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "still paused after the requested wait" in (err.value.details() or "")
        hv.ResumeVm(ref, timeout=10)
    assert wait(hv, name).reason == "poweroff"


# -- event streams ---------------------------------------------------------------------------


def test_following_the_events_of_one_vm_ends_when_it_has_ended(deployment: Deployment) -> None:
    hv = deployment.hypervisor_stub()
    name = unique("follow")
    vm = hv.CreateVm(request(name, defines={"ROUNDS": 3}), timeout=60)
    after = events(hv, name)[-1].cursor  # its "created" event
    follow = hv.StreamEvents(
        hypervisor_pb2.StreamEventsRequest(vm=name, follow=True, after=after), timeout=SAFETY
    )
    hv.StartVm(hypervisor_pb2.VmRef(vm=name), timeout=10)
    kinds = [e.kind for e in follow]  # returns: the stream ends by itself
    assert kinds[0] == "started" and "scheduled" in kinds
    # It ends with the report of the slice the VM ended in, which its pCPU sends after "ended".
    assert kinds[-1] == "descheduled" and set(kinds[kinds.index("ended") + 1 :]) <= {"exit", "descheduled"}
    assert all(e.vm == vm.id for e in events(hv, name))


def test_following_the_events_of_a_vm_that_already_ended_ends(deployment: Deployment) -> None:
    hv = deployment.hypervisor_stub()
    name = unique("over")
    hv.CreateVm(request(name, defines={"ROUNDS": 3}, start=True), timeout=60)
    wait(hv, name)
    new_only = hv.StreamEvents(hypervisor_pb2.StreamEventsRequest(vm=name, follow=True), timeout=SAFETY)
    # Nothing new but the report of the slice it ended in (its pCPU's next grant may land after
    # the stream starts): the stream ends instead of hanging.
    assert {e.kind for e in new_only} <= {"exit", "descheduled"}
    everything = hv.StreamEvents(
        hypervisor_pb2.StreamEventsRequest(vm=name, follow=True, after="0-0"), timeout=SAFETY
    )
    kinds = [e.kind for e in everything]
    assert kinds[-1] == "descheduled"  # the last slice's report, after its end
    assert "ended" in kinds and set(kinds[kinds.index("ended") + 1 :]) <= {"exit", "descheduled"}


def test_following_the_events_of_a_stopped_vm_ends(deployment: Deployment) -> None:
    hv = deployment.hypervisor_stub()
    name = unique("fstop")
    hv.CreateVm(request(name, defines=LONG, start=True), timeout=60)
    follow = hv.StreamEvents(
        hypervisor_pb2.StreamEventsRequest(vm=name, follow=True, after="0-0"), timeout=SAFETY
    )
    until_retired(hv, name)
    hv.StopVm(hypervisor_pb2.VmRef(vm=name), timeout=10)
    kinds = [e.kind for e in follow]
    assert "stopped" in kinds and set(kinds[kinds.index("stopped") + 1 :]) <= {"exit", "descheduled"}


def test_following_the_events_of_every_vm_keeps_going(deployment: Deployment) -> None:
    hv = deployment.hypervisor_stub()
    name = unique("all")
    hv.CreateVm(request(name, defines={"ROUNDS": 3}, start=True), timeout=60)
    wait(hv, name)
    follow = hv.StreamEvents(hypervisor_pb2.StreamEventsRequest(follow=True, after="0-0"), timeout=3)
    seen: list[str] = []
    with pytest.raises(grpc.RpcError) as err:
        for event in follow:
            seen.append(event.kind)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # only the deadline ended it
    assert "ended" in seen


@pytest.mark.parametrize("cursor", ["nonsense", "12-x", "-1", "1-2-3", "99999999999999999999999-0"])
def test_an_invalid_cursor_is_invalid_argument(deployment: Deployment, cursor: str) -> None:
    hv = deployment.hypervisor_stub()
    name = unique("cursor")
    hv.CreateVm(request(name), timeout=60)
    streams: list[Any] = [
        hv.StreamEvents(hypervisor_pb2.StreamEventsRequest(after=cursor), timeout=30),
        hv.StreamEvents(hypervisor_pb2.StreamEventsRequest(vm=name, follow=True, after=cursor), timeout=30),
        hv.StreamConsole(hypervisor_pb2.StreamConsoleRequest(vm=name, after=cursor), timeout=30),
        hv.StreamConsole(hypervisor_pb2.StreamConsoleRequest(vm=name, after=cursor, follow=True), timeout=30),
    ]
    for stream in streams:
        assert code_of(functools.partial(list, stream)) == grpc.StatusCode.INVALID_ARGUMENT
        assert "is not a cursor" in (stream.details() or "")
