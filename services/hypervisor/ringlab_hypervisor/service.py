"""The hypervisor's gRPC API: a thin servicer over ``SharedState`` (VMs, consoles, events,
statistics), and the runtime's pCPU drivers (``ringlab.hypervisor.DriverManager``) plugged into
the deployment: the store, and each pCPU through ``GrpcPcpu``."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from ringlab.errors import UsageError
from ringlab.guestos import NO_KERNEL
from ringlab.hypervisor import (
    DEFAULT_CONSOLE_QUOTA,
    DEFAULT_FLIGHT_SLICES,
    MAX_MEMORY,
    RESULT_REASONS,
    Defined,
    DriverManager,
    LimitExceeded,
    Limits,
    Runtimes,
    UnbootableKernel,
    boot,
    define,
    define_restored,
    differences,
    is_vm_ref,
    plain_result,
    simulated_cycles,
    snapshot_at,
)
from ringlab.hypervisor.migration import (
    DEFAULT_BANDWIDTH,
    DEFAULT_MAX_ROUNDS,
    DEFAULT_TARGET_DOWNTIME,
    MigrationFailed,
    MigrationOptions,
    memory_digest,
    migrate,
)
from ringlab.rpc import (
    ServiceConfig,
    ServiceServer,
    StreamSlots,
    add_service_flags,
    build_server,
    config_from_args,
    open_channel,
)
from ringlab.rpc.config import byte_count, env_default
from ringlab.rpc.convert import (
    KERNELS,
    TECHNIQUES,
    InvalidSync,
    check_vmm_statistics,
    guest_stats_to_proto,
    stats_from_json,
)
from ringlab.rpc.errors import InvalidField
from ringlab.rpc.metrics import HypervisorMetrics, add_metrics_flag
from ringlab.rpc.tracing import TracingObserver, add_tracing_flag, check_tracing_flag, configure_tracing
from ringlab.sched import CreditPolicy, Entry
from ringlab.sched.credit import TERMINAL
from ringlab.store import AlreadyExists, Exhausted, InvalidRequest, SharedState, VmNotFound, WrongState
from ringlab.store.state import check_cursor
from ringlab.v1 import common_pb2, cpu_pb2, cpu_pb2_grpc, hypervisor_pb2, hypervisor_pb2_grpc
from ringlab.vmm.snapshot import SnapshotError, encode_snapshot, parse_snapshot
from ringlab_hypervisor.migration_link import GrpcDestination, Incoming
from ringlab_hypervisor.pcpu_link import GrpcPcpu

__all__ = ["HypervisorServicer", "main", "serve"]

ENDED_BY_ITSELF = TERMINAL - {"stopped"}
"""How a VM ends in the slice it runs (not by StopVm): that slice's record says ``ended``."""
FLIGHT_FLUSH_SECONDS = 2.0
"""How long GetFlightRecord waits for the record of the slice a VM ended in."""

log = logging.getLogger("ringlab.hypervisor")

_TECHNIQUE_NAMES = {v: k for k, v in TECHNIQUES.items()}
_KERNEL_NAMES = {v: k for k, v in KERNELS.items()}
STATUSES = {
    "created": hypervisor_pb2.VM_STATUS_CREATED,
    "runnable": hypervisor_pb2.VM_STATUS_RUNNABLE,
    "running": hypervisor_pb2.VM_STATUS_RUNNING,
    "blocked": hypervisor_pb2.VM_STATUS_BLOCKED,
    "paused": hypervisor_pb2.VM_STATUS_PAUSED,
    "stopped": hypervisor_pb2.VM_STATUS_STOPPED,
    "poweroff": hypervisor_pb2.VM_STATUS_POWEROFF,
    "halted": hypervisor_pb2.VM_STATUS_HALTED,
    "shutdown": hypervisor_pb2.VM_STATUS_SHUTDOWN,
    "limit": hypervisor_pb2.VM_STATUS_LIMIT,
}
END_EVENTS = frozenset({"ended", "stopped", "destroyed"})
"""The events after which a VM runs no more (until a StartVm boots it afresh)."""
TRAILING_EVENTS_SECONDS = 2.0
"""A followed stream of one VM ends with the "descheduled" event of the slice the VM ended in,
which its pCPU reports after the "ended" event (in its next grant); when none comes within this
long (the VM was not running, or its pCPU died), the stream ends without it."""


def _ref(ref: str, field: str = "vm") -> str:
    """``ref`` if it could name a VM (a name or an id), else INVALID_ARGUMENT naming ``field``."""
    if not ref:
        raise InvalidField(field, f"name the VM in '{field}': give its name or id (see 'ringlab vm list')")
    if not is_vm_ref(ref):
        raise InvalidField(
            field,
            f"{field} {ref[:70]!r} is neither a VM name nor an id (1-63 letters, digits, '.', '_' or "
            "'-', starting with a letter or digit): see 'ringlab vm list'",
        )
    return ref


def _cursor(after: str) -> str:
    """``after`` if it is a cursor this deployment hands out, else INVALID_ARGUMENT (``after``)."""
    try:
        return check_cursor(after)
    except InvalidRequest as exc:
        raise InvalidField("after", str(exc)) from None


def _defined(request: hypervisor_pb2.CreateVmRequest, limits: Limits) -> Defined:
    """The VM definition a CreateVm request asks for, validated by the domain (hypervisor.proto,
    CreateVm) against the deployment's ``limits``: the request's enums become names, unset fields
    their defaults."""
    if request.kernel == common_pb2.KERNEL_FLAVOUR_UNSPECIFIED:
        kernel = None
    else:  # an enum value this server does not know is named by its number
        kernel = _KERNEL_NAMES.get(request.kernel, str(request.kernel))
    try:
        return define(
            name=request.name,
            technique=_TECHNIQUE_NAMES.get(request.technique),
            nested_paging=request.nested_paging,
            kernel=kernel,
            workload=request.workload,
            defines=request.defines,
            image=request.image,
            memory_size=request.memory_size,
            weight=request.weight,
            cap=request.cap,
            max_instructions=request.max_instructions if request.HasField("max_instructions") else None,
            input=request.input,
            console_quota=request.console_quota,
            limits=limits,
        )
    except LimitExceeded as exc:
        raise Exhausted(str(exc)) from None
    except UnbootableKernel as exc:  # said in the protocol's names
        raise InvalidField(
            "kernel",
            f"kernel flavour {request.kernel} cannot boot workload {exc.workload!r}: choose "
            "KERNEL_FLAVOUR_STOCK or KERNEL_FLAVOUR_PARAVIRT (or leave it unspecified: paravirt "
            "under TECHNIQUE_PV, stock otherwise); KERNEL_FLAVOUR_NONE is for a raw image",
        ) from None


_ADDRESS = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\]):\d{1,5}$"
)
"""A destination's HOST:PORT (a host name, an IPv4 address or a bracketed IPv6 one)."""


class _Released:
    """The store as a migration's source uses it, releasing the VM as DestroyVm does."""

    def __init__(self, servicer: HypervisorServicer, vm: str) -> None:
        self._servicer = servicer
        state = servicer.state
        self.vm_record, self.vm_image, self.load_vcpu = state.vm_record, state.vm_image, state.load_vcpu
        self.sched_entry, self.control, self.add_event = state.sched_entry, state.control, state.add_event

    def destroy_vm(self, vm: str) -> bool:
        return self._servicer._destroy(vm)


class HypervisorServicer(hypervisor_pb2_grpc.HypervisorServicer):
    def __init__(
        self,
        state: SharedState,
        streams: StreamSlots,
        runtimes: Runtimes,
        token: str = "",
        limits: Limits | None = None,
        forget: Callable[[str], None] | None = None,
    ) -> None:
        self.state = state
        self.streams = streams
        self.runtimes = runtimes  # the drivers' copies of the VMs: a booted VM's first slice runs it
        self.token = token  # for the calls this service makes to the pCPUs
        self.limits = limits or Limits()
        self.forget = forget
        """Told the id of each VM destroyed (the metrics drop its series)."""
        self.incoming = Incoming()
        """The migrations coming in (ReceiveMigration)."""

    def _resolve(self, ref: str, field: str = "vm") -> str:
        return self.state.resolve(_ref(ref, field))

    # -- lifecycle --------------------------------------------------------------------------------
    def CreateVm(
        self, request: hypervisor_pb2.CreateVmRequest, context: grpc.ServicerContext
    ) -> hypervisor_pb2.Vm:
        defined = _defined(request, self.limits)
        definition = defined.definition
        existing = self.state.vm_by_name(request.name)
        if existing is not None:  # idempotent for the same definition only
            return self._existing(existing, definition, request.start)
        commit0 = boot(definition, defined.blob)  # the VM as its technique sets it up
        definition["host_memory_size"] = commit0.host_memory_size
        entry = Entry(
            status="runnable" if request.start else "created", weight=definition["weight"], cap=request.cap
        )
        created, vm = self.state.create_vm(
            request.name,
            definition,
            defined.blob,
            commit0.state,
            commit0.stats,
            entry.to_dict(),
            commit0.pages,
        )
        if not created:  # another client created the name meanwhile
            return self._existing(vm, definition, request.start)
        self.runtimes.adopt(vm, 0, commit0.copy)
        return self._vm(vm)

    def _existing(self, vm: str, wanted: dict[str, Any], start: bool) -> hypervisor_pb2.Vm:
        """The VM ``vm`` if its definition is ``wanted`` (started if asked and still created);
        else ALREADY_EXISTS naming what differs."""
        definition, _record = self.state.vm_record(vm)
        if "image_sha256" not in definition:  # a VM created before definitions carried it
            definition["image_sha256"] = hashlib.sha256(self.state.vm_image(vm)).hexdigest()
        diffs = differences(definition, wanted)
        if diffs:
            name = wanted["name"]
            raise AlreadyExists(
                f"VM {name!r} already exists with another definition ({'; '.join(diffs)}): destroy "
                f"it first (DestroyVm, 'ringlab vm destroy {name}') or choose another name"
            )
        if start and self.state.sched_entry(vm).get("status") == "created":
            self.state.control(vm, "start")
        return self._vm(vm)

    def _act(self, request: hypervisor_pb2.VmRef, action: str) -> hypervisor_pb2.Vm:
        vm = self._resolve(request.vm)
        self.state.control(vm, action)
        return self._vm(vm)

    def StartVm(self, request: hypervisor_pb2.VmRef, context: grpc.ServicerContext) -> hypervisor_pb2.Vm:
        vm = self._resolve(request.vm)
        if self.state.sched_entry(vm).get("status") in TERMINAL:
            self._reboot(vm)
        else:
            self.state.control(vm, "start")
        return self._vm(vm)

    def _reboot(self, vm: str) -> None:
        """Boot an ended VM afresh from its image (hypervisor.proto, StartVm)."""
        definition, _record = self.state.vm_record(vm)
        commit0 = boot(definition, self.state.vm_image(vm))  # a restored VM: from its snapshot
        entry = Entry(status="runnable", weight=int(definition["weight"]), cap=int(definition["cap"]))
        done, what = self.state.reboot_vm(
            vm, commit0.state, commit0.stats, entry.to_dict(), commit0.pages, commit0.console
        )
        if done:  # ``what`` is the boot number
            self.runtimes.adopt(vm, int(what), commit0.copy)
        else:  # started again meanwhile (by another StartVm): an ordinary start
            log.info("VM %s was %s, not ended, when rebooting it", vm, what)
            self.state.control(vm, "start")

    def PauseVm(self, request: hypervisor_pb2.VmRef, context: grpc.ServicerContext) -> hypervisor_pb2.Vm:
        return self._act(request, "pause")

    def ResumeVm(self, request: hypervisor_pb2.VmRef, context: grpc.ServicerContext) -> hypervisor_pb2.Vm:
        return self._act(request, "resume")

    def StopVm(self, request: hypervisor_pb2.VmRef, context: grpc.ServicerContext) -> hypervisor_pb2.Vm:
        return self._act(request, "stop")

    def DestroyVm(
        self, request: hypervisor_pb2.VmRef, context: grpc.ServicerContext
    ) -> hypervisor_pb2.DestroyVmResponse:
        return hypervisor_pb2.DestroyVmResponse(destroyed=self._destroy(self._resolve(request.vm)))

    def _destroy(self, vm: str) -> bool:
        """Forget ``vm`` here: the store's, the runtimes', the metrics' and the pCPUs' copies."""
        destroyed = self.state.destroy_vm(vm)
        self.runtimes.forget(vm)
        if self.forget is not None:
            self.forget(vm)
        for _pcpu, (address, alive) in self.state.pcpus().items():
            if alive:  # free the pCPUs' cached copies (best effort: a stale cache is never used)
                channel = open_channel(address, self.token)
                try:
                    cpu_pb2_grpc.CpuStub(channel).EvictVcpu(cpu_pb2.EvictVcpuRequest(vm=vm), timeout=2)
                except grpc.RpcError:
                    pass
                finally:
                    channel.close()
        return destroyed

    def ListVms(
        self, request: hypervisor_pb2.ListVmsRequest, context: grpc.ServicerContext
    ) -> hypervisor_pb2.ListVmsResponse:
        return hypervisor_pb2.ListVmsResponse(vms=self._vms())

    def DescribeVm(self, request: hypervisor_pb2.VmRef, context: grpc.ServicerContext) -> hypervisor_pb2.Vm:
        return self._vm(self._resolve(request.vm))

    def WaitVm(
        self, request: hypervisor_pb2.WaitVmRequest, context: grpc.ServicerContext
    ) -> hypervisor_pb2.VmResult:
        wait = request.timeout_seconds
        if math.isnan(wait) or wait < 0:
            raise InvalidField(
                "timeout_seconds",
                f"timeout_seconds {wait} is not a wait: give seconds (> 0), or 0 to wait as long as "
                "the call's deadline allows",
            )
        vm = self._resolve(request.vm)
        deadline = time.monotonic() + wait if 0 < wait < math.inf else None
        cursor = self.state.events_last_id()  # before the status is read: no end can slip between
        while True:
            record = self.state.vm_record(vm)[1]
            if record["status"] in TERMINAL:
                return self._result(vm)
            status = self.state.sched_entry(vm).get("status", record["status"])  # the live one
            if status == "created":  # nothing would ever end it
                raise WrongState(
                    f"VM {request.vm} was created but not started: start it with StartVm "
                    f"('ringlab vm start {request.vm}'), then wait"
                )
            left = 0.25 if deadline is None else min(0.25, deadline - time.monotonic())
            if left <= 0 or not context.is_active():
                raise WrongState(
                    f"VM {request.vm} is still {status} after the requested wait: wait longer "
                    "or check 'ringlab vm list'"
                )
            # Every end is an event (the commit that ends a VM adds it): block until the next
            # event, then look again - no polling, and no delay between the end and the answer.
            for event in self.state.events_read(cursor, block_ms=max(1, int(left * 1000))):
                cursor = event["cursor"]

    # -- streams ----------------------------------------------------------------------------------
    def StreamConsole(
        self, request: hypervisor_pb2.StreamConsoleRequest, context: grpc.ServicerContext
    ) -> Iterator[common_pb2.ConsoleChunk]:
        vm = self._resolve(request.vm)
        cursor = _cursor(request.after) if request.after else "0-0"
        with self.streams.hold():
            while context.is_active():
                chunks = self.state.console_read(vm, cursor, block_ms=250 if request.follow else None)
                for cursor, data in chunks:
                    yield common_pb2.ConsoleChunk(vm=vm, data=data, cursor=cursor)
                if not request.follow:
                    if not chunks:
                        return
                    continue
                ended = not chunks and self.state.vm_record(vm)[1]["status"] in TERMINAL
                if ended and not self.state.console_read(vm, cursor):
                    return

    def StreamEvents(
        self, request: hypervisor_pb2.StreamEventsRequest, context: grpc.ServicerContext
    ) -> Iterator[hypervisor_pb2.Event]:
        vm = self._resolve(request.vm) if request.vm else ""
        cursor = _cursor(request.after) if request.after else ("$" if request.follow else "0-0")
        with self.streams.hold():
            if cursor == "$":
                cursor = self.state.events_last_id()
            follow, checked = request.follow, time.monotonic()
            ending: float | None = None  # when this VM's end was seen (following one VM)
            while context.is_active():
                events = self.state.events_read(cursor, block_ms=250 if follow else None)
                matched = False
                for e in events:
                    cursor = e["cursor"]
                    if vm and e.get("vm") != vm:
                        continue
                    matched = True
                    kind = e.get("kind", "")
                    yield hypervisor_pb2.Event(
                        cursor=cursor,
                        kind=kind,
                        vm=e.get("vm", ""),
                        pcpu=e.get("pcpu", ""),
                        detail=e.get("detail", ""),
                        time=float(e.get("time") or 0),
                    )
                    if (
                        vm
                        and follow
                        and (kind == "destroyed" or (ending is not None and kind == "descheduled"))
                    ):
                        return  # following one VM: its last event is the stream's end
                    if vm and follow and kind in END_EVENTS and ending is None:
                        ending = time.monotonic()
                if not follow and not events:
                    return
                if ending is not None and time.monotonic() - ending >= TRAILING_EVENTS_SECONDS:
                    return  # no pCPU reported the slice it ended in (it was not running, or died)
                if vm and follow and ending is None and not matched and time.monotonic() - checked >= 0.25:
                    # It ended before this stream's cursor: what is left of it (the slice it ended
                    # in is reported by its pCPU's next grant) comes within the grace, then stop.
                    checked = time.monotonic()
                    if self._ended(vm):
                        ending = checked

    def _ended(self, vm: str) -> bool:
        try:
            return self.state.sched_entry(vm).get("status") in TERMINAL
        except VmNotFound:
            return True

    def GetStats(
        self, request: hypervisor_pb2.GetStatsRequest, context: grpc.ServicerContext
    ) -> hypervisor_pb2.StatsResponse:
        _version, entries = self.state.sched_snapshot()
        pcpus = []
        for pcpu, (address, alive) in sorted(self.state.pcpus().items()):
            st = self.state.pcpu_stats(pcpu)
            running = next((vm for vm, e in entries.items() if e.get("pcpu") == pcpu), "")
            pcpus.append(
                hypervisor_pb2.PcpuStats(
                    pcpu=pcpu,
                    address=address,
                    alive=alive,
                    busy_seconds=st.get("busy_seconds", 0.0),
                    scheduler_seconds=st.get("scheduler_seconds", 0.0),
                    slices=int(st.get("slices", 0)),
                    world_switches=int(st.get("world_switches", 0)),
                    running=running,
                    redis_round_trips=int(st.get("redis_round_trips", 0)),
                )
            )
        return hypervisor_pb2.StatsResponse(vms=self._vms(), pcpus=pcpus)

    def GetFlightRecord(
        self, request: hypervisor_pb2.FlightRecordRequest, context: grpc.ServicerContext
    ) -> hypervisor_pb2.FlightRecord:
        vm = self._resolve(request.vm)
        record, _ = self.state.vm_record(vm)
        self._await_last_slice(vm)
        records = self.state.flight_read(vm, request.slices)
        return hypervisor_pb2.FlightRecord(
            vm=vm, name=str(record.get("name", vm)), records_json=json.dumps(records, separators=(",", ":"))
        )

    def _await_last_slice(self, vm: str) -> None:
        """A VM that ended by itself: wait (at most ``FLIGHT_FLUSH_SECONDS``) for the record of the
        slice it ended in, which its pCPU's driver keeps just after the commit that ended it, so
        that a caller who saw the VM end (WaitVm) reads every exit it made."""
        if not self.limits.flight_slices:
            return
        if self.state.sched_entry(vm).get("status") not in ENDED_BY_ITSELF:
            return
        deadline = time.monotonic() + FLIGHT_FLUSH_SECONDS
        while time.monotonic() < deadline:
            slices = [r for r in self.state.flight_read(vm, 1) if r.get("kind") == "slice"]
            if slices and slices[-1].get("why") == "ended":
                return
            time.sleep(0.05)

    # -- snapshots ---------------------------------------------------------------------------------
    def SnapshotVm(
        self, request: hypervisor_pb2.VmRef, context: grpc.ServicerContext
    ) -> hypervisor_pb2.VmSnapshot:
        vm = self._resolve(request.vm)
        status = self.state.sched_entry(vm).get("status")
        if status in TERMINAL:
            raise WrongState(
                f"VM {request.vm!r} has ended ({status}): nothing is left to run, so there is nothing "
                "to snapshot (StartVm boots it afresh)"
            )
        definition, _record = self.state.vm_record(vm)
        blob = self.state.vm_image(vm)
        state, stats, _vmm, _generation = self.state.vm_vcpu_summary(vm)
        retired = int(stats.get("retired", 0))
        data = encode_snapshot(snapshot_at(definition, blob, retired))
        return hypervisor_pb2.VmSnapshot(
            vm=vm, snapshot=data, retired=retired, virtual_time=int(state.get("tsc", 0))
        )

    def RestoreVm(
        self, request: hypervisor_pb2.RestoreVmRequest, context: grpc.ServicerContext
    ) -> hypervisor_pb2.Vm:
        vm = self._restore(
            request.name, request.snapshot, request.start, request.weight, request.cap, request.console_quota
        )
        return self._vm(vm)

    def _restore(
        self, name: str, blob: bytes, start: bool, weight: int = 0, cap: int = 0, quota: int = 0
    ) -> str:
        """Define (and with ``start`` start) the VM named ``name`` from the snapshot file ``blob``;
        returns its id (an existing VM's for the same snapshot and definition)."""
        definition, _snap = define_restored(
            name=name, snapshot=blob, weight=weight, cap=cap, console_quota=quota, limits=self.limits
        )
        existing = self.state.vm_by_name(name)
        if existing is not None:  # idempotent for the same snapshot and definition only
            return self._existing(existing, definition, start).id
        try:
            commit0 = boot(definition, blob)
        except SnapshotError as exc:
            raise InvalidField("snapshot", f"the snapshot cannot be restored: {exc}") from None
        if len(commit0.console) > definition["console_quota"]:
            raise InvalidField(
                "console_quota",
                f"the snapshot's console already holds {len(commit0.console)} bytes, more than the "
                f"console quota of {definition['console_quota']}: ask for more (within this "
                "deployment's quota)",
            )
        definition["host_memory_size"] = commit0.host_memory_size
        entry = Entry(
            status="runnable" if start else "created", weight=definition["weight"], cap=definition["cap"]
        )
        created, vm = self.state.create_vm(
            name,
            definition,
            blob,
            commit0.state,
            commit0.stats,
            entry.to_dict(),
            commit0.pages,
            commit0.console,
        )
        if not created:  # another client created the name meanwhile
            return self._existing(vm, definition, start).id
        self.runtimes.adopt(vm, 0, commit0.copy)
        return vm

    # -- live migration ----------------------------------------------------------------------------
    def MigrateVm(
        self, request: hypervisor_pb2.MigrateVmRequest, context: grpc.ServicerContext
    ) -> hypervisor_pb2.MigrationReport:
        vm = self._resolve(request.vm)
        if not _ADDRESS.match(request.to):
            raise InvalidField(
                "to",
                f"'to' {request.to[:70]!r} is not the destination hypervisor's HOST:PORT (e.g. 10.0.0.7:50051)",
            )
        if request.name and not is_vm_ref(request.name):
            raise InvalidField("name", f"name {request.name[:70]!r} is not a valid VM name")
        if request.bandwidth > 1 << 40 or not 0 <= request.target_downtime_ms <= 3_600_000:
            raise InvalidField(
                "bandwidth" if request.bandwidth > 1 << 40 else "target_downtime_ms",
                "bandwidth is at most 1 TB/s and target_downtime_ms 0 to 3,600,000 (0: the defaults)",
            )
        options = MigrationOptions(
            max_rounds=min(request.max_rounds or DEFAULT_MAX_ROUNDS, 1000),
            target_downtime=(request.target_downtime_ms / 1000) or DEFAULT_TARGET_DOWNTIME,
            bandwidth=request.bandwidth or DEFAULT_BANDWIDTH,
            name=request.name,
            to=request.to,
        )
        destination = GrpcDestination(request.to, request.to_token)
        try:
            report = migrate(_Released(self, vm), vm, destination, options)
        except MigrationFailed as exc:
            raise WrongState(str(exc)) from None
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise  # the destination's refusal of this request: passed on as it came
            # not UNAVAILABLE: this hypervisor answers (a client would retry the whole migration)
            raise WrongState(
                f"the destination {request.to} does not answer ({exc.code().name}: {exc.details()}): is "
                f"its hypervisor running there? VM {request.vm!r} runs on here"
            ) from None
        finally:
            destination.close()
        return hypervisor_pb2.MigrationReport(
            vm=report.vm,
            destination_vm=report.destination_vm,
            name=report.name,
            rounds=[
                hypervisor_pb2.MigrationRound(
                    round=r.number,
                    pages=r.pages,
                    bytes=r.bytes,
                    link_seconds=r.link_seconds,
                    wall_seconds=r.wall_seconds,
                    retired=r.retired,
                    stop_and_copy=r.stop_and_copy,
                )
                for r in report.rounds
            ],
            total_seconds=report.total_seconds,
            downtime_seconds=report.downtime_seconds,
            downtime_link_seconds=report.downtime_link_seconds,
            downtime_cycles=report.downtime_cycles,
            converged=report.converged,
            rebuild_seconds=report.rebuild_seconds,
            started=report.started,
        )

    def ReceiveMigration(
        self, request: hypervisor_pb2.MigrationChunk, context: grpc.ServicerContext
    ) -> hypervisor_pb2.MigrationAck:
        step, migration = request.step, request.migration
        chunk = hypervisor_pb2.MigrationChunk
        if step == chunk.STEP_BEGIN:
            if not is_vm_ref(request.name):
                raise InvalidField("name", f"name {request.name[:70]!r} is not a valid VM name")
            if self.state.vm_by_name(request.name) is not None:
                raise AlreadyExists(
                    f"a VM named {request.name!r} exists in this deployment: move the VM under another "
                    "name (--name), or destroy that one first"
                )
            self.incoming.begin(migration, request.name, self.limits.max_memory)
            return hypervisor_pb2.MigrationAck()
        if step == chunk.STEP_PAGES:
            return hypervisor_pb2.MigrationAck(pages_held=self.incoming.add_pages(migration, request.pages))
        if step == chunk.STEP_COMMIT:
            incoming = self.incoming.get(migration)
            try:
                snap = parse_snapshot(request.snapshot, max_memory=self.limits.max_memory)
            except SnapshotError as exc:
                raise InvalidField("snapshot", str(exc)) from None
            merged = {**incoming.pages, **snap.pages}
            if memory_digest(merged) != request.memory_sha256:
                raise InvalidField(
                    "memory_sha256",
                    "the pages received do not make the memory the source sent the digest of: "
                    "a page is missing or damaged (the migration is not committed)",
                )
            pages = {p: page for p, page in merged.items() if page.count(0) != len(page)}
            blob = encode_snapshot(dataclasses.replace(snap, pages=pages))
            vm = self._restore(incoming.name, blob, start=False)
            self.incoming.drop(migration, committed=vm)
            self.state.add_event(
                "migrated-in", vm, f"{incoming.name}: {len(pages)} pages, at {snap.retired} instructions"
            )
            return hypervisor_pb2.MigrationAck(vm=vm, pages_held=len(pages))
        if step == chunk.STEP_ABORT:
            self.incoming.drop(migration)
            vm = self.incoming.committed.pop(migration, "")
            if vm and self.state.sched_entry(vm).get("status") == "created":
                self._destroy(vm)  # committed, never started: the VM runs on at the source
            return hypervisor_pb2.MigrationAck()
        raise InvalidField("step", f"step {step} is not one of BEGIN, PAGES, COMMIT, ABORT")

    # -- building replies -------------------------------------------------------------------------
    def _vms(self) -> list[hypervisor_pb2.Vm]:
        _version, entries = self.state.sched_snapshot()
        total = sum(float(e.get("cpu_seconds", 0.0)) for e in entries.values())
        out = []
        for vm in sorted(entries, key=int):
            try:
                out.append(self._vm(vm, entries[vm], total))
            except Exception:
                continue  # destroyed while we listed
        return out

    def _vm(
        self, vm: str, entry: dict[str, Any] | None = None, total: float | None = None
    ) -> hypervisor_pb2.Vm:
        definition, record = self.state.vm_record(vm)
        if entry is None or total is None:
            _version, entries = self.state.sched_snapshot()
            entry = entries.get(vm, {})
            total = sum(float(e.get("cpu_seconds", 0.0)) for e in entries.values())
        state, stats_json, vmm, _gen = self.state.vm_vcpu_summary(vm)
        stats = stats_from_json(stats_json)
        status = record["status"] if record["status"] in TERMINAL else entry.get("status", record["status"])
        cpu_seconds = float(entry.get("cpu_seconds", 0.0))
        exits = int(vmm.get("exits", 0))
        cycles = simulated_cycles(definition["technique"], stats, int(stats_json.get("vmm_cycles", 0)))
        out = hypervisor_pb2.Vm(
            id=vm,
            name=definition["name"],
            technique=TECHNIQUES[definition["technique"]],
            nested_paging=bool(definition.get("nested_paging")),
            kernel=KERNELS.get(definition.get("kernel", NO_KERNEL), common_pb2.KERNEL_FLAVOUR_NONE),
            workload=definition.get("workload", ""),
            defines={k: int(v) for k, v in definition.get("defines", {}).items()},
            memory_size=int(definition["memory_size"]),
            console_quota=int(definition.get("console_quota") or self.limits.console_quota),
            weight=int(definition.get("weight", 256)),
            cap=int(definition.get("cap", 0)),
            status=STATUSES.get(status, hypervisor_pb2.VM_STATUS_UNSPECIFIED),
            detail=record.get("detail", ""),
            stats=hypervisor_pb2.VmStats(
                cpu_seconds=cpu_seconds,
                cpu_share=cpu_seconds / total if total else 0.0,
                exits=exits,
                exits_by_reason={k: int(v) for k, v in vmm.get("exits_by_reason", {}).items()},
                slices=int(entry.get("slices", 0)),
                simulated_cycles=cycles,
                guest=guest_stats_to_proto(stats, int(state.get("tsc", 0))),
                credit=float(entry.get("credit", 0.0)),
            ),
        )
        if record.get("code"):
            out.exit_code = int(record["code"])
        return out

    def _result(self, vm: str) -> hypervisor_pb2.VmResult:
        record = self.state.vm_record(vm)[1]
        state, stats_json, vmm, _gen = self.state.vm_vcpu_summary(vm)
        stats = stats_from_json(stats_json)
        console = self.state.console_all(vm)
        registers = {
            name: int(state[name]) for name in ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
        }
        registers |= {k: int(state[k]) for k in ("eip", "eflags", "cs", "cr0", "cr2", "cr3")}
        code = int(record["code"]) if record.get("code") else None
        reason = RESULT_REASONS.get(record["status"], record["status"])
        wall = float(vmm.get("ended", 0.0)) - float(vmm.get("started", 0.0)) if vmm.get("ended") else 0.0
        doc = stats_json.get("result")
        if not _well_formed(doc):
            doc = None
        if doc is not None:  # the pCPU kept the in-process run's JSON object at the final commit
            doc["console"] = console.decode("latin-1")
            doc["stats"]["host"]["wall_seconds"] = wall
            registers = {k: int(v) for k, v in doc["registers"].items()}
            reason, code = doc["exit"]["reason"], doc["exit"]["code"]
        else:
            doc = plain_result(
                console,
                reason,
                code,
                record.get("detail", ""),
                registers,
                stats,
                int(state.get("tsc", 0)),
                int(vmm.get("exits", 0)),
                wall,
            )
        result = hypervisor_pb2.VmResult(
            vm=self._vm(vm),
            console=console,
            reason=reason,
            detail=doc["exit"]["detail"],
            registers=registers,
            stats=guest_stats_to_proto(stats, int(state.get("tsc", 0))),
            wall_seconds=wall,
            result_json=json.dumps(doc),
        )
        if code is not None:
            result.code = code
        return result


def limits_from_environment() -> Limits:
    """The per-VM limits ``RINGLAB_MAX_MEMORY`` and ``RINGLAB_CONSOLE_QUOTA`` set (bytes, with
    an optional K, M or G), else the defaults."""
    return Limits(
        max_memory=byte_count(env_default("MAX_MEMORY", str(MAX_MEMORY))),
        console_quota=byte_count(env_default("CONSOLE_QUOTA", str(DEFAULT_CONSOLE_QUOTA))),
        flight_slices=_slices(env_default("FLIGHT_SLICES", str(DEFAULT_FLIGHT_SLICES))),
    )


def _slices(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise UsageError(
            f"RINGLAB_FLIGHT_SLICES: expected how many slices per VM the flight recorder keeps "
            f"(0 turns it off), got {text!r}"
        )
    return value


def _well_formed(doc: Any) -> bool:
    """Whether a stored result object has what ``_result`` reads (the cpu service checks what it
    commits; a store written otherwise gets the plain result)."""
    try:
        check_vmm_statistics({"result": doc})
    except InvalidSync:
        return False
    return True


def serve(
    config: ServiceConfig,
    limits: Limits | None = None,
    *,
    metrics_port: str | None = None,
    tracing: str | None = None,
) -> tuple[ServiceServer, DriverManager]:
    """Start the hypervisor (returns once it listens) with the per-VM ``limits`` (default: from
    the environment, ``limits_from_environment``), its metrics on the port ``metrics_port`` asks
    for (``--metrics-port``; None: ``RINGLAB_METRICS_PORT``, else the gRPC port + 1000), its
    spans where ``tracing`` says (``--tracing``; None: ``RINGLAB_TRACING``, else off): each slice
    and each world switch a span, the parent of the pCPU's."""
    try:
        traced = configure_tracing("hypervisor", tracing)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    limits = limits or limits_from_environment()
    metrics = HypervisorMetrics()
    state = metrics.watch_store(SharedState.from_url(config.redis))
    streams = StreamSlots(config.max_streams)
    metrics.watch_streams(streams)
    metrics.watch_deployment(state.counted())

    manager = DriverManager(
        state,
        lambda address: GrpcPcpu(address, config.token, traced),
        CreditPolicy(slice_instructions=config.slice, lease_seconds=config.lease),
        console_quota=limits.console_quota,
        observer=TracingObserver(metrics.driver, traced) if traced.enabled else metrics.driver,
        flight_slices=limits.flight_slices,
    )

    def register(server: grpc.Server) -> None:
        hypervisor_pb2_grpc.add_HypervisorServicer_to_server(
            HypervisorServicer(
                state, streams, manager.runtimes, config.token, limits, forget=metrics.driver.forget_vm
            ),
            server,
        )

    server = build_server(
        config,
        register,
        ["ringlab.v1.Hypervisor"],
        checks=[state.ping],
        metrics=metrics,
        metrics_port_setting=metrics_port,
        tracing=traced,
    )
    server.on_stop.append(manager.stop)
    manager.start()
    server.start()
    return server, manager


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ringlab-hypervisor", description="Serve the Ringlab hypervisor over gRPC."
    )
    add_service_flags(parser, "hypervisor")
    add_metrics_flag(parser)
    add_tracing_flag(parser)
    parser.add_argument(
        "--max-memory",
        default=env_default("MAX_MEMORY", str(MAX_MEMORY)),
        metavar="BYTES",
        help="the most guest RAM one VM may ask for (64M; K, M, G suffixes); more is INVALID_ARGUMENT",
    )
    parser.add_argument(
        "--console-quota",
        default=env_default("CONSOLE_QUOTA", str(DEFAULT_CONSOLE_QUOTA)),
        metavar="BYTES",
        help="console bytes one VM may write (1M); a VM that writes more is stopped (status limit)",
    )
    parser.add_argument(
        "--flight-slices",
        default=env_default("FLIGHT_SLICES", str(DEFAULT_FLIGHT_SLICES)),
        metavar="N",
        help=f"slices of each VM the flight recorder keeps, with their exits ({DEFAULT_FLIGHT_SLICES}; 0: off)",
    )
    args = parser.parse_args(argv)
    check_tracing_flag(parser, args.tracing)
    config = config_from_args(args, "hypervisor")
    try:
        limits = Limits(
            max_memory=byte_count(args.max_memory),
            console_quota=byte_count(args.console_quota),
            flight_slices=_slices(args.flight_slices),
        )
    except (ValueError, UsageError) as exc:
        parser.error(f"--max-memory / --console-quota / --flight-slices: {exc}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s hypervisor %(levelname)s %(message)s")
    server, _manager = serve(config, limits, metrics_port=args.metrics_port, tracing=args.tracing)
    server.install_signal_handlers()
    log.info(
        "hypervisor serving on %s:%d (Redis %s)", config.listen.rsplit(":", 1)[0], server.port, config.redis
    )
    print(f"READY hypervisor {config.listen.rsplit(':', 1)[0]}:{server.port}", flush=True)
    server.wait()
    return 0
