"""Least privilege between services (issue 14, item 3; docs/security.md): each role has its own
credential, and each service serves a method only to the roles allowed to call it.  A guest acts
only on its own VM; an operator manages VMs but cannot call a pCPU; health and reflection answer
anyone."""

from __future__ import annotations

import argparse
import json
import stat
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from ringlab.guestos.build import WORKLOADS
from ringlab.rpc import open_channel
from ringlab.rpc.config import add_service_flags, config_from_args
from ringlab.rpc.server import GUEST_SCOPED, ROLES_BY_SERVICE, RoleInterceptor
from ringlab.store.credentials import GUEST_KEY_PREFIX, DeploymentSecrets, guest_token
from ringlab.v1 import cpu_pb2, hypervisor_pb2
from tests.security.conftest import OPERATOR, Secure, create, refusal, unique, wait

DENIED = {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED}


def _health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        reply: health_pb2.HealthCheckResponse = check(health_pb2.HealthCheckRequest(), timeout=10)
        return reply.status


def test_health_and_reflection_answer_without_credentials(secure: Secure) -> None:
    for target in (secure.cpu_target, secure.hypervisor_target):
        assert _health(target) == health_pb2.HealthCheckResponse.SERVING
        with grpc.insecure_channel(target) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            replies = list(
                stub.ServerReflectionInfo(  # type: ignore[operator]  # the reflection stubs are untyped
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")])
                )
            )
        names = {s.name for s in replies[0].list_services_response.service}
        assert names & {"ringlab.v1.Cpu", "ringlab.v1.Hypervisor"}, names


def test_the_operator_manages_vms_but_cannot_call_a_pcpu(secure: Secure) -> None:
    name = unique("op")
    create(secure.hv(), name, start=False)
    assert name in {vm.name for vm in secure.hv().ListVms(hypervisor_pb2.ListVmsRequest(), timeout=10).vms}
    cpu = secure.cpu_stub(OPERATOR)
    for call in (
        lambda: cpu.Echo(cpu_pb2.EchoRequest(payload=b"x"), timeout=10),
        lambda: cpu.DescribeCpu(cpu_pb2.DescribeCpuRequest(), timeout=10),
        lambda: cpu.RunVcpu(cpu_pb2.RunVcpuRequest(vm="1", lease_token=1, budget=0), timeout=10),
        lambda: cpu.EvictVcpu(cpu_pb2.EvictVcpuRequest(vm="1"), timeout=10),
    ):
        code, message = refusal(call)
        assert code == grpc.StatusCode.UNAUTHENTICATED, (code, message)
        assert OPERATOR not in message
    secure.hv().DestroyVm(hypervisor_pb2.VmRef(vm=name), timeout=10)


def test_only_the_hypervisor_credential_reaches_a_pcpu(secure: Secure) -> None:
    reply = secure.cpu_stub(secure.secrets.hypervisor_token).Echo(
        cpu_pb2.EchoRequest(payload=b"ping"), timeout=10
    )
    assert reply.payload == b"ping"
    # The hypervisor's credential is not an operator's: the hypervisor knows it, and says so.
    code, message = refusal(
        lambda: secure.hv(secure.secrets.hypervisor_token).ListVms(
            hypervisor_pb2.ListVmsRequest(), timeout=10
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED and "the hypervisor role may not call" in message
    # Another deployment's hypervisor credential is nobody here.
    other = DeploymentSecrets.generate(OPERATOR)
    code, _ = refusal(lambda: secure.cpu_stub(other.hypervisor_token).Echo(cpu_pb2.EchoRequest(), timeout=10))
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_a_guest_acts_on_its_own_vm_only(secure: Secure) -> None:
    mine, theirs = unique("mine"), unique("theirs")
    create(secure.hv(), theirs, start=False)
    guest = secure.hv(secure.secrets.guest_token(mine))
    vm = create(guest, mine, start=False)
    assert vm.name == mine
    assert guest.DescribeVm(hypervisor_pb2.VmRef(vm=mine), timeout=10).name == mine
    assert guest.StartVm(hypervisor_pb2.VmRef(vm=mine), timeout=10).name == mine
    assert WORKLOADS["hello"].check_output(wait(guest, mine).console)
    calls = {
        "DescribeVm": lambda: guest.DescribeVm(hypervisor_pb2.VmRef(vm=theirs), timeout=10),
        "StopVm": lambda: guest.StopVm(hypervisor_pb2.VmRef(vm=theirs), timeout=10),
        "DestroyVm": lambda: guest.DestroyVm(hypervisor_pb2.VmRef(vm=theirs), timeout=10),
        "by id": lambda: guest.DescribeVm(hypervisor_pb2.VmRef(vm=vm.id), timeout=10),
        "CreateVm": lambda: create(guest, unique("extra"), start=False),
        "StreamConsole": lambda: guest.StreamConsole(
            hypervisor_pb2.StreamConsoleRequest(vm=theirs), timeout=10
        ),
        "StreamEvents of every VM": lambda: guest.StreamEvents(
            hypervisor_pb2.StreamEventsRequest(), timeout=10
        ),
        "ListVms": lambda: guest.ListVms(hypervisor_pb2.ListVmsRequest(), timeout=10),
        "GetStats": lambda: guest.GetStats(hypervisor_pb2.GetStatsRequest(), timeout=10),
    }
    for what, call in calls.items():
        code, message = refusal(call)
        assert code == grpc.StatusCode.PERMISSION_DENIED, (what, code, message)
        assert theirs not in message, (what, message)
    # Its VM's console, and its own events, it may follow.
    assert list(guest.StreamConsole(hypervisor_pb2.StreamConsoleRequest(vm=mine), timeout=10))
    assert secure.hv().DescribeVm(hypervisor_pb2.VmRef(vm=theirs), timeout=10).name == theirs  # untouched
    # A guest credential for one name is nobody's for another, and a forged one is nobody's.
    forged = f"guest:{theirs}:{'0' * 64}"
    code, _ = refusal(lambda: secure.hv(forged).DescribeVm(hypervisor_pb2.VmRef(vm=theirs), timeout=10))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _ = refusal(
        lambda: secure.cpu_stub(secure.secrets.guest_token(mine)).Echo(cpu_pb2.EchoRequest(), timeout=10)
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED
    for name in (mine, theirs):
        secure.hv().DestroyVm(hypervisor_pb2.VmRef(vm=name), timeout=10)


def test_a_guest_replica_signs_each_call_for_the_vm_it_names(secure: Secure) -> None:
    """Compose's scaled guests learn their VM's name at run time: they hold the guest key, and
    their channel signs each call with the token of the VM the request names."""
    name = unique("replica")
    channel = open_channel(secure.hypervisor_target, GUEST_KEY_PREFIX + secure.secrets.guest_key)
    from ringlab.v1 import hypervisor_pb2_grpc

    stub = hypervisor_pb2_grpc.HypervisorStub(channel)
    assert create(stub, name, start=False).name == name
    code, _ = refusal(lambda: stub.ListVms(hypervisor_pb2.ListVmsRequest(), timeout=10))
    assert code in DENIED  # a request that names no VM: signed for no VM, nobody's
    other = unique("other")
    create(secure.hv(), other, start=False)
    # Signed for the VM it names, yet that VM is not its own: the key is the guests' fleet key
    # (docs/security.md); what it cannot do is act as an operator, a hypervisor or a pCPU.
    code, _ = refusal(
        lambda: secure.cpu_stub(GUEST_KEY_PREFIX + secure.secrets.guest_key).Echo(
            cpu_pb2.EchoRequest(), timeout=10
        )
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED
    secure.hv().DestroyVm(hypervisor_pb2.VmRef(vm=other), timeout=10)
    secure.hv().DestroyVm(hypervisor_pb2.VmRef(vm=name), timeout=10)


def test_no_credential_and_a_wrong_one_are_unauthenticated(secure: Secure) -> None:
    for token in ("", "nope", "Bearer x", f"hypervisor:{'f' * 64}"):
        stub = secure.hv(token)
        code, message = refusal(lambda: stub.ListVms(hypervisor_pb2.ListVmsRequest(), timeout=10))  # noqa: B023
        assert code == grpc.StatusCode.UNAUTHENTICATED, (token, message)
        assert not token or token not in message


def test_the_guest_service_serves_operators_and_registers_with_its_own_token(secure: Secure) -> None:
    from ringlab.rpc import StreamSlots
    from ringlab.v1 import guest_pb2, guest_pb2_grpc
    from ringlab_guest.service import GuestConfig, GuestServicer, serve
    from tests.security.conftest import config

    name = unique("guest")
    credentials = secure.secrets.for_role("guest", guest_name=name, redis=False)
    service = config("guest", secure.redis.url, credentials)
    guest_config = GuestConfig(name=name, technique="native", kernel="stock", workload="hello", weight=256)
    servicer = GuestServicer(guest_config, secure.hypervisor_target, service.token, StreamSlots(2))
    server = serve(service, servicer)
    try:
        assert servicer.register()  # as its own guest: the hypervisor lets it create its own VM
        target = f"127.0.0.1:{server.port}"
        info = guest_pb2_grpc.GuestStub(open_channel(target, OPERATOR)).DescribeGuest(
            guest_pb2.DescribeGuestRequest(), timeout=10
        )
        assert info.name == name
        code, _ = refusal(
            lambda: guest_pb2_grpc.GuestStub(open_channel(target, "")).DescribeGuest(
                guest_pb2.DescribeGuestRequest(), timeout=10
            )
        )
        assert code == grpc.StatusCode.UNAUTHENTICATED
        code, _ = refusal(
            lambda: guest_pb2_grpc.GuestStub(
                open_channel(target, secure.secrets.hypervisor_token)
            ).DescribeGuest(guest_pb2.DescribeGuestRequest(), timeout=10)
        )
        assert code in DENIED
    finally:
        server.stop(1)
        secure.hv().DestroyVm(hypervisor_pb2.VmRef(vm=name), timeout=10)


def test_every_rpc_of_every_service_is_in_the_table() -> None:
    """A new RPC must be placed in the table (docs/security.md) before it can be called."""
    from ringlab.v1 import cpu_pb2 as cpu
    from ringlab.v1 import guest_pb2 as guest
    from ringlab.v1 import hypervisor_pb2 as hv

    for module, service in ((cpu, "Cpu"), (hv, "Hypervisor"), (guest, "Guest")):
        prefix = f"/ringlab.v1.{service}/"
        assert prefix in ROLES_BY_SERVICE
        methods = module.DESCRIPTOR.services_by_name[service].methods_by_name
        if service == "Hypervisor":
            scoped = {m.rsplit("/", 1)[1] for m in GUEST_SCOPED}
            assert scoped <= set(methods), scoped - set(methods)


def test_the_role_interceptor_compares_tokens_in_constant_time_and_knows_no_operator_digest_at_the_cpu() -> (
    None
):
    secrets = DeploymentSecrets.generate(OPERATOR)
    cpu = RoleInterceptor(secrets.for_role("cpu"))
    assert cpu.identify([f"Bearer {secrets.hypervisor_token}"]).role == "hypervisor"  # type: ignore[union-attr]
    assert cpu.identify([f"Bearer {OPERATOR}"]) is None
    assert OPERATOR not in secrets.for_role("cpu").to_json()
    assert secrets.hypervisor_token not in secrets.for_role("cpu").to_json()  # only its digest
    hv = RoleInterceptor(secrets.for_role("hypervisor"))
    caller = hv.identify([f"Bearer {guest_token(secrets.guest_key, 'a.b-c')}"])
    assert caller is not None and (caller.role, caller.vm) == ("guest", "a.b-c")
    assert hv.identify([]) is None  # an operator token is set: none sent is nobody
    open_ = RoleInterceptor(DeploymentSecrets.generate().for_role("hypervisor"))
    assert open_.identify([]) is not None and open_.identify([]).role == "operator"  # type: ignore[union-attr]


def test_a_service_refuses_credentials_of_another_role_and_masks_its_redis_password(tmp_path: Path) -> None:
    secrets = DeploymentSecrets.generate(OPERATOR)
    path = tmp_path / "hypervisor.json"
    path.write_text(secrets.for_role("hypervisor").to_json())
    parser = argparse.ArgumentParser()
    add_service_flags(parser, "cpu")
    with pytest.raises(SystemExit) as stopped:
        config_from_args(parser.parse_args(["--credentials", str(path)]), "cpu")
    assert "the hypervisor role's, not the cpu service's" in str(stopped.value)
    parser = argparse.ArgumentParser()
    add_service_flags(parser, "hypervisor")
    cfg = config_from_args(
        parser.parse_args(["--credentials", str(path), "--redis", "redis://127.0.0.1:1/0"]), "hypervisor"
    )
    password = secrets.redis_password("hypervisor")
    assert password in str.__str__(cfg.redis) and password not in f"{cfg.redis} {cfg.redis!r} %s" % cfg.redis
    assert cfg.token == secrets.hypervisor_token
    (tmp_path / "bad.json").write_text(json.dumps({"role": "root"}))
    with pytest.raises(SystemExit) as stopped:
        config_from_args(parser.parse_args(["--credentials", str(tmp_path / "bad.json")]), "hypervisor")
    assert "unusable" in str(stopped.value)


def test_secrets_files_are_the_owners_only(tmp_path: Path) -> None:
    made = DeploymentSecrets.load_or_create(tmp_path / "secrets", OPERATOR)
    again = DeploymentSecrets.load_or_create(tmp_path / "secrets", OPERATOR)
    assert made.secret == again.secret  # kept: the credentials survive a restart
    assert stat.S_IMODE((tmp_path / "secrets" / "deployment.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "secrets").stat().st_mode) == 0o700
    roles = {
        made.hypervisor_token,
        made.guest_key,
        made.guest_token("a"),
        *(made.redis_password(r) for r in ("cpu", "hypervisor")),
    }
    assert len(roles) == 5 and made.secret not in "".join(roles)
