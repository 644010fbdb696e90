"""One configuration scheme for every service and client: flags, else ``RINGLAB_*`` environment
variables, else defaults that work on one machine.

    --listen       RINGLAB_LISTEN        where the server listens (per service default below)
    --advertise    RINGLAB_ADVERTISE     the address others should dial (default: --listen)
    --redis        RINGLAB_REDIS         redis://127.0.0.1:6379/0
    --token        RINGLAB_TOKEN         bearer token required from callers ("" = none); with
                                         --credentials: the operator's, which clients send
    --credentials  RINGLAB_CREDENTIALS   this service's role credentials (a JSON file, 0600, that
                                         `ringlab up` or compose's secrets service writes): what it
                                         sends, which callers it serves, its Redis user
                                         (docs/security.md)
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
from urllib.parse import quote, urlsplit, urlunsplit

from ringlab.endpoints import DEFAULT_HYPERVISOR, DEFAULT_PORTS
from ringlab.store.credentials import Credentials, load_credentials

__all__ = [
    "DEFAULT_PORTS",
    "RedisUrl",
    "ServiceConfig",
    "add_service_flags",
    "config_from_args",
    "env_default",
    "with_redis_user",
]

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def env_default(name: str, default: str) -> str:
    return os.environ.get(f"RINGLAB_{name}", default)


def byte_count(text: str) -> int:
    """``4194304``, ``0x400000``, ``4M``, ``512K``, ``1G`` -> bytes (ValueError otherwise): the
    sizes ``--memory``, ``RINGLAB_MAX_MEMORY`` and ``RINGLAB_CONSOLE_QUOTA`` take."""
    text = text.strip()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
    number = text[:-1] if scale > 1 else text
    value = int(number, 0) * scale
    if value <= 0:
        raise ValueError(f"{text!r} is not a positive byte count")
    return value


class RedisUrl(str):
    """A Redis URL that may carry a user and password: printed (``%s``, f-strings, ``repr``) with
    the password masked, so that a service's log never shows it; its value is the whole URL."""

    def _masked(self) -> str:
        parts = urlsplit(str.__str__(self))
        if parts.password is None:
            return str.__str__(self)
        host = parts.netloc.rsplit("@", 1)[1]
        return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))

    def __str__(self) -> str:
        return self._masked()

    def __repr__(self) -> str:
        return repr(self._masked())

    def __format__(self, spec: str) -> str:
        return format(self._masked(), spec)


def with_redis_user(url: str, user: str, password: str) -> str:
    """``url`` with ``user`` and ``password`` in it, unless it names a user or password already
    (an operator's own Redis: ``ringlab up --redis URL``) or there are none to add."""
    parts = urlsplit(url)
    if (
        not password
        or parts.password is not None
        or parts.username
        or parts.scheme not in ("redis", "rediss")
    ):
        return RedisUrl(url)
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.netloc}"
    return RedisUrl(urlunsplit(parts._replace(netloc=netloc)))


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
    credentials: Credentials | None = None
    """This service's role credentials (docs/security.md).  With them, ``token`` is what it sends
    on its own calls, ``redis`` carries its Redis user, and ``build_server`` serves each method
    to the roles the table in ``rpc/server.py`` allows; without them (a service started by hand,
    the in-process tests) ``token`` is both what it requires and what it sends, as before."""

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


def add_service_flags(parser: argparse.ArgumentParser, service: str) -> None:
    port = DEFAULT_PORTS[service]
    parser.add_argument("--listen", default=env_default("LISTEN", f"127.0.0.1:{port}"), metavar="HOST:PORT")
    parser.add_argument("--advertise", default=env_default("ADVERTISE", ""), metavar="HOST:PORT")
    parser.add_argument("--redis", default=env_default("REDIS", DEFAULT_REDIS), metavar="URL")
    parser.add_argument("--token", default=env_default("TOKEN", ""), help="bearer token callers must send")
    parser.add_argument(
        "--credentials",
        default=env_default("CREDENTIALS", ""),
        metavar="FILE",
        help="this service's role credentials (JSON, written by 'ringlab up' or compose's secrets service)",
    )
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
    path = getattr(args, "credentials", "") or ""
    credentials = load_credentials(path) if path else None
    if credentials is not None and credentials.role != service:
        raise SystemExit(
            f"the credentials file {path} is the {credentials.role} role's, not the {service} service's: "
            "each service is handed its own (docs/security.md)"
        )
    return ServiceConfig(
        service=service,
        listen=listen,
        advertise=advertise,
        redis=_redis(args.redis, credentials),
        token=credentials.token if credentials is not None else args.token,
        workers=max(2, args.workers),
        max_streams=max(1, args.max_streams),
        pcpu=pcpu,
        hypervisor=args.hypervisor,
        slice=max(1000, args.slice),
        lease=max(1.0, args.lease),
        credentials=credentials,
    )


def _redis(url: str, credentials: Credentials | None) -> str:
    if credentials is None:
        return RedisUrl(url)
    return with_redis_user(url, credentials.redis_user, credentials.redis_password)
