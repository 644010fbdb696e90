"""Prometheus metrics for every service (docs/metrics.md): an adapter, like the rest of
``ringlab.rpc``.  The domain knows nothing of Prometheus: it keeps counts and calls plain hooks
(``DriverObserver`` in the hypervisor's drivers, ``SharedState.observer`` in the store, the counts
a servicer keeps), and this module turns them into metrics in one ``CollectorRegistry`` per
service, served over HTTP at ``/metrics`` (``prometheus_client``'s own server, a thread).

Every service has (``ServiceMetrics``): gRPC server metrics by method and status code (the server
interceptor ``build_server`` installs), Redis round trips by operation, stream slots, and the
process's own (CPU, memory, file descriptors, garbage collector).  The hypervisor adds
(``HypervisorMetrics``) exits, world switches, slices and scheduling from its drivers, and the
deployment's VMs and pCPUs as Redis holds them (read when scraped); the cpu service
(``CpuMetrics``) its runs, commits and cache; a guest (``GuestMetrics``) what it owns.

Where: ``--metrics-port`` / ``RINGLAB_METRICS_PORT`` (``metrics_setting``), on the host the gRPC
server listens on; by default the gRPC port + 1000 (hypervisor 51051, cpu 51061, guest 51071).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

import ringlab
from ringlab.hypervisor.pcpu_driver import DriverObserver, SliceReport
from ringlab.store.state import SharedState

__all__ = [
    "METRICS_PORT_ENV",
    "OFF",
    "PORT_OFFSET",
    "CpuMetrics",
    "DriverMetrics",
    "GuestMetrics",
    "HypervisorMetrics",
    "MetricsInterceptor",
    "ServiceMetrics",
    "add_metrics_flag",
    "metrics_port",
    "metrics_setting",
]

log = logging.getLogger("ringlab.rpc")

METRICS_PORT_ENV = "RINGLAB_METRICS_PORT"
PORT_OFFSET = 1000
"""A service's metrics are served on its gRPC port + this, unless told otherwise."""
OFF = frozenset({"off", "none", "no", "false", "disabled"})
"""Settings of ``RINGLAB_METRICS_PORT`` / ``--metrics-port`` that turn metrics off (any case)."""

LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
"""Seconds, from 100 us (a world switch on loopback is about 0.5 ms) to 30 s (a long WaitVm)."""
SLICE_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Host seconds a slice held its pCPU: about 15 ms for a default slice of native compute, up to
0.25 s stretched, and a quarter of the lease (2.5 s) at most."""
SLICE_INSTRUCTION_BUCKETS = (1e3, 1e4, 5e4, 1e5, 2.5e5, 5e5, 1e6, 2e6, 4e6, 8e6)
"""Guest instructions a slice retired (the default slice is 500,000; stretched, up to 16 of them)."""


# -- where ---------------------------------------------------------------------------------------
def add_metrics_flag(parser: Any) -> None:
    """``--metrics-port`` (else ``RINGLAB_METRICS_PORT``) on a service's argument parser."""
    parser.add_argument(
        "--metrics-port",
        default=None,
        metavar="PORT|0|off",
        help="where /metrics is served, on the --listen host (default: RINGLAB_METRICS_PORT, else "
        f"the gRPC port + {PORT_OFFSET}; 0: any free port; off: none)",
    )


def metrics_setting(flag: str | None = None) -> str:
    """The metrics port asked for: ``flag`` (``--metrics-port``) if given, else
    ``RINGLAB_METRICS_PORT``, else "" (the default)."""
    if flag is not None:
        return flag.strip()
    return os.environ.get(METRICS_PORT_ENV, "").strip()


def metrics_port(setting: str, grpc_port: int) -> tuple[int | None, bool]:
    """(the port to serve metrics on, None: off; whether it was asked for explicitly) for
    ``setting`` (``metrics_setting``) and the gRPC port the service was configured with.  The
    default is the gRPC port + ``PORT_OFFSET``; for a gRPC port of 0 (any free port) any free
    port too.  ValueError for a setting that is neither a port nor off."""
    text = setting.strip().lower()
    if text in OFF:
        return None, True
    if text:
        if not text.isdigit() or int(text) > 65535:
            raise ValueError(
                f"{METRICS_PORT_ENV} / --metrics-port {setting!r}: give a port (1-65535), 0 for any "
                "free port, or off"
            )
        return int(text), True
    if grpc_port == 0 or grpc_port + PORT_OFFSET > 65535:
        return 0, False
    return grpc_port + PORT_OFFSET, False


# -- every service ---------------------------------------------------------------------------------
class _Slots(Protocol):
    limit: int

    @property
    def in_use(self) -> int: ...

    @property
    def refused(self) -> int: ...


class _Children:
    """``metric.labels(*values)``, remembered: looking a child up costs microseconds, and the
    world switch's path asks for the same few children at every call.  Only for metrics whose
    series are never removed."""

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self._cache: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._cache.get(values)
        if child is None:  # a race only makes the same child twice: labels() returns one object
            child = self._cache[values] = self.metric.labels(*values)
        return child


def _split(method: str) -> tuple[str, str]:
    """``/ringlab.v1.Cpu/RunVcpu`` -> (``ringlab.v1.Cpu``, ``RunVcpu``)."""
    service, _, name = method.lstrip("/").partition("/")
    return service or "unknown", name or "unknown"


class ServiceMetrics:
    """One service's registry, with what every service has; ``start`` serves it over HTTP."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        Info(
            "ringlab_service",
            "The service answering (cpu, hypervisor, guest) and Ringlab's version.",
            registry=r,
        ).info({"service": service, "version": ringlab.__version__})
        rpc = ["grpc_service", "grpc_method"]
        self.rpc_started = Counter(
            "ringlab_grpc_server_started_total",
            "gRPC calls started on this server, by method.",
            rpc,
            registry=r,
        )
        self.rpc_handled = Counter(
            "ringlab_grpc_server_handled_total",
            "gRPC calls this server finished, by method and status code (a call to a method it does "
            "not serve counts as grpc_service=grpc_method=unknown, UNIMPLEMENTED).",
            [*rpc, "grpc_code"],
            registry=r,
        )
        self.rpc_seconds = Histogram(
            "ringlab_grpc_server_handling_seconds",
            "How long this server took to finish a gRPC call (a stream: until its end), by method "
            "and status code.",
            [*rpc, "grpc_code"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.redis_trips = Counter(
            "ringlab_redis_round_trips_total",
            "Round trips to Redis by operation (the store's counted ones: the hot path's loads, "
            "commits, grants and snapshots, and the API's reads of records), and whether they failed.",
            ["op", "outcome"],
            registry=r,
        )
        self.redis_seconds = Histogram(
            "ringlab_redis_round_trip_seconds",
            "How long a counted round trip to Redis took, by operation.",
            ["op"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rpc_started_of = _Children(self.rpc_started)
        self.rpc_handled_of = _Children(self.rpc_handled)
        self.rpc_seconds_of = _Children(self.rpc_seconds)
        self._redis_trips_of = _Children(self.redis_trips)
        self._redis_seconds_of = _Children(self.redis_seconds)
        self._http: Any = None
        self._thread: threading.Thread | None = None
        self.address: tuple[str, int] | None = None
        """Where /metrics is served (host, port) once started."""

    # -- hooks -------------------------------------------------------------------------------------
    def interceptor(self) -> MetricsInterceptor:
        return MetricsInterceptor(self)

    def round_trip(self, op: str, seconds: float, ok: bool) -> None:
        """``SharedState.observer``."""
        self._redis_trips_of(op, "ok" if ok else "error").inc()
        self._redis_seconds_of(op).observe(seconds)

    def watch_store(self, state: SharedState) -> SharedState:
        """Count ``state``'s round trips (and those of the handles ``counted`` makes after)."""
        state.observer = self.round_trip
        return state

    def watch_streams(self, slots: _Slots) -> None:
        """Stream slots in use, their limit, and the streams refused for want of one."""
        r = self.registry
        Gauge(
            "ringlab_stream_slots_in_use",
            "Server streams (console, events) open now: each holds a server thread.",
            registry=r,
        ).set_function(lambda: slots.in_use)
        Gauge(
            "ringlab_stream_slots",
            "Server streams that may be open at once (--max-streams): one more is RESOURCE_EXHAUSTED.",
            registry=r,
        ).set_function(lambda: slots.limit)
        self.registry.register(
            _Callback(
                lambda: [
                    _counter(
                        "ringlab_stream_slots_refused",
                        "Streams refused (RESOURCE_EXHAUSTED) because every slot was in use.",
                        slots.refused,
                    )
                ]
            )
        )

    # -- serving ----------------------------------------------------------------------------------
    def start(self, host: str, port: int, *, explicit: bool = True) -> int | None:
        """Serve ``/metrics`` on ``host:port`` (0: a free port); returns the port.  A port asked
        for explicitly that cannot be had stops the service (SystemExit); the default one only
        logs a warning (None: no metrics)."""
        host = host.strip("[]") or "0.0.0.0"
        try:
            self._http, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            if explicit:
                raise SystemExit(
                    f"{self.service}: cannot serve metrics on {host}:{port} ({exc.strerror or exc}): set "
                    f"{METRICS_PORT_ENV} / --metrics-port to a free port, or off"
                ) from None
            log.warning(
                "%s: no metrics: cannot serve them on %s:%d (%s); set %s to a free port",
                self.service,
                host,
                port,
                exc.strerror or exc,
                METRICS_PORT_ENV,
            )
            return None
        bound = int(self._http.server_port)
        self.address = (host, bound)
        log.info("%s: metrics on http://%s:%d/metrics", self.service, host, bound)
        return bound

    @property
    def port(self) -> int | None:
        return None if self.address is None else self.address[1]

    def stop(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            http.shutdown()
            http.server_close()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None


class _Callback(Collector):
    """A collector whose metrics a function makes at each scrape (from counts the domain keeps)."""

    def __init__(self, make: Callable[[], Iterable[Metric]]) -> None:
        self._make = make

    def collect(self) -> Iterator[Metric]:
        yield from self._make()

    def describe(self) -> Iterator[Metric]:
        return iter(())  # made at each scrape: nothing to check for duplicates ahead


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _code_of(context: grpc.ServicerContext) -> grpc.StatusCode | None:
    """The status ``abort`` or ``set_code`` gave the call (None: none yet).  ``code()`` is grpcio's
    (1.38 on) though its type stubs do not declare it."""
    code = getattr(context, "code", None)
    value = code() if callable(code) else None
    return value if isinstance(value, grpc.StatusCode) else None


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts and times every call by method and status code.  Installed first (outermost), so a
    call refused by the token or role check counts too, with its UNAUTHENTICATED or
    PERMISSION_DENIED."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.m = metrics

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:  # no such method (any name a client sends: not a label)
            self.m.rpc_handled_of("unknown", "unknown", "UNIMPLEMENTED").inc()
            return None
        service, method = _split(handler_call_details.method)
        m = self.m

        def done(context: grpc.ServicerContext, started: float, failed: str) -> None:
            code = _code_of(context)
            name = code.name if code is not None else (failed or "OK")
            m.rpc_handled_of(service, method, name).inc()
            m.rpc_seconds_of(service, method, name).observe(time.perf_counter() - started)

        if handler.unary_unary is not None:
            inner = handler.unary_unary

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                m.rpc_started_of(service, method).inc()
                started, failed = time.perf_counter(), "UNKNOWN"
                try:
                    response = inner(request, context)
                    failed = ""
                    return response
                finally:
                    done(context, started, failed)

            counted: grpc.RpcMethodHandler[Any, Any] = handler._replace(unary_unary=unary)  # type: ignore[attr-defined]
            return counted
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                m.rpc_started_of(service, method).inc()
                started, failed = time.perf_counter(), "UNKNOWN"
                try:
                    yield from inner_stream(request, context)
                    failed = ""
                except GeneratorExit:  # closed before its end: the caller cancelled or went away
                    failed = "CANCELLED"
                    raise
                finally:
                    done(context, started, failed)

            streamed: grpc.RpcMethodHandler[Any, Any] = handler._replace(unary_stream=stream)  # type: ignore[attr-defined]
            return streamed
        return handler  # streaming requests: no Ringlab method takes one


# -- the hypervisor ------------------------------------------------------------------------------------
class DriverMetrics(DriverObserver):
    """What the hypervisor's pCPU drivers report (``ringlab.hypervisor.pcpu_driver``), as metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.exits = Counter(
            "ringlab_vm_exits_total",
            "Exits the hypervisor handled, by VM (its name), technique and reason (the technique's "
            "own terms: trap, hypercall, a VMX exit reason, a bt callout or translation miss, ...); "
            "counted when the slice that took them is committed, so for a VM that ran through one "
            "hypervisor the sum over reasons equals its exits in GetStats.",
            ["vm", "technique", "reason"],
            registry=r,
        )
        self.switches = Counter(
            "ringlab_world_switches_total",
            "World switches (RunVcpu calls to a pCPU), by pCPU and technique.",
            ["pcpu", "technique"],
            registry=r,
        )
        self.switch_seconds = Histogram(
            "ringlab_world_switch_seconds",
            "How long one world switch took, the RunVcpu round trip as the hypervisor's driver sees "
            "it (the guest's run on the pCPU included), by pCPU.",
            ["pcpu"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.slice_seconds = Histogram(
            "ringlab_slice_seconds",
            "Host seconds a slice held its pCPU (what the VM is charged), by technique and how the "
            "slice ended (preempted, idle, ended, lost).",
            ["technique", "ended"],
            buckets=SLICE_SECONDS_BUCKETS,
            registry=r,
        )
        self.slice_instructions = Histogram(
            "ringlab_slice_instructions",
            "Guest instructions a slice retired (slices are granted in guest instructions), by "
            "technique and how the slice ended.",
            ["technique", "ended"],
            buckets=SLICE_INSTRUCTION_BUCKETS,
            registry=r,
        )
        self.busy = Counter(
            "ringlab_pcpu_busy_seconds_total",
            "Host seconds each pCPU spent running slices for this hypervisor: rate() is its "
            "utilisation (0-1).",
            ["pcpu"],
            registry=r,
        )
        self.scheduler = Counter(
            "ringlab_pcpu_scheduler_seconds_total",
            "Host seconds this hypervisor spent deciding what each pCPU runs next.",
            ["pcpu"],
            registry=r,
        )
        self.decisions = Counter(
            "ringlab_scheduler_decisions_total",
            "Scheduling decisions, by pCPU and outcome: granted (a VM got the pCPU), idle (none "
            "could run), stale (the store refused it: the entries changed since they were read).",
            ["pcpu", "outcome"],
            registry=r,
        )
        self.refills = Counter(
            "ringlab_scheduler_refills_total",
            "Credit refills (no eligible VM had credit left: every live VM was refilled by weight).",
            registry=r,
        )
        self._switch_seconds_of = _Children(self.switch_seconds)
        self._scheduler_of = _Children(self.scheduler)  # an idle pCPU decides every 10 ms
        self._decisions_of = _Children(self.decisions)
        self._lock = threading.Lock()
        self._series: dict[str, set[tuple[str, str, str]]] = {}
        """VM id -> the (name, technique, reason) label sets of its exits, for ``forget_vm``."""

    def world_switch(self, pcpu: str, seconds: float) -> None:
        self._switch_seconds_of(pcpu).observe(seconds)

    def slice_ended(self, report: SliceReport) -> None:
        technique = report.technique or "unknown"
        self.switches.labels(report.pcpu, technique).inc(report.switches)
        self.slice_seconds.labels(technique, report.ended).observe(report.seconds)
        self.slice_instructions.labels(technique, report.ended).observe(report.instructions)
        self.busy.labels(report.pcpu).inc(report.seconds)
        if report.committed and report.exits:
            with self._lock:
                series = self._series.setdefault(report.vm, set())
                for reason, count in report.exits.items():
                    series.add((report.name, technique, reason))
                    self.exits.labels(report.name, technique, reason).inc(count)

    def decided(self, pcpu: str, chosen: str | None, applied: bool, refilled: bool, seconds: float) -> None:
        self._scheduler_of(pcpu).inc(seconds)
        outcome = "stale" if not applied else ("granted" if chosen else "idle")
        self._decisions_of(pcpu, outcome).inc()
        if applied and refilled:
            self.refills.inc()

    def forget_vm(self, vm: str) -> None:
        """The VM with id ``vm`` was destroyed: drop its exit series (so that they do not pile
        up over a long session, and a name used again starts from zero)."""
        with self._lock:
            for labels in self._series.pop(vm, ()):
                with contextlib.suppress(KeyError):
                    self.exits.remove(*labels)


class _Deployment(Collector):
    """The deployment as Redis holds it, read at each scrape (four round trips, with commands the
    hypervisor's Redis user may run): every VM's credit, share, CPU time, weight and status;
    every pCPU's liveness.  The same in every hypervisor replica (take max, not sum, across
    replicas)."""

    def __init__(self, state: SharedState) -> None:
        self.state = state

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        up = "ringlab_store_up", "1 if this scrape could read the deployment's state from Redis."
        try:
            families = self._read()
        except Exception as exc:
            log.warning("metrics: cannot read the deployment from Redis: %s", exc)
            yield _gauge(*up, 0)
            return
        yield _gauge(*up, 1)
        yield from families

    def _read(self) -> list[Metric]:
        _version, entries = self.state.sched_snapshot()
        definitions = self.state.vm_definitions(sorted(entries, key=lambda vm: (len(vm), vm)))
        pcpus = self.state.pcpus()
        vm = ["vm"]
        info = GaugeMetricFamily(
            "ringlab_vm_info",
            "One per VM (value 1): its name (the vm label of every VM metric), id and definition.",
            labels=["vm", "vm_id", "technique", "kernel", "workload"],
        )
        credit = GaugeMetricFamily(
            "ringlab_vm_credit_seconds",
            "A VM's credit in the credit scheduler (host seconds of pCPU it may still use before "
            "the next refill; negative: it overran).",
            labels=vm,
        )
        share = GaugeMetricFamily(
            "ringlab_vm_cpu_share_ratio",
            "A VM's share of the pCPU time charged to every VM so far (0-1), as GetStats gives it.",
            labels=vm,
        )
        cpu = CounterMetricFamily(
            "ringlab_vm_cpu_seconds",
            "Host seconds of pCPU charged to a VM (its slices, exits included).",
            labels=vm,
        )
        weight = GaugeMetricFamily("ringlab_vm_weight", "A VM's scheduler weight.", labels=vm)
        total = sum(float(e.get("cpu_seconds", 0.0)) for e in entries.values())
        statuses: dict[str, int] = {}
        for vm_id, entry in entries.items():
            status = str(entry.get("status", "unknown"))
            statuses[status] = statuses.get(status, 0) + 1
            definition = definitions.get(vm_id)
            if definition is None:
                continue  # destroyed between the two reads
            name = str(definition.get("name", vm_id))
            info.add_metric(
                [
                    name,
                    vm_id,
                    str(definition.get("technique", "")),
                    str(definition.get("kernel", "")),
                    str(definition.get("workload", "")),
                ],
                1,
            )
            seconds = float(entry.get("cpu_seconds", 0.0))
            credit.add_metric([name], float(entry.get("credit", 0.0)))
            share.add_metric([name], seconds / total if total else 0.0)
            cpu.add_metric([name], seconds)
            weight.add_metric([name], float(entry.get("weight", 256)))
        vms = GaugeMetricFamily(
            "ringlab_vms", "VMs in the deployment by scheduler status.", labels=["status"]
        )
        for status, count in sorted(statuses.items()):
            vms.add_metric([status], count)
        alive = GaugeMetricFamily(
            "ringlab_pcpu_up",
            "1 for a registered pCPU whose heartbeat is current, 0 otherwise.",
            labels=["pcpu"],
        )
        for pcpu, (_address, live) in sorted(pcpus.items()):
            alive.add_metric([pcpu], 1 if live else 0)
        return [info, credit, share, cpu, weight, vms, alive]


class HypervisorMetrics(ServiceMetrics):
    """The hypervisor's: every service's, its drivers' (``driver``, the ``DriverObserver`` to
    hand ``DriverManager``) and the deployment's state (``watch_deployment``)."""

    def __init__(self) -> None:
        super().__init__("hypervisor")
        self.driver = DriverMetrics(self.registry)

    def watch_deployment(self, state: SharedState) -> None:
        self.registry.register(_Deployment(state))


# -- the cpu service -----------------------------------------------------------------------------------
class _CpuCounts(Protocol):
    runs: int
    cache_reloads: int

    def cached(self) -> int: ...


class CpuMetrics(ServiceMetrics):
    """The cpu service's: every service's, and its runs, commits and cache."""

    def __init__(self) -> None:
        super().__init__("cpu")
        r = self.registry
        self.run_seconds = Histogram(
            "ringlab_vcpu_run_seconds",
            "Host seconds one RunVcpu spent running guest code (the rest of the call is the sync, "
            "the commit and gRPC).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.retired = Counter(
            "ringlab_vcpu_retired_instructions_total", "Guest instructions this pCPU retired.", registry=r
        )
        self.commit_seconds = Histogram(
            "ringlab_commit_seconds",
            "How long a commit took (the fenced commit script in Redis, one round trip), by outcome: "
            "applied, refused (a stale lease: paused, stopped, destroyed or granted again), error.",
            ["outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.commit_pages = Counter(
            "ringlab_commit_pages_total",
            "Guest pages commits wrote to Redis (only those that changed are sent).",
            registry=r,
        )

    def identify(self, pcpu: str, address: str) -> None:
        """Which pCPU this service is (set once it knows its id and address)."""
        Info(
            "ringlab_pcpu", "The pCPU this cpu service is: its id and address.", registry=self.registry
        ).info({"pcpu": pcpu, "address": address})

    def watch_servicer(self, servicer: _CpuCounts) -> None:
        """The counts the cpu servicer keeps: runs, cache reloads, VMs cached."""

        def make() -> list[Metric]:
            return [
                _counter("ringlab_vcpu_runs", "RunVcpu calls this pCPU ran.", servicer.runs),
                _counter(
                    "ringlab_vcpu_cache_reloads",
                    "VM contexts this pCPU loaded from Redis (its cache did not hold the generation asked for).",
                    servicer.cache_reloads,
                ),
                _gauge("ringlab_vcpu_cached_vms", "VM contexts this pCPU keeps cached.", servicer.cached()),
            ]

        self.registry.register(_Callback(make))

    def committed(self, outcome: str, seconds: float, pages: int) -> None:
        self.commit_seconds.labels(outcome).observe(seconds)
        if outcome == "applied":
            self.commit_pages.inc(pages)

    def ran(self, seconds: float, retired: int) -> None:
        self.run_seconds.observe(seconds)
        self.retired.inc(retired)


# -- a guest --------------------------------------------------------------------------------------------
class GuestMetrics(ServiceMetrics):
    """A guest's: every service's, and which VM it owns."""

    def __init__(
        self, guest: str, technique: str, kernel: str, workload: str, owns: Callable[[], bool]
    ) -> None:
        super().__init__("guest")
        r = self.registry
        Info("ringlab_guest", "The guest OS this service is and the VM it owns.", registry=r).info(
            {"vm": guest, "technique": technique, "kernel": kernel, "workload": workload}
        )
        Gauge(
            "ringlab_guest_vm_created",
            "1 once the hypervisor has created (or found) this guest's VM.",
            registry=r,
        ).set_function(lambda: 1 if owns() else 0)
