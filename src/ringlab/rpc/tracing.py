"""OpenTelemetry traces across the services (docs/tracing.md, "Traces across the services"): an
adapter, like the rest of ``ringlab.rpc``.  The domain knows nothing of it: the hypervisor's
drivers tell their ``DriverObserver`` when a slice starts and ends (``TracingObserver`` makes
that a span), and the adapters (the ``RunVcpu`` client ``ringlab_hypervisor.pcpu_link``, the cpu
service's servicer) open their own spans through a ``Tracing``.

One setting turns it on: ``RINGLAB_TRACING`` or a service's ``--tracing`` (the flag first):

    off        the default: no tracer provider, no interceptors; ``Tracing.span`` hands out the
               API's no-op span
    otlp       export OTLP over gRPC (``OTEL_EXPORTER_OTLP_ENDPOINT``, else localhost:4317, and
               the other standard ``OTEL_*`` variables); a collector that does not answer costs
               the exporter's batch thread its retries, never a call, and is logged once a minute
    file:DIR   each process appends its finished spans, one JSON object a line, to
               ``DIR/<service>-<pid>.jsonl`` (``JsonLinesSpanExporter``), which
               ``ringlab trace vm --spans DIR`` puts beside the flight recorder's records

When on, ``build_server`` installs the gRPC server interceptor of opentelemetry-instrumentation-grpc
and ``open_channel`` its client interceptor, which carry the W3C trace context in the calls'
metadata, so a world switch's spans (the hypervisor's ``slice`` and ``world switch``, the
``RunVcpu`` client and server spans, the pCPU's ``core run`` and ``commit``) form one trace.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace, TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from ringlab.hypervisor.pcpu_driver import DriverObserver, SliceReport

if TYPE_CHECKING:
    import grpc

__all__ = [
    "NO_SPAN",
    "OFF",
    "OFF_TRACING",
    "SPAN_FILE_SUFFIX",
    "TRACING_ENV",
    "Span",
    "Tracing",
    "TracingObserver",
    "TracingSetting",
    "add_tracing_flag",
    "check_tracing_flag",
    "configure_tracing",
    "parse_tracing",
    "read_spans",
    "span_record",
    "spans_directory",
    "tracing_setting",
]

log = logging.getLogger("ringlab.rpc")

TRACING_ENV = "RINGLAB_TRACING"
OFF = frozenset({"", "off", "none", "no", "false", "disabled"})
"""Settings of ``RINGLAB_TRACING`` / ``--tracing`` that leave tracing off (any case)."""
FILE_PREFIX = "file:"
SPAN_FILE_SUFFIX = ".jsonl"
SHUTDOWN_GRACE = 1.0
"""Seconds a stopping service gives its exporter to send what is left before the exporter gives
up its retries (a collector that does not answer must not hold a stop for its whole timeout)."""
QUIET_SECONDS = 60.0
"""The exporter's complaints (a collector that does not answer) are logged at most this often."""
_EXPORT_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.sdk._shared_internal",
    "opentelemetry.sdk.trace.export",
)
_EXCLUDED_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection")
"""Probes (an orchestrator's health check every second) make no spans."""


# -- the setting ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TracingSetting:
    """What ``RINGLAB_TRACING`` / ``--tracing`` asks for: ``mode`` off, otlp or file (then
    ``directory``: where the span files go)."""

    mode: str = "off"
    directory: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def __str__(self) -> str:
        return f"{FILE_PREFIX}{self.directory}" if self.mode == "file" else self.mode


def add_tracing_flag(parser: Any) -> None:
    """``--tracing`` (else ``RINGLAB_TRACING``) on a service's argument parser."""
    parser.add_argument(
        "--tracing",
        default=None,
        metavar="off|otlp|file:DIR",
        help=f"OpenTelemetry spans (default: {TRACING_ENV}, else off): otlp exports them to "
        "OTEL_EXPORTER_OTLP_ENDPOINT (else localhost:4317), file:DIR writes DIR/SERVICE-PID.jsonl",
    )


def check_tracing_flag(parser: Any, flag: str | None) -> None:
    """Stop a service at start with a usage error (status 2, one line) when ``--tracing`` or else
    ``RINGLAB_TRACING`` is not a setting ``parse_tracing`` knows."""
    try:
        parse_tracing(tracing_setting(flag))
    except ValueError as exc:
        parser.error(str(exc))


def tracing_setting(flag: str | None = None) -> str:
    """The tracing asked for: ``flag`` (``--tracing``) if given, else ``RINGLAB_TRACING``, else ""
    (off)."""
    if flag is not None:
        return flag.strip()
    return os.environ.get(TRACING_ENV, "").strip()


def parse_tracing(text: str) -> TracingSetting:
    """``off`` (or nothing), ``otlp`` or ``file:DIR`` -> a ``TracingSetting``; ValueError saying
    what is expected for anything else."""
    value = text.strip()
    low = value.lower()
    if low in OFF:
        return TracingSetting()
    if low == "otlp":
        protocol = os.environ.get(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
        )
        if protocol.strip().lower() not in ("", "grpc"):
            raise ValueError(
                f"{TRACING_ENV}=otlp exports OTLP over gRPC, but OTEL_EXPORTER_OTLP_PROTOCOL asks for "
                f"{protocol!r}: unset it or set it to grpc (a collector takes both, on ports 4317 and 4318)"
            )
        return TracingSetting("otlp")
    if low.startswith(FILE_PREFIX):
        folder = value[len(FILE_PREFIX) :].strip()
        if not folder:
            raise ValueError(
                f"{TRACING_ENV} / --tracing {text!r}: name the folder for the span files: file:DIR"
            )
        return TracingSetting("file", Path(folder))
    raise ValueError(
        f"{TRACING_ENV} / --tracing {text!r}: expected off, otlp (export to OTEL_EXPORTER_OTLP_ENDPOINT) "
        "or file:DIR (span files in DIR)"
    )


def spans_directory() -> Path | None:
    """Where this deployment's span files are when ``RINGLAB_TRACING`` says (``file:DIR``), else
    None (for a setting that is not valid too: the services refuse it, a reader need not)."""
    try:
        return parse_tracing(tracing_setting()).directory
    except ValueError:
        return None


# -- a process's tracing ---------------------------------------------------------------------------
class Span(Protocol):
    """What Ringlab's code does with a span (an OpenTelemetry ``Span`` is one)."""

    def set_attribute(self, key: str, value: Any) -> None: ...

    def is_recording(self) -> bool: ...

    def end(self, end_time: int | None = None) -> None: ...


class _NoSpan:
    """Tracing off: a span that is nothing (a context manager too)."""

    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def is_recording(self) -> bool:
        return False

    def end(self, end_time: int | None = None) -> None:
        pass

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


NO_SPAN = _NoSpan()


class Tracing:
    """A service process's tracing: off (``OFF_TRACING``: no provider, no interceptors, neither the
    SDK's tracing nor the instrumentation imported, every span ``NO_SPAN``) or on
    (``configure_tracing``)."""

    def __init__(
        self,
        service: str = "",
        setting: TracingSetting | None = None,
        provider: Any = None,
        exporter: Any = None,
        path: Path | None = None,
    ) -> None:
        self.service = service
        self.setting = setting or TracingSetting()
        self.provider: Any = provider
        """Its ``opentelemetry.sdk.trace.TracerProvider`` (None: off)."""
        self.path = path
        """The span file (``file:DIR``), else None."""
        self._exporter = exporter
        self._tracer: Any = None if provider is None else provider.get_tracer("ringlab")
        self._closed = False
        self._closing = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def span(self, name: str, attributes: Mapping[str, Any] | None = None) -> AbstractContextManager[Span]:
        """A span named ``name``, a child of the current one and current itself while the ``with``
        block runs; an exception leaving the block is recorded on it and marks it an error."""
        if self._tracer is None:
            return NO_SPAN
        cm: AbstractContextManager[Span] = self._tracer.start_as_current_span(name, attributes=attributes)
        return cm

    def start_span(
        self, name: str, attributes: Mapping[str, Any] | None = None, start_time: int | None = None
    ) -> Span:
        """A span started (at ``start_time``, epoch nanoseconds, else now), a child of the current
        one, not made current: the caller ends it."""
        if self._tracer is None:
            return NO_SPAN
        span: Span = self._tracer.start_span(name, attributes=attributes, start_time=start_time)
        return span

    def server_interceptor(self) -> grpc.ServerInterceptor | None:
        """opentelemetry-instrumentation-grpc's server interceptor (None when off): every call but
        health and reflection a SERVER span, the child of the caller's (whose context the call's
        metadata carries)."""
        if self.provider is None:
            return None
        from opentelemetry.instrumentation.grpc import filters, server_interceptor

        excluded = filters.negate(filters.any_of(*(filters.service_name(s) for s in _EXCLUDED_SERVICES)))
        interceptor: grpc.ServerInterceptor = server_interceptor(self.provider, filter_=excluded)  # type: ignore[no-untyped-call]
        return interceptor

    def traced_channel(self, channel: grpc.Channel) -> grpc.Channel:
        """``channel`` with opentelemetry-instrumentation-grpc's client interceptor (as it is when
        off): every call a CLIENT span, whose context travels in the call's metadata (W3C
        ``traceparent``) to the server."""
        if self.provider is None:
            return channel
        from opentelemetry.instrumentation.grpc import client_interceptor, grpcext

        interceptor = client_interceptor(self.provider)  # type: ignore[no-untyped-call]
        traced: grpc.Channel = grpcext.intercept_channel(channel, interceptor)  # type: ignore[no-untyped-call]
        return traced

    def shutdown(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Export what is left (the exporter gives up its retries after ``grace`` seconds) and
        stop.  ``ServiceServer.stop`` calls it, and the interpreter at exit."""
        if self.provider is None:
            return
        with self._closing:  # a second caller (the exit, while a stop thread exports) waits for it
            if self._closed:
                return
            self._closed = True
            self._shut_down(grace)

    def _shut_down(self, grace: float) -> None:
        timer = threading.Timer(grace, self._exporter.abandon) if self._exporter is not None else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            self.provider.shutdown()
        except Exception as exc:  # tracing never fails a stop
            log.warning("tracing: stopping the span exporter failed: %s", exc)
        finally:
            if timer is not None:
                timer.cancel()


OFF_TRACING = Tracing()
"""Tracing off: what a process has unless ``configure_tracing`` turned it on."""


def configure_tracing(service: str, flag: str | None = None, *, instance: str = "") -> Tracing:
    """The tracing of a ``service`` process (cpu, hypervisor, guest) as ``flag`` (``--tracing``),
    else ``RINGLAB_TRACING``, asks: off (``OFF_TRACING``: nothing is created), or a tracer
    provider of its own that exports through a batch thread (the SDK's ``BatchSpanProcessor``,
    its ``OTEL_BSP_*`` settings honoured).  ``instance`` tells this process from others of its
    service (a pCPU's id).  ValueError for a setting that is not valid, or a span folder that
    cannot be written."""
    setting = parse_tracing(tracing_setting(flag))
    if not setting.enabled:
        return OFF_TRACING
    sdk = _sdk()
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    path: Path | None = None
    if setting.directory is not None:
        path = setting.directory / f"{service}-{os.getpid()}{SPAN_FILE_SUFFIX}"
        try:
            setting.directory.mkdir(parents=True, exist_ok=True)
            path.touch()
        except OSError as exc:
            raise ValueError(
                f"{TRACING_ENV} / --tracing {setting}: cannot write span files in "
                f"{setting.directory}: {exc.strerror or exc}"
            ) from None
        inner = sdk.JsonLinesSpanExporter(path, service, instance)
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        inner = OTLPSpanExporter()
    _quiet_exporter_logs()
    attributes: dict[str, Any] = {"service.name": f"ringlab-{service}", "process.pid": os.getpid()}
    if instance:
        attributes["service.instance.id"] = instance
    provider = TracerProvider(resource=Resource.create(attributes), shutdown_on_exit=False)
    exporter = sdk.GuardedSpanExporter(inner, str(setting))
    provider.add_span_processor(sdk.ThreadNames())
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracing = Tracing(service, setting, provider, exporter, path)
    atexit.register(tracing.shutdown)
    log.info("tracing: spans of the %s service go to %s", service, path or "OTLP")
    return tracing


# -- the SDK's parts, made when tracing is first turned on -----------------------------------------
class _QuietFilter(logging.Filter):
    """Warnings and errors of the exporter at most one a ``QUIET_SECONDS`` and without a
    traceback: a collector that is not there is said once a minute, not at every batch."""

    def __init__(self) -> None:
        super().__init__()
        self._last = -QUIET_SECONDS
        self._lock = threading.Lock()

    def allow(self) -> bool:
        with self._lock:
            now = time.monotonic()
            if now - self._last < QUIET_SECONDS:
                return False
            self._last = now
            return True

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        if not self.allow():
            return False
        text = record.getMessage()
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        record.msg, record.args = (
            f"tracing: {text} (is an OTLP collector listening at OTEL_EXPORTER_OTLP_ENDPOINT? the "
            "spans are dropped meanwhile; this is said at most once a minute)",
            None,
        )
        return True


_QUIET = _QuietFilter()


def _quiet_exporter_logs() -> None:
    for name in _EXPORT_LOGGERS:
        logger = logging.getLogger(name)
        if _QUIET not in logger.filters:
            logger.addFilter(_QUIET)


def span_record(
    span: Any, service: str, instance: str = "", resource: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A finished span (the SDK's ``ReadableSpan``) as a span file's line holds it: the ids in hex
    (``parent_id`` None for a root), times in epoch nanoseconds, its attributes, and the process
    it came from (``service``, ``instance``: a pCPU's id, a guest's name; ``pid``; ``resource``,
    by default the span's resource's attributes but the SDK's own)."""
    ctx = span.context
    parent = span.parent
    status = span.status
    if resource is None:
        resource = process_resource(span)
    record: dict[str, Any] = {
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_id": f"{parent.span_id:016x}" if parent is not None else None,
        "name": span.name,
        "kind": span.kind.name,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": status.status_code.name,
        "attributes": dict(span.attributes) if span.attributes else {},
        "service": service,
        "instance": instance,
        "pid": os.getpid(),
        "resource": resource,
    }
    if status.description:
        record["status_message"] = status.description
    if span.events:
        record["events"] = [
            {"name": e.name, "time_ns": e.timestamp, "attributes": dict(e.attributes or {})}
            for e in span.events
        ]
    return record


def process_resource(span: Any) -> dict[str, Any]:
    """The attributes of ``span``'s resource, but the SDK's own (``telemetry.*``)."""
    attributes = span.resource.attributes if span.resource is not None else {}
    return {str(k): v for k, v in attributes.items() if not str(k).startswith("telemetry.")}


@functools.cache
def _sdk() -> SimpleNamespace:
    """The classes that subclass the SDK's, defined on first use: a process with tracing off
    does not import the SDK's tracing."""
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class JsonLinesSpanExporter(SpanExporter):
        """Appends each finished span as one JSON object a line (``span_record``) to ``path``."""

        def __init__(self, path: Path, service: str, instance: str = "") -> None:
            self.path = path
            self.service = service
            self.instance = instance
            self._resource: dict[str, Any] | None = None
            self._lock = threading.Lock()
            self._file: Any = None

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            if self._resource is None and spans:
                self._resource = process_resource(spans[0])  # the provider's: one per process
            lines = [
                json.dumps(span_record(s, self.service, self.instance, self._resource), default=str)
                for s in spans
            ]
            text = "".join(f"{line}\n" for line in lines)
            with self._lock:
                try:
                    if self._file is None:
                        self._file = self.path.open("a", encoding="utf-8")
                    self._file.write(text)
                    self._file.flush()
                except OSError as exc:
                    if _QUIET.allow():
                        log.warning("tracing: cannot write spans to %s: %s", self.path, exc.strerror or exc)
                    return SpanExportResult.FAILURE
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            with self._lock:
                if self._file is not None:
                    with contextlib.suppress(OSError):
                        self._file.close()
                    self._file = None

        def force_flush(self, timeout_millis: int = 30_000) -> bool:
            return True

    class GuardedSpanExporter(SpanExporter):
        """Another exporter that never raises, says at most once a minute why it failed, and can
        be told to give up its retries at once (``abandon``: the service is stopping)."""

        def __init__(self, inner: SpanExporter, where: str) -> None:
            self.inner = inner
            self.where = where
            self._down = False
            self._lock = threading.Lock()

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            try:
                result: SpanExportResult = self.inner.export(spans)
            except Exception as exc:
                if _QUIET.allow():
                    log.warning("tracing: exporting %d spans (%s) failed: %s", len(spans), self.where, exc)
                return SpanExportResult.FAILURE
            return result

        def abandon(self) -> None:
            """Stop now: retries given up, the connection closed (once)."""
            with self._lock:
                if self._down:
                    return
                self._down = True
            with contextlib.suppress(Exception):
                self.inner.shutdown()

        def shutdown(self) -> None:
            self.abandon()

        def force_flush(self, timeout_millis: int = 30_000) -> bool:
            try:
                return bool(self.inner.force_flush(timeout_millis))
            except Exception:
                return False

    class ThreadNames(SpanProcessor):
        """Names the thread each span starts on (``thread.name``): a trace file gives each thread
        of a process a line of its own."""

        def on_start(self, span: Any, parent_context: Any = None) -> None:
            span.set_attribute("thread.name", threading.current_thread().name)

    return SimpleNamespace(
        JsonLinesSpanExporter=JsonLinesSpanExporter,
        GuardedSpanExporter=GuardedSpanExporter,
        ThreadNames=ThreadNames,
    )


def __getattr__(name: str) -> Any:
    """``JsonLinesSpanExporter`` (and the other SDK subclasses), imported on first use."""
    if name in ("JsonLinesSpanExporter", "GuardedSpanExporter", "ThreadNames"):
        return getattr(_sdk(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- the hypervisor's slices -----------------------------------------------------------------------
class TracingObserver(DriverObserver):
    """The pCPU drivers' observer when tracing is on: tells ``inner`` (the metrics) everything,
    and makes each slice a ``slice`` span, current on its driver's thread while the slice runs,
    so that the slice's world switches (``ringlab_hypervisor.pcpu_link``) are its children."""

    def __init__(self, inner: DriverObserver, tracing: Tracing) -> None:
        self.inner = inner
        self.tracing = tracing
        self._local = threading.local()

    def slice_started(self, pcpu: str, vm: str) -> None:
        self.inner.slice_started(pcpu, vm)
        from opentelemetry import context, trace

        self._close("a slice that did not end")
        span: Any = self.tracing.start_span("slice", {"ringlab.pcpu": pcpu, "ringlab.vm.id": vm})
        self._local.open = (span, context.attach(trace.set_span_in_context(span)))

    def slice_ended(self, report: SliceReport) -> None:
        self.inner.slice_ended(report)
        opened = getattr(self._local, "open", None)
        self._local.open = None
        if opened is None:  # never started here: the slice's span from what the report says
            span: Any = self.tracing.start_span(
                "slice", start_time=time.time_ns() - int(report.seconds * 1e9)
            )
        else:
            span, token = opened
            from opentelemetry import context

            with contextlib.suppress(Exception):
                context.detach(token)
        span.set_attributes(
            {
                "ringlab.pcpu": report.pcpu,
                "ringlab.vm.id": report.vm,
                "ringlab.vm.name": report.name,
                "ringlab.technique": report.technique,
                "ringlab.slice.number": report.number,
                "ringlab.slice.ended": report.ended,
                "ringlab.slice.world_switches": report.switches,
                "ringlab.slice.exits": sum(report.exits.values()),
                "ringlab.slice.instructions": report.instructions,
            }
        )
        if report.ended == "lost":
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR, "the slice was lost: the VM resumes from its commit"))
        span.end()

    def _close(self, why: str) -> None:
        opened = getattr(self._local, "open", None)
        self._local.open = None
        if opened is not None:
            from opentelemetry import context

            span, token = opened
            with contextlib.suppress(Exception):
                context.detach(token)
            span.set_attribute("ringlab.slice.ended", why)
            span.end()

    def world_switch(self, pcpu: str, seconds: float) -> None:
        self.inner.world_switch(pcpu, seconds)

    def decided(self, pcpu: str, chosen: str | None, applied: bool, refilled: bool, seconds: float) -> None:
        self.inner.decided(pcpu, chosen, applied, refilled, seconds)


# -- reading span files ----------------------------------------------------------------------------
def read_spans(directory: Path) -> list[dict[str, Any]]:
    """Every span in the span files (``*.jsonl``) of ``directory``, oldest first; a line that is
    not a span (a file cut short by a killed process) is skipped.  OSError when the folder cannot
    be read."""
    spans: list[dict[str, Any]] = []
    for path in sorted(directory.glob(f"*{SPAN_FILE_SUFFIX}")):
        with path.open(encoding="utf-8", errors="replace") as lines:
            spans += _spans(lines)
    spans.sort(key=lambda s: s["start_ns"])
    return spans


def _spans(lines: Iterable[str]) -> Iterable[dict[str, Any]]:
    for line in lines:
        try:
            span = json.loads(line)
        except ValueError:
            continue
        if (
            isinstance(span, dict)
            and isinstance(span.get("start_ns"), int)
            and isinstance(span.get("end_ns"), int)
            and isinstance(span.get("name"), str)
            and isinstance(span.get("trace_id"), str)
        ):
            yield span
