"""A whole deployment on one machine: a real Redis, N cpu services and the hypervisor, each its
own process on loopback (``ringlab up``, ``ringlab demo``, the services benchmark)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ringlab.store import LocalRedis
from ringlab.store.server import free_port

__all__ = ["LocalDeployment"]


@dataclass
class LocalDeployment:
    redis_url: str
    hypervisor: str
    cpus: list[str]
    token: str = ""
    redis: LocalRedis | None = None
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        *,
        redis_url: str | None = None,
        pcpus: int = 1,
        hypervisor_port: int = 0,
        token: str = "",
        slice: int | None = None,
        timeout: float = 30.0,
    ) -> LocalDeployment:
        redis = None if redis_url else LocalRedis.start()
        url = redis_url or (redis.url if redis else "")
        d = cls(url, "", [], token, redis)
        try:
            env = dict(os.environ, RINGLAB_REDIS=url, RINGLAB_TOKEN=token)
            if redis_url is None:
                _flush(url)
            for n in range(pcpus):
                port = free_port()
                d.cpus.append(f"127.0.0.1:{port}")
                d._spawn("ringlab_cpu", ["--listen", f"127.0.0.1:{port}", "--pcpu", f"pcpu{n}"], env)
            port = hypervisor_port or free_port()
            d.hypervisor = f"127.0.0.1:{port}"
            extra = ["--slice", str(slice)] if slice else []
            d._spawn("ringlab_hypervisor", ["--listen", d.hypervisor, *extra], env)
            for target in [*d.cpus, d.hypervisor]:
                d._wait_serving(target, timeout)
        except BaseException:
            d.stop()
            raise
        return d

    def _spawn(self, module: str, args: list[str], env: dict[str, str]) -> None:
        self.processes.append(
            subprocess.Popen([sys.executable, "-m", module, *args], env=env, stdout=subprocess.DEVNULL)
        )

    def _wait_serving(self, target: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                for p in self.processes:
                    if p.poll() is not None:
                        raise RuntimeError(f"a service exited with status {p.returncode} while starting")
                try:
                    # types-grpcio-health-checking declares HealthStub without its methods
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)  # type: ignore[attr-defined]
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{target} did not report SERVING within {timeout:.0f} s")
                time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM every service (each stops gracefully), then the Redis server."""
        for p in reversed(self.processes):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.processes):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.processes.clear()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def __enter__(self) -> LocalDeployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _flush(url: str) -> None:
    from ringlab.store import connect

    client = connect(url)
    client.flushdb()
    client.close()
