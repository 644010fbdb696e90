"""The cpu service's RPCs, fencing (a stale lease holder's commit is refused), and the plumbing
every server shares: health driven by real checks, reflection, the bearer token, stream slots."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from ringlab.guestos.build import build_image
from ringlab.isa import REGISTERS
from ringlab.store import Commit, LocalRedis, StaleLease
from ringlab.v1 import common_pb2, cpu_pb2, hypervisor_pb2
from tests.services.conftest import Deployment, code_of, start_deployment, unique


def _created_vm(deployment: Deployment, workload: str = "hello") -> str:
    hv = deployment.hypervisor_stub()
    vm = hv.CreateVm(
        hypervisor_pb2.CreateVmRequest(
            name=unique(workload),
            technique=common_pb2.TECHNIQUE_NATIVE,
            kernel=common_pb2.KERNEL_FLAVOUR_STOCK,
            workload=workload,
            image=build_image(workload, "stock").to_bytes(),
        ),
        timeout=30,
    )
    return vm.id


def _grant(deployment: Deployment, vm: str) -> int:
    """Grant ``vm`` by hand (it is 'created', so the hypervisor's scheduler leaves it alone).
    The live scheduler may move the snapshot between our read and our grant: a grant based on
    an old snapshot is refused (that is the optimistic check), so try again on a fresh one."""
    for _ in range(50):
        version, _ = deployment.state.sched_snapshot()
        result = deployment.state.grant(
            version=version, pcpu="test", now=time.time(), lease_seconds=60, chosen=vm, updates={}, events=[]
        )
        if result.applied:
            return result.token
    raise AssertionError("the grant never applied: the snapshot kept moving")


def test_run_vcpu_runs_until_the_first_console_exit(deployment: Deployment) -> None:
    cpu = deployment.cpu_stub()
    vm = _created_vm(deployment)
    reply = cpu.RunVcpu(
        cpu_pb2.RunVcpuRequest(vm=vm, lease_token=1, generation=0, budget=1_000_000), timeout=30
    )
    assert reply.exit.reason == common_pb2.EXIT_REASON_IO_OUT
    assert reply.exit.port == 0x3F8 and chr(reply.exit.value) == "H"
    assert reply.cache_reloaded and reply.retired > 0 and reply.stats.retired == reply.retired
    again = cpu.RunVcpu(
        cpu_pb2.RunVcpuRequest(vm=vm, lease_token=1, generation=0, budget=1_000_000), timeout=30
    )
    assert not again.cache_reloaded and chr(again.exit.value) == "e"  # the cached context went on
    info = cpu.DescribeCpu(cpu_pb2.DescribeCpuRequest(), timeout=10)
    assert info.pcpu == deployment.pcpu and vm in info.cached_vms
    assert cpu.EvictVcpu(cpu_pb2.EvictVcpuRequest(vm=vm), timeout=10).evicted
    assert cpu.Echo(cpu_pb2.EchoRequest(payload=b"ping"), timeout=10).payload == b"ping"


@pytest.mark.parametrize(
    ("request_fields", "words"),
    [
        ({"vm": "", "lease_token": 1}, "needs the VM id"),
        ({"vm": "1", "lease_token": 0}, "fencing token"),
        ({"vm": "1", "lease_token": 1, "budget": 10**12}, "per-call maximum"),
    ],
)
def test_run_vcpu_rejects_bad_requests(
    deployment: Deployment, request_fields: dict[str, object], words: str
) -> None:
    cpu = deployment.cpu_stub()
    with pytest.raises(grpc.RpcError) as err:
        cpu.RunVcpu(cpu_pb2.RunVcpuRequest(**request_fields), timeout=10)  # type: ignore[arg-type]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in (err.value.details() or "")


def test_run_vcpu_of_an_unknown_vm_or_stale_generation(deployment: Deployment) -> None:
    cpu = deployment.cpu_stub()
    missing = cpu_pb2.RunVcpuRequest(vm="999999", lease_token=1, budget=10)
    assert code_of(lambda: cpu.RunVcpu(missing, timeout=10)) == grpc.StatusCode.NOT_FOUND
    vm = _created_vm(deployment)
    stale = cpu_pb2.RunVcpuRequest(vm=vm, lease_token=1, generation=7, budget=10)
    with pytest.raises(grpc.RpcError) as err:
        cpu.RunVcpu(stale, timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "commit 7" in (
        err.value.details() or ""
    )
    assert "is not the VM's latest" in (err.value.details() or "")  # which is, is not said (issue 14)


def test_a_sync_made_for_another_copy_of_the_vcpu_is_refused(deployment: Deployment) -> None:
    """The hypervisor's changes apply only to the copy they were made against: a pCPU that
    reloaded an older commit says so instead of running from a mix of two states."""
    cpu = deployment.cpu_stub()
    vm = _created_vm(deployment)
    request = cpu_pb2.RunVcpuRequest(
        vm=vm,
        lease_token=1,
        generation=0,
        budget=10,
        sync=cpu_pb2.VcpuSync(base=500, registers=dict.fromkeys(REGISTERS, 1)),
    )
    with pytest.raises(grpc.RpcError) as err:
        cpu.RunVcpu(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "at 0 retired instructions but the delta was made for one at 500" in (err.value.details() or "")
    fresh = cpu.RunVcpu(cpu_pb2.RunVcpuRequest(vm=vm, lease_token=1, generation=0, budget=10), timeout=10)
    assert fresh.cache_reloaded and fresh.stats.retired == 10  # nothing of the refused sync stayed


def test_a_stale_lease_holders_commit_is_refused(deployment: Deployment) -> None:
    cpu = deployment.cpu_stub()
    vm = _created_vm(deployment)
    old = _grant(deployment, vm)
    commit = cpu_pb2.CommitRequest(vmm_state="{}")
    first = cpu.RunVcpu(cpu_pb2.RunVcpuRequest(vm=vm, lease_token=old, budget=0, commit=commit), timeout=10)
    assert first.generation == 1
    new = _grant(deployment, vm)  # the VM is granted again: `old` is now a stale holder
    assert new > old
    stale = cpu_pb2.RunVcpuRequest(vm=vm, lease_token=old, generation=1, budget=0, commit=commit)
    with pytest.raises(grpc.RpcError) as err:
        cpu.RunVcpu(stale, timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "stale lease" in (
        err.value.details() or ""
    )
    assert deployment.state.generation(vm) == 1  # nothing was written
    fresh = cpu.RunVcpu(
        cpu_pb2.RunVcpuRequest(vm=vm, lease_token=new, generation=1, budget=0, commit=commit), timeout=10
    )
    assert fresh.generation == 2


def test_store_commit_fencing_and_retry_idempotence(deployment: Deployment) -> None:
    state = deployment.state
    vm = _created_vm(deployment)
    token = _grant(deployment, vm)
    st, stats, vmm, gen = state.vm_vcpu_summary(vm)
    c = Commit(vm=vm, token=token, base_generation=gen, state=st, stats=stats, vmm=vmm, console=b"x")
    assert state.commit(c) == gen + 1
    assert state.commit(c) == gen + 1  # a client retry of the same commit changes nothing
    assert state.console_all(vm) == b"x"
    with pytest.raises(StaleLease):
        state.commit(
            Commit(vm=vm, token=token + 1000, base_generation=gen + 1, state=st, stats=stats, vmm=vmm)
        )
    state.control(vm, "stop")  # an operator's stop revokes the grant
    with pytest.raises(StaleLease):
        state.commit(Commit(vm=vm, token=token, base_generation=gen + 1, state=st, stats=stats, vmm=vmm))


def test_health_reflection_and_stream_slots(deployment: Deployment) -> None:
    for target, service in (
        (deployment.cpu_target, "ringlab.v1.Cpu"),
        (deployment.hypervisor_target, "ringlab.v1.Hypervisor"),
    ):
        with grpc.insecure_channel(target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", service):
                reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)  # type: ignore[attr-defined]
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            reflect: Any = reflection_pb2_grpc.ServerReflectionStub(channel)
            answers = reflect.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            names = {s.name for a in answers for s in a.list_services_response.service}
            assert service in names and "grpc.health.v1.Health" in names
    hv = deployment.hypervisor_stub()
    vm = _created_vm(deployment)  # never started: a following console stream stays open
    streams = [
        hv.StreamConsole(hypervisor_pb2.StreamConsoleRequest(vm=vm, follow=True), timeout=20)
        for _ in range(4)
    ]
    time.sleep(0.5)
    extra = hv.StreamConsole(hypervisor_pb2.StreamConsoleRequest(vm=vm, follow=True), timeout=20)
    with pytest.raises(grpc.RpcError) as err:
        list(extra)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "RINGLAB_MAX_STREAMS" in (
        err.value.details() or ""
    )
    assert hv.DescribeVm(hypervisor_pb2.VmRef(vm=vm), timeout=5).id == vm  # unary calls still served
    for s in streams:
        s.cancel()


def test_bearer_token_is_required_when_configured(redis_server: LocalRedis) -> None:
    from ringlab.rpc import open_channel
    from ringlab.v1 import hypervisor_pb2_grpc

    d = start_deployment(redis_server, token="s3cret", db=3)
    try:
        for token in ("", "wrong"):
            stub = hypervisor_pb2_grpc.HypervisorStub(open_channel(d.hypervisor_target, token))
            with pytest.raises(grpc.RpcError) as err:
                stub.ListVms(hypervisor_pb2.ListVmsRequest(), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "RINGLAB_TOKEN" in (
                err.value.details() or ""
            )
        good = hypervisor_pb2_grpc.HypervisorStub(open_channel(d.hypervisor_target, "s3cret"))
        assert list(good.ListVms(hypervisor_pb2.ListVmsRequest(), timeout=10).vms) == []
        with grpc.insecure_channel(d.hypervisor_target) as channel:  # probes need no token
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)  # type: ignore[attr-defined]
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        d.hypervisor.stop(1)
        d.cpu.stop(1)


def test_health_goes_not_serving_when_stopping(redis_server: LocalRedis) -> None:
    d = start_deployment(redis_server, db=4)
    d.hypervisor.stop(1)
    assert d.cpu.refresh_health()
    d.cpu.stopping.set()
    assert not d.cpu.refresh_health()
    d.cpu.stop(1)
