"""The one way to build a Ringlab gRPC server.

``build_server`` gives every service the same things: the standard health service driven by
real checks (re-run every second), server reflection, the bearer-token and error interceptors
(``RoleInterceptor`` when the service has role credentials: who may call what, docs/security.md),
bounded concurrency (a thread pool, plus ``StreamSlots`` so open streams can never take every
thread and starve unary calls), Prometheus metrics (``ringlab.rpc.metrics``: every call counted
and timed by method and status code by an interceptor, served at ``/metrics``), OpenTelemetry
server spans when tracing is on (``ringlab.rpc.tracing``), and a graceful stop on SIGTERM that
reports NOT_SERVING first.
"""

from __future__ import annotations

import hmac
import logging
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ringlab.rpc.config import ServiceConfig
from ringlab.rpc.metrics import ServiceMetrics, metrics_port, metrics_setting
from ringlab.store.credentials import Credentials, digest, guest_token
from ringlab.store.errors import Exhausted

if TYPE_CHECKING:
    from ringlab.rpc.tracing import Tracing

__all__ = [
    "GUEST_SCOPED",
    "MISSING_TOKEN",
    "ROLES_BY_SERVICE",
    "WRONG_TOKEN",
    "AuthInterceptor",
    "Caller",
    "RoleInterceptor",
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
FORBIDDEN = (
    "the {role} role may not call {method}: see docs/security.md, who may call what (the caller was "
    "recognised; its credential is not for this)"
)
NOT_ITS_VM = (
    "a guest acts only on its own VM ({vm}): this request names another (give your own VM's name in "
    "'{field}'; see docs/security.md)"
)

ROLES_BY_SERVICE: dict[str, frozenset[str]] = {
    "/ringlab.v1.Cpu/": frozenset({"hypervisor"}),
    "/ringlab.v1.Hypervisor/": frozenset({"operator", "guest"}),
    "/ringlab.v1.Guest/": frozenset({"operator"}),
}
"""Which roles may call a service's methods (by the method's prefix); a method of any other
service is the operator's.  docs/security.md has the same table."""

GUEST_SCOPED: dict[str, str] = {
    f"/ringlab.v1.Hypervisor/{name}": field_name
    for name, field_name in (
        ("CreateVm", "name"),
        ("StartVm", "vm"),
        ("PauseVm", "vm"),
        ("ResumeVm", "vm"),
        ("StopVm", "vm"),
        ("DestroyVm", "vm"),
        ("DescribeVm", "vm"),
        ("WaitVm", "vm"),
        ("StreamConsole", "vm"),
        ("StreamEvents", "vm"),
        ("GetFlightRecord", "vm"),
        ("SnapshotVm", "vm"),
        ("RestoreVm", "name"),
    )
}
"""The hypervisor's methods a guest may call, each on its own VM only: the request field that
must name it (by name: a guest's credential is bound to its VM's name, known before the VM has
an id).  ListVms and GetStats (every VM) are not among them, nor StreamEvents of every VM."""


def _text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode(errors="replace")


def _deny(
    code: grpc.StatusCode, message: str, handler: grpc.RpcMethodHandler[Any, Any] | None
) -> grpc.RpcMethodHandler[Any, Any]:
    def deny(request: object, context: grpc.ServicerContext) -> None:
        context.abort(code, message)

    def deny_stream(request: object, context: grpc.ServicerContext) -> Iterator[None]:
        deny(request, context)
        yield None

    if handler is not None and handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(deny_stream)
    return grpc.unary_unary_rpc_method_handler(deny)


class _Gate(grpc.ServerInterceptor):
    """What both interceptors share: health and reflection are open; any other call is admitted
    or refused (``_admit``) on its ``authorization`` metadata, a refusal answered as the method
    would answer (a unary or a streaming response)."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        if method.startswith(_OPEN_METHODS):
            return continuation(handler_call_details)
        sent = [_text(v) for k, v in handler_call_details.invocation_metadata or () if k == "authorization"]
        return self._admit(method, sent, continuation(handler_call_details))

    def _admit(
        self, method: str, sent: list[str], handler: grpc.RpcMethodHandler[Any, Any] | None
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        raise NotImplementedError


class AuthInterceptor(_Gate):
    """Requires ``authorization: Bearer TOKEN`` metadata when the server has a token.  A call
    without one and a call with another one get different UNAUTHENTICATED messages (neither
    echoes what was sent)."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def _admit(
        self, method: str, sent: list[str], handler: grpc.RpcMethodHandler[Any, Any] | None
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        if len(sent) == 1 and hmac.compare_digest(sent[0].encode(), self._expected):
            return handler
        return _deny(grpc.StatusCode.UNAUTHENTICATED, WRONG_TOKEN if any(sent) else MISSING_TOKEN, handler)


@dataclass(frozen=True)
class Caller:
    """Who a call comes from: its role, and for a guest the name of the VM it owns."""

    role: str
    vm: str = ""


class RoleInterceptor(_Gate):
    """Least privilege between services (docs/security.md): identifies the caller from its bearer
    token (every comparison in constant time), then serves the method only to the roles
    ``ROLES_BY_SERVICE`` allows; a guest's call is checked against the VM its token is bound to,
    on the request's field (the handler is wrapped: it sees the request message).  Health and
    reflection are open.  UNAUTHENTICATED: no credential, or one this service does not know;
    PERMISSION_DENIED: a known caller whose role may not make this call."""

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials
        self._accept = {role: value.encode() for role, value in credentials.accept.items()}

    def identify(self, sent: list[str]) -> Caller | None:
        """The caller a call's ``authorization`` values name, else None."""
        c = self.credentials
        if not sent:
            return Caller("operator") if c.operator_open else None
        if len(sent) != 1 or not sent[0].startswith("Bearer "):
            return None
        token = sent[0][len("Bearer ") :]
        presented = digest(token).encode()
        found: Caller | None = None
        for role, expected in self._accept.items():  # every one compared: no early exit
            if hmac.compare_digest(presented, expected):
                found = Caller(role)
        if c.role == "hypervisor" and c.token and hmac.compare_digest(token.encode(), c.token.encode()):
            found = Caller("hypervisor")  # its own credential: known, so a refusal says why
        if c.guest_key and token.startswith("guest:"):
            name = token[len("guest:") :].rpartition(":")[0]
            if name and hmac.compare_digest(token.encode(), guest_token(c.guest_key, name).encode()):
                found = Caller("guest", name)
        if found is None and c.operator_open:
            return Caller("operator")  # no operator token: as before, a token is not asked for
        return found

    def _admit(
        self, method: str, sent: list[str], handler: grpc.RpcMethodHandler[Any, Any] | None
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        caller = self.identify(sent)
        if caller is None:
            message = WRONG_TOKEN if any(sent) else MISSING_TOKEN
            return _deny(grpc.StatusCode.UNAUTHENTICATED, message, handler)
        if handler is None:
            return None  # UNIMPLEMENTED
        allowed = next(
            (roles for prefix, roles in ROLES_BY_SERVICE.items() if method.startswith(prefix)), None
        )
        if caller.role not in (allowed or {"operator"}) or (
            caller.role == "guest" and method not in GUEST_SCOPED
        ):
            log.warning("refused: the %s role called %s", caller.role, method)
            return _deny(
                grpc.StatusCode.PERMISSION_DENIED, FORBIDDEN.format(role=caller.role, method=method), handler
            )
        if caller.role == "guest":
            return _scoped(handler, GUEST_SCOPED[method], caller.vm)
        return handler


def _scoped(
    handler: grpc.RpcMethodHandler[Any, Any], field_name: str, vm: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` run only for a request whose ``field_name`` is ``vm`` (in constant time)."""

    def check(request: Any, context: grpc.ServicerContext) -> None:
        named = str(getattr(request, field_name, ""))
        if not hmac.compare_digest(named.encode(), vm.encode()):
            log.warning("refused: guest %s named another VM in %s", vm, field_name)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, NOT_ITS_VM.format(vm=vm, field=field_name))

    if handler.unary_unary is not None:
        inner = handler.unary_unary

        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            check(request, context)
            return inner(request, context)

        wrapped: grpc.RpcMethodHandler[Any, Any] = handler._replace(unary_unary=unary)  # type: ignore[attr-defined]
        return wrapped
    if handler.unary_stream is not None:
        inner_stream = handler.unary_stream

        def stream(request: Any, context: grpc.ServicerContext) -> Any:
            check(request, context)
            yield from inner_stream(request, context)

        streamed: grpc.RpcMethodHandler[Any, Any] = handler._replace(unary_stream=stream)  # type: ignore[attr-defined]
        return streamed
    return _deny(
        grpc.StatusCode.PERMISSION_DENIED, "a guest may not call a streaming-request method", handler
    )


class StreamSlots:
    """At most ``limit`` open streams; one more fails at once with RESOURCE_EXHAUSTED."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._sem = threading.BoundedSemaphore(limit)
        self._lock = threading.Lock()
        self._open = 0
        self._refused = 0

    @property
    def in_use(self) -> int:
        """Streams holding a slot now."""
        return self._open

    @property
    def refused(self) -> int:
        """Streams refused so far (RESOURCE_EXHAUSTED) because every slot was in use."""
        return self._refused

    @contextmanager
    def hold(self) -> Iterator[None]:
        if not self._sem.acquire(blocking=False):
            with self._lock:
                self._refused += 1
            raise Exhausted(
                f"all {self.limit} stream slots of this server are open: close a console or event "
                "stream, or start the server with a larger RINGLAB_MAX_STREAMS"
            )
        with self._lock:
            self._open += 1
        try:
            yield
        finally:
            with self._lock:
                self._open -= 1
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
    metrics: ServiceMetrics | None = None
    """Its metrics (their registry; ``metrics.port``: where ``/metrics`` is served, None: not)."""
    tracing: Tracing | None = None
    """Its tracing (``ringlab.rpc.tracing``), stopped with it: the spans left are exported."""

    @property
    def metrics_port(self) -> int | None:
        """The port ``/metrics`` is served on (None: off, or the default port was taken)."""
        return None if self.metrics is None else self.metrics.port

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
        if self.metrics is not None:
            self.metrics.stop()
        if self.tracing is not None:
            self.tracing.shutdown()

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
    *,
    metrics: ServiceMetrics | None = None,
    metrics_port_setting: str | None = None,
    tracing: Tracing | None = None,
) -> ServiceServer:
    """A server for ``config``, with the servicers ``register`` adds, listening (not started),
    its ``metrics`` (default: every service's) served at ``/metrics`` on the port
    ``metrics_port_setting`` asks for (``--metrics-port``; None: ``RINGLAB_METRICS_PORT``, else
    the gRPC port + 1000; see ``ringlab.rpc.metrics.metrics_port``), and when ``tracing`` is on
    a SERVER span for every call (``ringlab.rpc.tracing``; off: no interceptor at all)."""
    from ringlab.rpc.errors import ErrorInterceptor

    metrics = metrics or ServiceMetrics(config.service)
    try:
        wanted, explicit = metrics_port(metrics_setting(metrics_port_setting), config.port)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    interceptors: list[grpc.ServerInterceptor] = [ErrorInterceptor()]
    if config.credentials is not None:
        interceptors.insert(0, RoleInterceptor(config.credentials))
    elif config.token:
        interceptors.insert(0, AuthInterceptor(config.token))
    else:
        log.warning(
            "%s: no credentials and no token: every caller may call every method (a development "
            "set-up; 'ringlab up' and compose hand each service its role's credentials)",
            config.service,
        )
    if wanted is not None:  # outermost: a call the token or role check refuses is counted too
        interceptors.insert(0, metrics.interceptor())
    traced = tracing.server_interceptor() if tracing is not None else None
    if traced is not None:  # outermost of all: the span covers the checks, and takes their status
        interceptors.insert(0, traced)
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
    if wanted is not None:
        metrics.start(config.listen.rpartition(":")[0], wanted, explicit=explicit)
    return ServiceServer(server, port, health_servicer, names, list(checks), metrics=metrics, tracing=tracing)
