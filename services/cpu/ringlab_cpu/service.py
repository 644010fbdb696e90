"""The cpu service: run a vCPU until an exit or the end of its slice (KVM_RUN), then say why.

It does only what hardware does: it runs guest code on the RL-32 core with the controls (the
VMCS, the intercepts) and the tables the hypervisor installed, and returns at every exit.  Each
call carries the vCPU context both ways (``ringlab.machine.context``): the hypervisor's changes
in, this run's changes out, so the hypervisor handles every exit on its own copy.

It keeps each VM's context (registers, memory, compiled blocks) cached between slices, tagged
with the commit generation it came from.  The hypervisor names the generation it believes is
the latest in every request, so the pCPU knows its cache is stale without asking Redis; only a
miss costs a load (one MULTI/EXEC).  Commits are fenced by the grant's token in one Lua script.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from collections import OrderedDict
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import grpc

from ringlab.hypervisor import STOP_STATUS
from ringlab.machine import Budget, Cpu, CpuState, Exit, Idle, Memory
from ringlab.machine.context import ContextMismatch, apply_delta, take_delta, track
from ringlab.machine.faults import Fault
from ringlab.machine.p2m import P2M
from ringlab.rpc import ServiceConfig, ServiceServer, add_service_flags, build_server, config_from_args
from ringlab.rpc.convert import (
    MAX_RUN_BUDGET,
    InvalidSync,
    check_vmm_record,
    check_vmm_statistics,
    controls_from_proto,
    delta_from_proto,
    delta_to_proto,
    exit_to_proto,
    guest_stats_to_proto,
    stats_from_json,
    stats_to_json,
    tc_report_to_proto,
    tc_run_from_proto,
)
from ringlab.rpc.errors import InvalidField
from ringlab.rpc.metrics import CpuMetrics, add_metrics_flag
from ringlab.rpc.tracing import (
    NO_SPAN,
    OFF_TRACING,
    Span,
    Tracing,
    add_tracing_flag,
    check_tracing_flag,
    configure_tracing,
)
from ringlab.store import Commit, SharedState, StaleLease, WrongState
from ringlab.v1 import cpu_pb2, cpu_pb2_grpc
from ringlab.vmm.translated import Executor, TcReport, TcRun, ToVmm

__all__ = ["CpuServicer", "main", "serve"]

log = logging.getLogger("ringlab.cpu")

CACHE_SIZE = 64
ZERO_PAGE = bytes(4096)
_SLICE_END = (Budget, Idle)
"""A run that ends so has nothing left for the hypervisor to handle: it may commit right away."""


@dataclass
class CachedVcpu:
    cpu: Cpu
    generation: int
    """The commit this context started from (or last committed)."""
    token: int
    """The grant that has been running it since then."""
    clean: bool = True
    """No progress since ``generation``: any holder of that generation may use it."""
    committed: dict[int, bytes] = field(default_factory=dict)
    """Each page as Redis holds it: a page written since but equal again is not sent (most of
    a slice's dirty pages are stacks and counters that a commit would resend unchanged)."""
    translated: Executor | None = None
    """bt: the translations the hypervisor installed here, and the virtual CPU they work on."""


class CpuServicer(cpu_pb2_grpc.CpuServicer):
    def __init__(
        self,
        state: SharedState,
        pcpu: str,
        address: str,
        metrics: CpuMetrics | None = None,
        tracing: Tracing = OFF_TRACING,
    ) -> None:
        self.tracing = tracing
        """Spans of the core's runs and of the commits (``ringlab.rpc.tracing``; off by default)."""
        self.state = state
        self.pcpu = pcpu
        self.address = address
        self._cache: OrderedDict[str, CachedVcpu] = OrderedDict()
        self._lock = threading.Lock()  # one pCPU runs one vCPU at a time
        self.runs = 0
        self.cache_reloads = 0
        self.metrics = metrics

    def cached(self) -> int:
        """How many VM contexts the cache holds."""
        return len(self._cache)

    # -- the cache -------------------------------------------------------------------------------
    def _context(self, vm: str, token: int, generation: int) -> tuple[CachedVcpu, bool]:
        cached = self._cache.get(vm)
        if cached is not None and cached.generation == generation and (cached.clean or cached.token == token):
            self._cache.move_to_end(vm)
            cached.token = token
            return cached, False
        ctx = self.state.load_vcpu(vm)
        if ctx.generation != generation:
            self._cache.pop(vm, None)
            raise WrongState(
                f"VM {vm}: commit {generation}, which the caller expects, is not the VM's latest; "
                "reload the VM's state and run again"
            )
        memory = Memory(int(ctx.definition.get("host_memory_size", ctx.memory_size)))
        for number, blob in ctx.pages.items():
            memory.load(number << 12, blob)
        memory.clear_dirty()
        cpu = Cpu(memory, CpuState.from_dict(ctx.state), fast=True)
        stats_from_json(ctx.stats, cpu.stats)
        track(cpu)
        cached = CachedVcpu(cpu, ctx.generation, token, committed=dict(ctx.pages))
        self._cache[vm] = cached
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        self.cache_reloads += 1
        return cached, True

    # -- RPCs ------------------------------------------------------------------------------------
    def RunVcpu(
        self, request: cpu_pb2.RunVcpuRequest, context: grpc.ServicerContext
    ) -> cpu_pb2.RunVcpuResponse:
        if not request.vm:
            raise InvalidField("vm", "RunVcpu needs the VM id in 'vm'")
        if not request.vm.isdigit() or len(request.vm) > 20:
            raise InvalidField(
                "vm", f"vm {request.vm[:40]!r} is not a VM id (digits, as the hypervisor names it)"
            )
        if request.lease_token <= 0:
            raise InvalidField(
                "lease_token", "RunVcpu needs the fencing token of a grant in 'lease_token' (> 0)"
            )
        if request.budget > MAX_RUN_BUDGET:
            raise InvalidField(
                "budget", f"budget {request.budget} is above the per-call maximum {MAX_RUN_BUDGET}"
            )
        if request.HasField("commit"):
            _check_commit(request.commit)
        try:
            sync = delta_from_proto(request.sync) if request.HasField("sync") else None
            tc = tc_run_from_proto(request.tc) if request.HasField("tc") else None
            controls = controls_from_proto(request.controls)
        except InvalidSync as exc:
            raise InvalidField(exc.field, f"VM {request.vm}: {exc}") from None
        with self._lock:
            self.runs += 1
            cached, reloaded = self._context(request.vm, request.lease_token, request.generation)
            cpu = cached.cpu
            # The second stage first: setting it flushes the TLB, which the sync then loads (a
            # reloaded VM's TLB is the hypervisor's, not an empty one).
            if request.nested_ram_size > cpu.memory.size:
                raise InvalidField(
                    "nested_ram_size",
                    f"nested_ram_size {request.nested_ram_size} is more than the VM's "
                    f"{cpu.memory.size}-byte host memory",
                )
            self._second_stage(cpu, request.nested_ram_size)
            if sync is not None:
                try:
                    apply_delta(cpu, sync)
                except ContextMismatch as exc:
                    self._cache.pop(request.vm, None)
                    raise WrongState(
                        f"VM {request.vm}: {exc} (this pCPU reloaded commit {cached.generation}); "
                        "restart the slice from that commit"
                    ) from None
                except (ValueError, KeyError, TypeError, OverflowError, IndexError) as exc:
                    self._cache.pop(request.vm, None)
                    raise InvalidField(
                        "sync", f"VM {request.vm}: the sync cannot be applied: {exc}"
                    ) from None
                cached.clean = False
            if cpu.controls != controls:
                cpu.controls = controls
            started = time.perf_counter()
            before = cpu.stats.retired
            report = None
            with self._core_span(request, tc is not None, reloaded) as span:
                if tc is not None:  # bt: run the guest kernel's translation
                    exit, report = self._run_translated(request.vm, tc, request.budget, cached)
                else:
                    exit = cpu.run(request.budget) if request.budget else Budget()
                if span.is_recording():
                    span.set_attribute("ringlab.exit.reason", exit.reason.value)
                    span.set_attribute("ringlab.retired", cpu.stats.retired - before)
                    if report is not None and report.event is not None:
                        span.set_attribute("ringlab.vmm_call", str(report.event))
            run_seconds = time.perf_counter() - started
            if self.metrics is not None:
                self.metrics.ran(run_seconds, cpu.stats.retired - before)
            if request.budget:
                cached.clean = False
            generation = cached.generation
            vmm_turn = report is not None and report.event is not None
            if request.HasField("commit") and (
                request.budget == 0 or (isinstance(exit, _SLICE_END) and not vmm_turn)
            ):
                generation = self._commit(request, cached)
            s = cpu.state
            return cpu_pb2.RunVcpuResponse(
                exit=exit_to_proto(exit),
                registers={k: int(v) for k, v in s.to_dict().items()},
                stats=guest_stats_to_proto(cpu.stats, s.tsc),
                generation=generation,
                cache_reloaded=reloaded,
                retired=cpu.stats.retired - before,
                run_seconds=run_seconds,
                sync=delta_to_proto(take_delta(cpu, before)),
                tc=None if report is None else tc_report_to_proto(report),
            )

    def _core_span(
        self, request: cpu_pb2.RunVcpuRequest, translated: bool, reloaded: bool
    ) -> AbstractContextManager[Span]:
        """The ``core run`` span of a run (none for a commit that runs nothing)."""
        if not request.budget or not self.tracing.enabled:
            return NO_SPAN
        return self.tracing.span(
            "core run",
            {
                "ringlab.vm.id": request.vm,
                "ringlab.pcpu": self.pcpu,
                "ringlab.run.budget": request.budget,
                "ringlab.run.translated": translated,
                "ringlab.cache_reloaded": reloaded,
            },
        )

    def _commit_span(
        self, request: cpu_pb2.RunVcpuRequest, cached: CachedVcpu, pages: int
    ) -> AbstractContextManager[Span]:
        """The ``commit`` span: the slice's state to Redis."""
        if not self.tracing.enabled:
            return NO_SPAN
        return self.tracing.span(
            "commit",
            {
                "ringlab.vm.id": request.vm,
                "ringlab.pcpu": self.pcpu,
                "ringlab.commit.pages": pages,
                "ringlab.commit.base_generation": cached.generation,
                "ringlab.commit.status": request.commit.status,
            },
        )

    @staticmethod
    def _run_translated(vm: str, tc: TcRun, budget: int, cached: CachedVcpu) -> tuple[Exit, TcReport]:
        """Run the translation the hypervisor installed until it exits, ends the budget or calls
        the VMM (the report says which call)."""
        if cached.translated is None:
            cached.translated = Executor(cached.cpu)
        executor = cached.translated
        try:
            executor.apply(tc)
        except (Fault, ValueError, KeyError, IndexError) as exc:
            raise InvalidField("tc.install", f"VM {vm}: a block to install cannot be built ({exc})") from None
        outcome = executor.run(budget) if budget else Budget()
        exit = Budget() if isinstance(outcome, ToVmm) else outcome
        return exit, executor.report(outcome)

    @staticmethod
    def _second_stage(cpu: Cpu, ram_size: int) -> None:
        """Nested paging: the MMU walks the guest's tables, then the P2M the hypervisor names."""
        current = cpu.mmu.second_stage
        if ram_size == 0:
            if current is not None:
                cpu.mmu.second_stage = None
                cpu.flush_tlb()
        elif not isinstance(current, P2M) or current.ram_size != ram_size:
            cpu.mmu.second_stage = P2M(ram_size)
            cpu.flush_tlb()

    def _commit(self, request: cpu_pb2.RunVcpuRequest, cached: CachedVcpu) -> int:
        cpu = cached.cpu
        memory = cpu.memory
        c = request.commit
        stats = stats_to_json(cpu.stats) | _json(c.stats_json, "commit.stats_json")
        changed = {}
        for number in memory.dirty_pages():
            page = memory.page(number)
            if cached.committed.get(number, ZERO_PAGE) != page:  # absent from Redis = zeros
                changed[number] = page
        commit = Commit(
            vm=request.vm,
            token=request.lease_token,
            base_generation=cached.generation,
            state=cpu.state.to_dict(),
            stats=stats,
            vmm=_json(c.vmm_state, "commit.vmm_state"),
            console=c.console,
            status=c.status,
            code=c.code if c.HasField("code") else None,
            detail=c.detail,
            pages=changed,
        )
        started, outcome = time.perf_counter(), "error"
        with self._commit_span(request, cached, len(changed)) as span:
            try:
                generation = self.state.commit(commit)
                outcome = "applied"
                span.set_attribute("ringlab.commit.generation", generation)
            except StaleLease:
                outcome = "refused"
                self._cache.pop(request.vm, None)  # a stale holder's progress must never be reused
                raise
            finally:
                span.set_attribute("ringlab.commit.outcome", outcome)
                if self.metrics is not None:
                    self.metrics.committed(outcome, time.perf_counter() - started, len(changed))
        memory.clear_dirty()
        cached.committed.update(changed)
        cached.generation, cached.clean = generation, True
        return generation

    def DescribeCpu(
        self, request: cpu_pb2.DescribeCpuRequest, context: grpc.ServicerContext
    ) -> cpu_pb2.CpuInfo:
        return cpu_pb2.CpuInfo(
            pcpu=self.pcpu,
            address=self.address,
            cached_vms=list(self._cache),
            runs=self.runs,
            cache_reloads=self.cache_reloads,
            redis_round_trips=self.state.round_trips,
        )

    def EvictVcpu(
        self, request: cpu_pb2.EvictVcpuRequest, context: grpc.ServicerContext
    ) -> cpu_pb2.EvictVcpuResponse:
        with self._lock:
            return cpu_pb2.EvictVcpuResponse(evicted=self._cache.pop(request.vm, None) is not None)

    def Echo(self, request: cpu_pb2.EchoRequest, context: grpc.ServicerContext) -> cpu_pb2.EchoResponse:
        return cpu_pb2.EchoResponse(payload=request.payload)


def _json(text: str, name: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidField(name, f"{name} is not JSON: {str(exc)[:100]}") from None
    if not isinstance(value, dict):
        raise InvalidField(name, f"{name} must be a JSON object")
    return value


END_STATUSES = frozenset(STOP_STATUS.values())
"""The ends a commit may record (``CommitRequest.status``), besides "" (none)."""
MAX_DETAIL = 4096


def _check_commit(c: cpu_pb2.CommitRequest) -> None:
    """The commit's own fields, checked before anything runs: what the hypervisor sends
    (``vm_copy.VmCopy.commit``) and no more."""
    if c.status and c.status not in END_STATUSES:
        raise InvalidField(
            "commit.status",
            f'commit.status {c.status[:40]!r}: one of {", ".join(sorted(END_STATUSES))}, or ""',
        )
    if len(c.detail) > MAX_DETAIL:
        raise InvalidField(
            "commit.detail", f"commit.detail of {len(c.detail)} characters: at most {MAX_DETAIL}"
        )
    try:
        check_vmm_record(_json(c.vmm_state, "commit.vmm_state"))
        check_vmm_statistics(_json(c.stats_json, "commit.stats_json"))
    except InvalidSync as exc:
        raise InvalidField(f"commit.{exc.field}", str(exc)) from None


def serve(
    config: ServiceConfig, *, metrics_port: str | None = None, tracing: str | None = None
) -> tuple[ServiceServer, CpuServicer]:
    """Start the pCPU server (returns once it listens) and its registration heartbeat, its
    metrics on the port ``metrics_port`` asks for (``--metrics-port``; None:
    ``RINGLAB_METRICS_PORT``, else the gRPC port + 1000), its spans where ``tracing`` says
    (``--tracing``; None: ``RINGLAB_TRACING``, else off)."""
    try:
        traced = configure_tracing("cpu", tracing, instance=config.pcpu)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    metrics = CpuMetrics()
    state = metrics.watch_store(SharedState.from_url(config.redis))
    holder: dict[str, CpuServicer] = {}

    def register(server: grpc.Server) -> None:
        holder["s"] = CpuServicer(state, config.pcpu, config.advertise, metrics, traced)
        cpu_pb2_grpc.add_CpuServicer_to_server(holder["s"], server)

    server = build_server(
        config,
        register,
        ["ringlab.v1.Cpu"],
        checks=[state.ping, lambda: state.pcpu_alive(config.pcpu)],
        metrics=metrics,
        metrics_port_setting=metrics_port,
        tracing=traced,
    )
    servicer = holder["s"]
    if config.listen.endswith(":0"):  # an ephemeral port: advertise the one we got
        host = config.advertise.rsplit(":", 1)[0]
        servicer.address = f"{host}:{server.port}"
        if config.pcpu.endswith("-0"):
            servicer.pcpu = f"{config.pcpu[:-2]}-{server.port}"
    metrics.identify(servicer.pcpu, servicer.address)
    metrics.watch_servicer(servicer)

    def heartbeat() -> None:
        while not server.stopping.is_set():
            try:
                state.register_pcpu(servicer.pcpu, servicer.address)
            except Exception:
                log.warning("cannot reach Redis at %s to register pCPU %s", config.redis, servicer.pcpu)
            server.stopping.wait(1.0)

    try:
        state.register_pcpu(servicer.pcpu, servicer.address)
    except Exception:
        log.warning("Redis at %s is not reachable yet", config.redis)
    threading.Thread(target=heartbeat, name="heartbeat", daemon=True).start()
    server.start()
    return server, servicer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ringlab-cpu", description="Serve one Ringlab pCPU over gRPC.")
    add_service_flags(parser, "cpu")
    add_metrics_flag(parser)
    add_tracing_flag(parser)
    args = parser.parse_args(argv)
    check_tracing_flag(parser, args.tracing)
    config = config_from_args(args, "cpu")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s cpu %(levelname)s %(message)s")
    server, servicer = serve(config, metrics_port=args.metrics_port, tracing=args.tracing)
    server.install_signal_handlers()
    log.info("pCPU %s serving on %s (Redis %s)", servicer.pcpu, servicer.address, config.redis)
    print(f"READY cpu {servicer.address} {servicer.pcpu}", flush=True)
    server.wait()
    return 0
