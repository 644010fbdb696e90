"""Serving the dashboard: the socket bound here (so that a port in use is a clear message, not a
server's log line), uvicorn running the application on it, in a thread (``ringlab up``: beside
the deployment it supervises) or in the foreground (``ringlab dashboard``)."""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ringlab.dashboard import LOOPBACK, WILDCARD

if TYPE_CHECKING:
    import uvicorn

__all__ = ["DashboardError", "DashboardServer", "allowed_hosts", "url_for"]


class DashboardError(Exception):
    """The dashboard cannot serve where it was asked to; the message says why and what to do."""

    def __init__(self, message: str, *, in_use: bool = False) -> None:
        super().__init__(message)
        self.in_use = in_use


def bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise DashboardError(
            f"the dashboard's address {host}:{port}: cannot resolve {host!r} ({exc.strerror})"
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise DashboardError(f"port {port} on {host} is already in use", in_use=True) from None
        raise DashboardError(f"the dashboard cannot listen on {host}:{port} ({exc.strerror})") from None
    return sock


def url_for(host: str, port: int) -> str:
    """The address to open: a wildcard host is reached on 127.0.0.1 from this machine."""
    shown = "127.0.0.1" if host in WILDCARD else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


def allowed_hosts(host: str, extra: list[str] | None = None) -> frozenset[str] | None:
    """The names a request's Host header may give: ``extra`` ('*': any) and the loopback names;
    without ``extra``, the loopback names and ``host`` (any name when ``host`` is every interface:
    whoever listens there means to be reached by any name)."""
    names = [name.strip().lower().strip("[]") for name in extra or [] if name.strip()]
    if "*" in names or (not names and host in WILDCARD):
        return None
    return frozenset({*(n.strip("[]") for n in LOOPBACK), *names, *([host.lower()] if not extra else [])})


@dataclass
class DashboardServer:
    """The dashboard serving ``url`` (``stop`` ends it)."""

    url: str
    host: str
    port: int
    server: uvicorn.Server
    sock: socket.socket
    thread: threading.Thread | None = None

    @classmethod
    def create(
        cls,
        target: str,
        *,
        host: str,
        port: int,
        sock: socket.socket | None = None,
        token: str = "",
        allow: list[str] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> DashboardServer:
        """The dashboard of the hypervisor at ``target`` on ``host:port`` (0: any free port), or
        on ``sock`` already bound there; DashboardError when it cannot bind."""
        import uvicorn

        from ringlab.dashboard.app import create_app
        from ringlab.dashboard.source import HypervisorSource

        sock = sock or bind(host, port)
        port = sock.getsockname()[1]
        app = create_app(
            HypervisorSource(target, token), token=token, allowed_hosts=allowed_hosts(host, allow), log=log
        )
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=2,
            log_config=None,
        )
        return cls(url_for(host, port), host, port, uvicorn.Server(config), sock)

    def serve(self) -> None:
        """In the foreground until Ctrl-C (or SIGTERM)."""
        self.server.run(sockets=[self.sock])

    def start(self, timeout: float = 30.0) -> DashboardServer:
        """In a thread; returns once it serves."""
        self.thread = threading.Thread(target=self.serve, name="dashboard", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise DashboardError("the dashboard's server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=10)
        self.sock.close()
