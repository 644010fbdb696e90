"""Hostile input and clients (issue 14): every refusal is a precise status, INVALID_ARGUMENT
names the field at fault (``google.rpc.BadRequest``), no message reveals a fencing token, and the
quotas a teacher sets hold (docs/services.md, Quotas): a console flood beside a normal VM is
stopped at its quota with status LIMIT, its Redis stream holds exactly the quota, and the normal
VM's console is intact; memory beyond the deployment's limit is INVALID_ARGUMENT at create.

Everything is real: a Redis server of this module's own, the cpu and hypervisor services on
loopback, a guest service."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from ringlab.asm import assemble
from ringlab.guestos.build import WORKLOADS
from ringlab.hypervisor import Limits
from ringlab.rpc import ServiceServer, StreamSlots, open_channel
from ringlab.store import Commit, LocalRedis, SharedState
from ringlab.v1 import common_pb2, cpu_pb2, cpu_pb2_grpc, guest_pb2, guest_pb2_grpc, hypervisor_pb2
from ringlab.v1 import hypervisor_pb2_grpc as hv_grpc
from tests.services.conftest import service_config, unique
from tests.services.grpc_fuzz import bad_request_fields

QUOTA = 3000
"""This deployment's console quota (bytes)."""
MAX_MEMORY = 8 << 20
FLOOD = """
.entry start
start:  mov eax, 0x41           ; 'A', forever, to the console
.again: out 0x3F8, eax
        jmp .again
"""
SPIN = """
.entry start
start:  jmp start               ; never ends, never exits: a VM that holds its grant
"""


@dataclass
class Quotas:
    redis: LocalRedis
    state: SharedState
    cpu: ServiceServer
    hypervisor: ServiceServer

    def stub(self) -> hv_grpc.HypervisorStub:
        return hv_grpc.HypervisorStub(open_channel(f"127.0.0.1:{self.hypervisor.port}"))

    def cpu_stub(self) -> cpu_pb2_grpc.CpuStub:
        return cpu_pb2_grpc.CpuStub(open_channel(f"127.0.0.1:{self.cpu.port}"))


@pytest.fixture(scope="module")
def quotas() -> Iterator[Quotas]:
    from ringlab_cpu.service import serve as serve_cpu
    from ringlab_hypervisor.service import serve as serve_hypervisor

    redis = LocalRedis.start()
    state = SharedState.from_url(redis.url)
    state.r.set("rl:fence", 987_654_320)  # fencing tokens no other number here looks like
    cpu, _ = serve_cpu(service_config("cpu", redis.url, pcpu=unique("pcpu")))
    hypervisor, _ = serve_hypervisor(
        service_config("hypervisor", redis.url, slice=20_000),
        Limits(max_memory=MAX_MEMORY, console_quota=QUOTA),
    )
    yield Quotas(redis, state, cpu, hypervisor)
    hypervisor.stop(1)
    cpu.stop(1)
    redis.stop()


def raw_vm(name: str, source: str, **fields: Any) -> hypervisor_pb2.CreateVmRequest:
    return hypervisor_pb2.CreateVmRequest(
        name=name, technique=common_pb2.TECHNIQUE_NATIVE, image=assemble(source).to_bytes(), **fields
    )


def refusal(call: object) -> grpc.RpcError:
    assert callable(call)
    with pytest.raises(grpc.RpcError) as err:
        result = call()
        if hasattr(result, "__next__"):  # a stream: its status comes with its first message
            list(result)
    return err.value


def stream_bytes(state: SharedState, vm: str) -> tuple[int, int]:
    """(bytes, entries) of the VM's console stream in Redis."""
    entries = state.r.xrange(f"rl:{{vm:{vm}}}:console")
    return sum(len(fields[b"data"]) for _id, fields in entries), len(entries)


# -- quotas ---------------------------------------------------------------------------------------
def test_a_console_flood_is_stopped_at_its_quota_beside_an_intact_vm(quotas: Quotas) -> None:
    hv = quotas.stub()
    flood = hv.CreateVm(raw_vm(unique("flood"), FLOOD, start=True), timeout=60)
    normal = hv.CreateVm(
        hypervisor_pb2.CreateVmRequest(
            name=unique("normal"), technique=common_pb2.TECHNIQUE_BT, workload="hello", start=True
        ),
        timeout=60,
    )
    assert flood.console_quota == QUOTA  # the deployment's, as none was asked for
    flooded = hv.WaitVm(hypervisor_pb2.WaitVmRequest(vm=flood.id, timeout_seconds=240), timeout=300)
    ended = hv.WaitVm(hypervisor_pb2.WaitVmRequest(vm=normal.id, timeout_seconds=240), timeout=300)

    assert flooded.vm.status == hypervisor_pb2.VM_STATUS_LIMIT, flooded.vm.detail
    assert f"console quota of {QUOTA} bytes exceeded" in flooded.vm.detail
    assert flooded.reason == "limit" and flooded.console == b"A" * QUOTA
    size, entries = stream_bytes(quotas.state, flood.id)
    assert size == QUOTA and 1 <= entries <= QUOTA  # the stream in Redis is bounded too
    assert int(quotas.state.r.hget(f"rl:{{vm:{flood.id}}}:vcpu", "console_bytes")) == QUOTA

    assert ended.vm.status == hypervisor_pb2.VM_STATUS_POWEROFF
    assert ended.console == WORKLOADS["hello"].expected_output()
    assert stream_bytes(quotas.state, normal.id)[0] == len(ended.console)


def test_a_vm_may_ask_for_a_smaller_console_quota_not_a_larger_one(quotas: Quotas) -> None:
    hv = quotas.stub()
    small = hv.CreateVm(raw_vm(unique("small"), FLOOD, console_quota=100, start=True), timeout=60)
    assert small.console_quota == 100
    result = hv.WaitVm(hypervisor_pb2.WaitVmRequest(vm=small.id, timeout_seconds=120), timeout=150)
    assert result.vm.status == hypervisor_pb2.VM_STATUS_LIMIT and result.console == b"A" * 100

    err = refusal(lambda: hv.CreateVm(raw_vm(unique("big"), FLOOD, console_quota=QUOTA + 1), timeout=60))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"console quota of {QUOTA} bytes" in (err.details() or "")
    assert bad_request_fields(err) == ["console_quota"]


@pytest.mark.parametrize("memory", [99_999_999_999_999, MAX_MEMORY + 4096, (1 << 64) - 1])
def test_memory_beyond_the_deployments_limit_is_invalid_argument(quotas: Quotas, memory: int) -> None:
    err = refusal(lambda: quotas.stub().CreateVm(raw_vm(unique("big"), SPIN, memory_size=memory), timeout=60))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"per-VM limit of {MAX_MEMORY} bytes" in (err.details() or "")
    assert bad_request_fields(err) == ["memory_size"]


def test_the_console_stream_is_bounded_whoever_commits(quotas: Quotas) -> None:
    """commit.lua cuts console bytes past the record's quota (a commit from anyone holding a
    grant: the bound is the store's, not only the hypervisor's)."""
    state = SharedState.from_url(quotas.redis.url.rsplit("/", 1)[0] + "/1")  # no service here
    created, vm = state.create_vm(
        unique("lua"),
        {"name": "lua", "console_quota": 10, "memory_size": 4096},
        b"",
        {},
        {},
        {"status": "paused", "weight": 256, "cap": 0},
        {},
    )
    assert created
    version, _entries = state.sched_snapshot()
    granted = state.grant(
        version=version, pcpu="nobody", now=time.time(), lease_seconds=30, chosen=vm, updates={}, events=[]
    )
    assert granted.applied
    generation = 0
    for chunk in (b"x" * 7, b"y" * 7, b"z" * 7):
        generation = state.commit(
            Commit(
                vm=vm,
                token=granted.token,
                base_generation=generation,
                state={},
                stats={},
                vmm={},
                console=chunk,
            )
        )
    assert state.console_all(vm) == b"x" * 7 + b"yyy"
    assert int(state.r.hget(f"rl:{{vm:{vm}}}:vcpu", "console_bytes")) == 10


# -- precise statuses -----------------------------------------------------------------------------
@pytest.mark.parametrize("after", ["abc", "1-2-3", "18446744073709551616-0", "'; --", "$", "1.5"])
def test_a_malformed_cursor_is_invalid_argument_naming_after(quotas: Quotas, after: str) -> None:
    hv = quotas.stub()
    vm = hv.CreateVm(raw_vm(unique("cursor"), SPIN), timeout=60).id
    for call in (
        lambda: hv.StreamConsole(hypervisor_pb2.StreamConsoleRequest(vm=vm, after=after), timeout=10),
        lambda: hv.StreamEvents(hypervisor_pb2.StreamEventsRequest(vm=vm, after=after), timeout=10),
        lambda: hv.StreamEvents(hypervisor_pb2.StreamEventsRequest(after=after, follow=True), timeout=10),
    ):
        err = refusal(call)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        assert bad_request_fields(err) == ["after"]


def test_ids_are_invalid_argument_when_malformed_and_not_found_when_unknown(quotas: Quotas) -> None:
    hv = quotas.stub()
    for ref, code in (("", "INVALID_ARGUMENT"), ("x" * 300, "INVALID_ARGUMENT"), ("a b", "INVALID_ARGUMENT"),
                      ("no-such-vm", "NOT_FOUND"), ("99999", "NOT_FOUND")):  # fmt: skip
        err = refusal(lambda ref=ref: hv.DescribeVm(hypervisor_pb2.VmRef(vm=ref), timeout=10))
        assert err.code().name == code, (ref, err.details())
        assert len(err.details() or "") < 1000
        if code == "INVALID_ARGUMENT":
            assert bad_request_fields(err) == ["vm"]
    err = refusal(
        lambda: hv.WaitVm(hypervisor_pb2.WaitVmRequest(vm="x", timeout_seconds=float("nan")), timeout=10)
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and bad_request_fields(err) == ["timeout_seconds"]


def test_bytes_that_are_not_the_request_message_are_invalid_argument(quotas: Quotas) -> None:
    channel: Any = grpc.insecure_channel(f"127.0.0.1:{quotas.hypervisor.port}")  # bytes, unparsed
    try:
        for method in ("CreateVm", "DescribeVm"):
            call = channel.unary_unary(f"/ringlab.v1.Hypervisor/{method}")
            err = refusal(lambda call=call: call(b"\x0a\xff\xff\xff\xff\x0f", timeout=10))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
            assert bad_request_fields(err) == ["request"]
        stream = channel.unary_stream("/ringlab.v1.Hypervisor/StreamEvents")
        err = refusal(lambda: stream(b"\x1a\x02\xff\xfe", timeout=10))  # `after`: not UTF-8
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        channel.close()


def test_the_guest_maps_the_hypervisors_statuses(quotas: Quotas) -> None:
    """Guest/StreamConsole after its VM is destroyed is NOT_FOUND, a malformed cursor
    INVALID_ARGUMENT, a hypervisor that does not answer UNAVAILABLE: never UNKNOWN."""
    from ringlab_guest.service import GuestConfig, GuestServicer
    from ringlab_guest.service import serve as serve_guest

    hv_address = f"127.0.0.1:{quotas.hypervisor.port}"
    servers = []
    owner = unique("guest")
    try:
        for name, hypervisor in ((owner, hv_address), (unique("lost"), "127.0.0.1:1")):
            servicer = GuestServicer(
                GuestConfig(name, "native", "stock", "hello", 256), hypervisor, "", StreamSlots(2)
            )
            servers.append(serve_guest(service_config("guest", quotas.redis.url), servicer))
            if hypervisor == hv_address:
                servicer.register()
        attached, lost = (
            guest_pb2_grpc.GuestStub(open_channel(f"127.0.0.1:{server.port}")) for server in servers
        )
        console = guest_pb2.GuestConsoleRequest
        err = refusal(lambda: attached.StreamConsole(console(after="nope"), timeout=10))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and bad_request_fields(err) == ["after"]
        quotas.stub().DestroyVm(hypervisor_pb2.VmRef(vm=owner), timeout=30)
        err = refusal(lambda: attached.StreamConsole(console(follow=True), timeout=10))
        assert err.code() == grpc.StatusCode.NOT_FOUND, err.details()
        err = refusal(lambda: lost.StreamConsole(console(), timeout=20))
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
        assert "UNAVAILABLE" in (err.details() or "")
    finally:
        for server in servers:
            server.stop(0)


# -- no secret in an error message ----------------------------------------------------------------
def test_refusals_never_name_the_current_fencing_token(quotas: Quotas) -> None:
    """A wrong lease token is refused without the grant's token (it would let the caller commit
    as the grant's holder: issue 14 saw "current 86"), nor the latest generation."""
    hv = quotas.stub()
    vm = hv.CreateVm(raw_vm(unique("spin"), SPIN, start=True), timeout=60).id
    deadline = time.monotonic() + 60
    while not int(quotas.state.sched_entry(vm).get("token") or 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    token = int(quotas.state.sched_entry(vm).get("token") or 0)
    assert token > 987_654_320, "the VM was never granted a pCPU"
    generation = quotas.state.generation(vm)
    cpu = quotas.cpu_stub()
    wrong = cpu_pb2.RunVcpuRequest(
        vm=vm,
        lease_token=1,
        generation=generation,
        budget=0,
        commit=cpu_pb2.CommitRequest(console=b"INJECTED", status="poweroff", code=66),
    )
    messages = []
    for request in (wrong, cpu_pb2.RunVcpuRequest(vm=vm, lease_token=1, generation=generation + 1000)):
        err = refusal(lambda request=request: cpu.RunVcpu(request, timeout=30))
        assert err.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED)
        messages.append(err.details() or "")
    for message in messages:
        assert not re.search(r"98765\d{4}", message), message
        assert str(token) not in message, message
    hv.StopVm(hypervisor_pb2.VmRef(vm=vm), timeout=30)
    assert b"INJECTED" not in quotas.state.console_all(vm)
