"""One configuration scheme for every service and client: flags, else ``RINGLAB_*`` environment
variables, else defaults that work on one machine.

    --listen       RINGLAB_LISTEN        where the server listens (per service default below)
    --advertise    RINGLAB_ADVERTISE     the address others should dial (default: --listen)
    --redis        RINGLAB_REDIS         redis://127.0.0.1:6379/0
    --token        RINGLAB_TOKEN         bearer token required from callers ("" = none)
    --workers      RINGLAB_WORKERS       server threads (16)
    --max-streams  RINGLAB_MAX_STREAMS   open streams at once (8); the rest get RESOURCE_EXHAUSTED
    --pcpu         RINGLAB_PCPU          cpu: this pCPU's id (default pcpu-HOST-PORT)
    --hypervisor   RINGLAB_HYPERVISOR    guest, CLI: the hypervisor's address (127.0.0.1:50051)
    --slice        RINGLAB_SLICE         hypervisor: time slice in guest instructions (500000)
"""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass

from ringlab.endpoints import DEFAULT_HYPERVISOR, DEFAULT_PORTS

__all__ = ["DEFAULT_PORTS", "ServiceConfig", "add_service_flags", "env_default", "config_from_args"]

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def env_default(name: str, default: str) -> str:
    return os.environ.get(f"RINGLAB_{name}", default)


@dataclass(frozen=True)
class ServiceConfig:
    service: str
    listen: str
    advertise: str
    redis: str
    token: str
    workers: int
    max_streams: int
    pcpu: str
    hypervisor: str
    slice: int
    lease: float = 10.0
    """hypervisor: how long a grant lasts (seconds): a pCPU that stops answering loses its VM then."""

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


def add_service_flags(parser: argparse.ArgumentParser, service: str) -> None:
    port = DEFAULT_PORTS[service]
    parser.add_argument("--listen", default=env_default("LISTEN", f"127.0.0.1:{port}"), metavar="HOST:PORT")
    parser.add_argument("--advertise", default=env_default("ADVERTISE", ""), metavar="HOST:PORT")
    parser.add_argument("--redis", default=env_default("REDIS", DEFAULT_REDIS), metavar="URL")
    parser.add_argument("--token", default=env_default("TOKEN", ""), help="bearer token callers must send")
    parser.add_argument("--workers", type=int, default=int(env_default("WORKERS", "16")))
    parser.add_argument("--max-streams", type=int, default=int(env_default("MAX_STREAMS", "8")))
    parser.add_argument("--pcpu", default=env_default("PCPU", ""), help="cpu: this pCPU's id")
    parser.add_argument(
        "--hypervisor", default=env_default("HYPERVISOR", DEFAULT_HYPERVISOR), metavar="HOST:PORT"
    )
    parser.add_argument(
        "--slice", type=int, default=int(env_default("SLICE", "500000")), metavar="INSTRUCTIONS"
    )
    parser.add_argument(
        "--lease",
        type=float,
        default=float(env_default("LEASE", "10")),
        metavar="SECONDS",
        help="hypervisor: how long a grant of a pCPU lasts; a pCPU that stops answering loses its "
        "VM when it ends",
    )


def config_from_args(args: argparse.Namespace, service: str) -> ServiceConfig:
    listen = args.listen
    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        raise SystemExit(f"--listen wants HOST:PORT, got {listen!r}")
    advertise = args.advertise
    if not advertise:
        advertise = f"{socket.gethostname() if host in ('0.0.0.0', '[::]', '') else host}:{port}"
    pcpu = args.pcpu or f"pcpu-{advertise.replace(':', '-')}"
    return ServiceConfig(
        service=service,
        listen=listen,
        advertise=advertise,
        redis=args.redis,
        token=args.token,
        workers=max(2, args.workers),
        max_streams=max(1, args.max_streams),
        pcpu=pcpu,
        hypervisor=args.hypervisor,
        slice=max(1000, args.slice),
        lease=max(1.0, args.lease),
    )
