"""The one way to build a Ringlab gRPC server.

``build_server`` gives every service the same things: the standard health service driven by
real checks (re-run every second), server reflection, the bearer-token and error interceptors,
bounded concurrency (a thread pool, plus ``StreamSlots`` so open streams can never take every
thread and starve unary calls), and a graceful stop on SIGTERM that reports NOT_SERVING first.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ringlab.rpc.config import ServiceConfig
from ringlab.store.errors import Exhausted

__all__ = [
    "MISSING_TOKEN",
    "WRONG_TOKEN",
    "AuthInterceptor",
    "Check",
    "ServiceServer",
    "StreamSlots",
    "build_server",
]

log = logging.getLogger("ringlab.rpc")

Check = Callable[[], bool]
"""A readiness check: True when the service can do its job (Redis reachable, pCPU registered)."""

HEALTH_PERIOD = 1.0
_OPEN_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")
"""Probes and generic clients (grpcurl, orchestrators) need no token for health and reflection."""


MISSING_TOKEN = (
    "no bearer token was sent: this deployment requires one (set RINGLAB_TOKEN or pass --token); "
    "clients send it as 'authorization: Bearer TOKEN' metadata"
)
WRONG_TOKEN = "the bearer token sent is not this deployment's (check RINGLAB_TOKEN / --token)"


class AuthInterceptor(grpc.ServerInterceptor):
    """Requires ``authorization: Bearer TOKEN`` metadata when the server has a token.  A call
    without one and a call with another one get different UNAUTHENTICATED messages (neither
    echoes what was sent)."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}"
        self._deny = {message: self._handlers(message) for message in (MISSING_TOKEN, WRONG_TOKEN)}

    @staticmethod
    def _handlers(
        message: str,
    ) -> tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]:
        def deny(request: object, context: grpc.ServicerContext) -> None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        def deny_stream(request: object, context: grpc.ServicerContext) -> Iterator[None]:
            deny(request, context)
            yield None

        return grpc.unary_unary_rpc_method_handler(deny), grpc.unary_stream_rpc_method_handler(deny_stream)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        if method.startswith(_OPEN_METHODS):
            return continuation(handler_call_details)
        sent = [v for k, v in handler_call_details.invocation_metadata or () if k == "authorization"]
        if sent == [self._expected]:
            return continuation(handler_call_details)
        unary, stream = self._deny[WRONG_TOKEN if any(sent) else MISSING_TOKEN]
        handler = continuation(handler_call_details)
        if handler is not None and handler.unary_stream is not None:
            return stream
        return unary


class StreamSlots:
    """At most ``limit`` open streams; one more fails at once with RESOURCE_EXHAUSTED."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._sem = threading.BoundedSemaphore(limit)

    @contextmanager
    def hold(self) -> Iterator[None]:
        if not self._sem.acquire(blocking=False):
            raise Exhausted(
                f"all {self.limit} stream slots of this server are open: close a console or event "
                "stream, or start the server with a larger RINGLAB_MAX_STREAMS"
            )
        try:
            yield
        finally:
            self._sem.release()


@dataclass
class ServiceServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    service_names: list[str]
    checks: Sequence[Check]
    stopping: threading.Event = field(default_factory=threading.Event)
    on_stop: list[Callable[[], None]] = field(default_factory=list)
    _thread: threading.Thread | None = None

    def start(self) -> ServiceServer:
        self.server.start()
        self.refresh_health()
        self._thread = threading.Thread(target=self._health_loop, name="health", daemon=True)
        self._thread.start()
        return self

    def refresh_health(self) -> bool:
        ok = not self.stopping.is_set()
        for check in self.checks:
            try:
                ok = ok and bool(check())
            except Exception:
                ok = False
        status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self.service_names):
            self.health.set(name, status)
        return ok

    def _health_loop(self) -> None:
        while not self.stopping.wait(HEALTH_PERIOD):
            self.refresh_health()

    def stop(self, grace: float = 5.0) -> None:
        """NOT_SERVING first (so balancers stop sending), then let calls in flight finish."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        self.health.enter_graceful_shutdown()
        for callback in self.on_stop:
            try:
                callback()
            except Exception:
                log.exception("error while stopping")
        self.server.stop(grace).wait()

    def install_signal_handlers(self) -> None:
        def handle(signum: int, frame: FrameType | None) -> None:
            threading.Thread(target=self.stop, name="stop", daemon=True).start()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def wait(self) -> None:
        self.server.wait_for_termination()


def build_server(
    config: ServiceConfig,
    register: Callable[[grpc.Server], None],
    service_names: Sequence[str],
    checks: Sequence[Check] = (),
) -> ServiceServer:
    """A server for ``config``, with the servicers ``register`` adds, listening (not started)."""
    from ringlab.rpc.errors import ErrorInterceptor

    interceptors: list[grpc.ServerInterceptor] = [ErrorInterceptor()]
    if config.token:
        interceptors.insert(0, AuthInterceptor(config.token))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix=config.service),
        interceptors=interceptors,
        # Beyond this many calls in progress, fail fast with RESOURCE_EXHAUSTED rather than queue.
        maximum_concurrent_rpcs=config.workers * 8,
        options=[("grpc.so_reuseport", 0)],
    )
    register(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = list(service_names)
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    port = server.add_insecure_port(config.listen)
    if port == 0:
        raise SystemExit(f"cannot listen on {config.listen}: is another server using the port?")
    return ServiceServer(server, port, health_servicer, names, list(checks))
