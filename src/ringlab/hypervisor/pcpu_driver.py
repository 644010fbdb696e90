"""Driving the pCPUs: per pCPU, the scheduler loop (decide, grant, run a slice, account) and the
slice loop (the VM's own loop, ``VM.advance``, whose every core run is a world switch through the
``Pcpu`` port and whose every exit is handled here, on the VM's copy, ``vm_copy``).

Per slice the steady state costs two store round trips: the commit (done by the pCPU in the
slice's last world switch, with the hypervisor's last changes) and the grant that accounts this
slice and hands out the next (it also returns the fresh snapshot the next decision needs).  Exits
inside a slice cost no store round trip at all: runs are deterministic, so progress after the last
commit is simply re-executed after a crash.

How long a slice runs (stretched for a VM nobody else waits for) is the scheduling policy's:
``ringlab.sched.slices``.  Which pCPUs exist, and the connection to each, come from outside:
``DriverManager`` takes the store and a ``ConnectPcpu``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ringlab.hypervisor.boot import vm_from
from ringlab.hypervisor.definition import DEFAULT_CONSOLE_QUOTA, DEFAULT_FLIGHT_SLICES
from ringlab.hypervisor.ports import (
    ConnectPcpu,
    Pcpu,
    SchedulerStore,
    Switched,
    SwitchFailed,
    WorldSwitch,
)
from ringlab.hypervisor.vm_copy import VmCopy
from ringlab.machine import Controls, Exit, ExitReason
from ringlab.machine.context import ContextDelta
from ringlab.sched import (
    CreditPolicy,
    Entry,
    SliceOutcome,
    SlicePlan,
    measured_rate,
    plan_slice,
    runs_alone,
)
from ringlab.sched.slices import LEASE_FRACTION
from ringlab.vmm import Stop
from ringlab.vmm.recorder import FlightRecorder
from ringlab.vmm.translated import TcRun, VmmCall

__all__ = [
    "DriverManager",
    "DriverObserver",
    "PcpuDriver",
    "Runtimes",
    "SliceReport",
    "VmRuntime",
    "console_quota_stop",
]

log = logging.getLogger("ringlab.hypervisor")

DRIVER_TTL_MS = 3_000
"""A pCPU's driver lease: another replica takes the pCPU over this long after its driver died."""
IDLE_POLL = 0.01
"""How long a driver with nothing to run waits before looking again (seconds)."""
SWITCH_DEADLINE = 60.0
"""The longest one world switch may take before the pCPU counts as lost (seconds); within a
grant, what is left of its lease comes first."""
PROBE_INTERVAL = 0.5
"""How often the driver of a pCPU that stopped answering asks whether it answers again (seconds)."""


@dataclass(frozen=True)
class SliceReport:
    """What one slice did, as its driver reports it to its ``DriverObserver``."""

    pcpu: str
    vm: str
    """The VM's id."""
    name: str
    """The VM's name (its id when the slice was lost before the VM was loaded)."""
    technique: str
    """The VM's technique ("" when the slice was lost before the VM was loaded)."""
    ended: str
    """How it ended: preempted, idle, ended or lost (``SliceOutcome.ended``)."""
    switches: int
    """World switches (``RunVcpu`` calls) it made, its commit included."""
    exits: dict[str, int]
    """Exits by reason it handled (a lost slice's too: they were not committed)."""
    instructions: int
    """Guest instructions it retired."""
    seconds: float
    """Host seconds it held the pCPU (what the VM is charged)."""
    number: int = 0
    """Its number among the VM's slices in the flight record (0: the deployment does not record)."""

    @property
    def committed(self) -> bool:
        """Whether what it did was kept: a lost slice is re-executed from the VM's last commit."""
        return self.ended != "lost"


class DriverObserver:
    """What the pCPU drivers tell as they run, for an adapter to count (the hypervisor service's
    metrics): every method is a no-op here, called on the driver's thread, and must be quick and
    never raise."""

    def slice_started(self, pcpu: str, vm: str) -> None:
        """A slice of ``vm`` begins on ``pcpu`` (its world switches follow on this thread, then
        ``slice_ended``)."""

    def world_switch(self, pcpu: str, seconds: float) -> None:
        """One world switch (a ``Pcpu.switch``) answered after ``seconds`` (host time)."""

    def slice_ended(self, report: SliceReport) -> None:
        """A slice ended (``report`` says how)."""

    def decided(self, pcpu: str, chosen: str | None, applied: bool, refilled: bool, seconds: float) -> None:
        """A scheduling decision for ``pcpu`` (``chosen``: the VM granted, None: idle) was applied
        by the store, or refused because the entries changed (``applied`` False); ``refilled``:
        it refilled every VM's credit; ``seconds``: the host time the decision took."""


@dataclass
class VmRuntime:
    """What the hypervisor keeps per VM between slices (rebuilt from the store when stale)."""

    vm: str
    definition: dict[str, Any]
    copy: VmCopy
    vmm: dict[str, Any]
    """The VMM's per-VM record (exits by reason, start and end times), as of the pCPU's progress."""
    generation: int
    """The last commit."""
    rate: float = 0.0
    """Instructions per host second in its last slice (0: not measured yet)."""
    boot: int = 0
    """Which boot of the VM this is (its scheduler entry's ``boot``: StartVm of an ended VM boots
    it afresh, and a runtime of an earlier boot must not run)."""


@dataclass
class _Slice:
    """One granted slice of one VM as it runs: what its world switches need and count."""

    rt: VmRuntime
    token: int
    """The grant's fencing token."""
    end: int
    """The retired-instruction count at which the slice's instructions are used up."""
    lease_end: float
    """When the grant's lease ends (``time.monotonic()``): every call must be answered by then."""
    over_at: float = float("inf")
    """When the slice's host time is up (``time.monotonic()``): it ends at the first exit after."""
    switches: int = 0
    exits: dict[str, int] = field(default_factory=dict)
    """Exits by reason in this slice."""
    committed_at_switch: bool = False
    """The pCPU committed at the last switch (a run that ended the slice carried the commit)."""
    start: int = 0
    """The retired-instruction count at which the slice started."""
    recorder: FlightRecorder | None = None
    """The VM's flight recorder, when the deployment records (``PcpuDriver.flight_slices``)."""

    def over(self) -> bool:
        return time.monotonic() > self.over_at

    def deadline(self) -> float:
        """Seconds left for the next world switch: what is left of the lease."""
        left = self.lease_end - time.monotonic()
        if left <= 0:
            raise SwitchFailed("the grant's lease ended before the slice did")
        return left

    def count_exit(self, name: str) -> None:
        if name:
            vmm = self.rt.vmm
            exits = vmm["exits_by_reason"]
            exits[name] = exits.get(name, 0) + 1
            self.exits[name] = self.exits.get(name, 0) + 1
            vmm["exits"] = int(vmm.get("exits", 0)) + 1


def exit_name(switched: Switched) -> str:
    """The exit a world switch ended with, by name ("" for a used-up budget)."""
    if switched.tc is not None and switched.tc.event:  # translated code called the VMM
        return VmmCall(switched.tc.event).exit_name
    if switched.exit.reason is not ExitReason.BUDGET:
        return str(switched.exit.reason.value)
    return ""


def console_quota_stop(quota: int) -> Stop:
    """How a VM whose console went past its quota ends (status ``limit``)."""
    return Stop(
        "limit",
        None,
        f"console quota of {quota} bytes exceeded: the VM was stopped and its console cut there "
        "(the hypervisor's --console-quota, or the VM's console_quota)",
    )


def _slice_end(outcome: Stop | Exit | None, retired: int, limit: int | None) -> tuple[str, Stop | None]:
    """(how the slice ended, the VM's end or None) from what ``VM.advance`` returned."""
    if isinstance(outcome, Stop):
        return "preempted", outcome
    if outcome is not None:
        return "idle", None  # the guest idles in hlt: it yields the rest of its slice
    if limit is not None and retired >= int(limit):
        return "preempted", Stop("limit", None, f"{limit} instructions retired")
    return "preempted", None


class Runtimes:
    """VM runtimes shared by this replica's drivers (a VM runs on one pCPU at a time)."""

    MAX_ADOPTED = 1024
    """Booted copies kept for a first slice at most (the oldest go first: a VM another replica
    runs never comes for its copy here)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_vm: dict[str, VmRuntime] = {}
        self._booted: dict[tuple[str, int], VmCopy] = {}

    def adopt(self, vm: str, boot: int, copy: VmCopy) -> None:
        """Keep ``copy``, boot ``boot`` of ``vm`` at commit 0 (``boot.boot``), for its first slice."""
        with self._lock:
            self._booted[(vm, boot)] = copy
            while len(self._booted) > self.MAX_ADOPTED:
                del self._booted[next(iter(self._booted))]

    def take(self, vm: str, store: SchedulerStore, boot: int = 0) -> VmRuntime:
        """The runtime of boot ``boot`` of ``vm`` for one slice, loaded through ``store`` (the
        caller's, which counts its round trips) and replayed to its last commit when this replica
        has none.  It is the caller's until ``give_back``: a slice that outlived its grant (its
        pCPU stopped answering) never shares a copy with the slice that took the VM over."""
        with self._lock:
            rt = self._by_vm.pop(vm, None)
        if rt is not None and rt.boot == boot:
            return rt
        definition, _ = store.vm_record(vm)
        _state, stats, vmm, generation = store.vm_vcpu_summary(vm)
        retired = int(stats.get("retired", 0))
        with self._lock:
            copy = self._booted.pop((vm, boot), None)
        if copy is None or copy.base != retired:  # no copy at commit 0 here: boot and replay the VM
            blob = store.vm_image(vm)
            copy = VmCopy(
                lambda runner: vm_from(definition, blob, runner=runner),
                retired,
                name=str(definition.get("name", vm)),
            )
        return VmRuntime(vm, definition, copy, vmm, generation, boot=boot)

    def give_back(self, rt: VmRuntime) -> None:
        """The slice that took ``rt`` ended and its copy stands at the VM's last commit: the next
        slice goes on from it (unless a newer copy came back meanwhile)."""
        with self._lock:
            self._by_vm.setdefault(rt.vm, rt)

    def forget(self, vm: str) -> None:
        """``vm`` is destroyed: forget every copy of it."""
        with self._lock:
            self._by_vm.pop(vm, None)
            for key in [key for key in self._booted if key[0] == vm]:
                del self._booted[key]


class PcpuDriver(threading.Thread):
    """Schedules VMs on one pCPU while this replica holds the pCPU's driver lease."""

    def __init__(
        self,
        store: SchedulerStore,
        runtimes: Runtimes,
        policy: CreditPolicy,
        pcpu: str,
        link: Pcpu,
        owner: str,
        pcpus: Callable[[], int],
        console_quota: int = DEFAULT_CONSOLE_QUOTA,
        observer: DriverObserver | None = None,
        flight_slices: int = DEFAULT_FLIGHT_SLICES,
    ) -> None:
        super().__init__(name=f"driver-{pcpu}", daemon=True)
        self.observer = observer or DriverObserver()
        self.flight_slices = flight_slices
        """Slices per VM the flight recorder keeps in the store (0: no recording)."""
        self.console_quota = console_quota
        """The console quota of a VM whose definition names none (created before quotas)."""
        self.store = store.counted()  # its own round-trip counter on the same state
        self.runtimes = runtimes
        self.policy = policy
        self.pcpu = pcpu
        self.link = link
        self.owner = owner
        self.stop_event = threading.Event()
        self._pcpus = pcpus  # how many pCPUs are alive (refill scales with it)
        self._lease_renewed = 0.0
        self._reported_trips = 0
        self._unreleased: SliceOutcome | None = None
        """A slice that ended but whose accounting (the next grant) has not been applied yet."""
        self._unanswered = False
        """The pCPU stopped answering: it gets no VM until it answers again."""
        self._probed = 0.0
        self._running: _Slice | None = None
        """The slice ``run_slice`` runs (for its report)."""

    def _fit(self) -> bool:
        """Whether the pCPU may be given a VM: yes, unless it stopped answering and still does
        not (asked at most every ``PROBE_INTERVAL``)."""
        if self._unanswered and time.monotonic() - self._probed >= PROBE_INTERVAL:
            self._probed = time.monotonic()
            if self.link.ready():
                log.info("pCPU %s answers again", self.pcpu)
                self._unanswered = False
        return not self._unanswered

    def stop(self) -> None:
        self.stop_event.set()

    def _hold_pcpu(self) -> bool:
        now = time.monotonic()
        if now - self._lease_renewed < DRIVER_TTL_MS / 3000:
            return True
        if self.store.renew_driver(self.pcpu, self.owner, DRIVER_TTL_MS):
            self._lease_renewed = now
            return True
        return False

    def run(self) -> None:
        try:
            self._loop()
        except Exception:
            log.exception("driver for %s stopped", self.pcpu)
        finally:
            with contextlib.suppress(Exception):
                self._release_last_slice()
            with contextlib.suppress(Exception):
                self.store.release_driver(self.pcpu, self.owner)
            self.link.close()

    def _release_last_slice(self) -> None:
        """On a graceful stop, account the slice that just ended and hand its VM back to the run
        queue, so another replica runs it at once instead of waiting for the grant to expire."""
        finished = self._unreleased
        for _attempt in range(5):
            if finished is None:
                return
            version, raw = self.store.sched_snapshot()
            entries = {vm: Entry.from_dict(d) for vm, d in raw.items()}
            if finished.vm not in entries:
                return
            now = time.time()
            event = self.policy.account(entries, finished, now)
            update = {finished.vm: entries[finished.vm].to_dict()}
            result = self.store.grant(
                version=version,
                pcpu=self.pcpu,
                now=now,
                lease_seconds=self.policy.lease_seconds,
                chosen=None,
                updates=update,
                events=[event] if event is not None else [],
                busy_seconds=finished.held_seconds,
                slices=1,
            )
            if result.applied:
                return

    def _loop(self) -> None:
        # Nothing known yet: the first grant is refused and brings the entries.
        version, raw = 0, dict[str, dict[str, Any]]()
        finished: SliceOutcome | None = None
        slice_exits: dict[str, int] = {}
        busy = 0.0
        switches = 0
        while not self.stop_event.is_set():
            try:
                if not self._hold_pcpu():
                    self.stop_event.wait(0.5)
                    continue
                t0 = time.perf_counter()
                entries = {vm: Entry.from_dict(d) for vm, d in raw.items()}
                now = time.time()
                decision = self.policy.decide(
                    entries, now, pcpus=max(1, self._pcpus()), finished=finished, pick=self._fit()
                )
                if finished is not None and slice_exits:
                    # One "exit" event per slice (not per exit: a console byte is an exit), in the
                    # same script as the grant, so it costs no round trip.
                    counts = ", ".join(f"{name} x{n}" for name, n in sorted(slice_exits.items()))
                    decision.events.insert(0, {"kind": "exit", "vm": finished.vm, "detail": counts})
                result = self.store.grant(
                    version=version,
                    pcpu=self.pcpu,
                    now=now,
                    lease_seconds=self.policy.lease_seconds,
                    chosen=decision.chosen,
                    updates=decision.updates,
                    events=decision.events,
                    busy_seconds=busy,
                    scheduler_seconds=time.perf_counter() - t0,
                    slices=1 if finished else 0,
                    world_switches=switches,
                    round_trips=self.store.round_trips - self._reported_trips + 1,  # + this grant
                )
                self._reported_trips = self.store.round_trips
                with contextlib.suppress(Exception):  # an observer never stops a pCPU
                    self.observer.decided(
                        self.pcpu,
                        decision.chosen,
                        result.applied,
                        decision.refilled,
                        time.perf_counter() - t0,
                    )
                version, raw = result.version, result.entries
                if not result.applied:
                    continue  # someone else changed the entries: decide again on the fresh ones
                finished, busy, switches = None, 0.0, 0
                self._unreleased = None
                if decision.chosen is None:
                    self.stop_event.wait(PROBE_INTERVAL if self._unanswered else IDLE_POLL)
                    version, raw = self.store.sched_snapshot()
                    continue
                lone = runs_alone(self.policy, entries, decision.chosen, now)
                lease_end = time.monotonic() + self.policy.lease_seconds - (time.time() - now)
                started = time.perf_counter()
                boot = int(entries[decision.chosen].extra.get("boot", 0))
                ended, switches, slice_exits = self.run_slice(
                    decision.chosen, result.token, lone=lone, boot=boot, lease_end=lease_end
                )
                busy = time.perf_counter() - started
                finished = SliceOutcome(decision.chosen, result.token, busy, ended)
                self._unreleased = finished
            except Exception as exc:  # the store or the pCPU went away: keep trying, say why
                log.warning("pCPU %s: %s", self.pcpu, exc)
                self.stop_event.wait(0.5)
                with contextlib.suppress(Exception):
                    version, raw = self.store.sched_snapshot()

    # -- one slice ------------------------------------------------------------------------------
    def run_slice(
        self, vm: str, token: int, *, lone: bool = False, boot: int = 0, lease_end: float | None = None
    ) -> tuple[str, int, dict[str, int]]:
        """Run boot ``boot`` of ``vm`` for one slice (stretched when ``lone``: no other VM waits)
        within its grant's lease (ending at ``lease_end``, ``time.monotonic()``); returns (how it
        ended, world switches, exits by reason), and tells the observer (``SliceReport``)."""
        started = time.perf_counter()
        self._running = None
        with contextlib.suppress(Exception):  # an observer never stops a pCPU
            self.observer.slice_started(self.pcpu, vm)
        ended, switches, exits = self._run_slice(vm, token, lone=lone, boot=boot, lease_end=lease_end)
        run, self._running = self._running, None
        if run is not None and run.recorder is not None:
            self._record_end(vm, run.recorder, ended)
        name, technique, instructions, number = vm, "", 0, 0
        if run is not None:
            definition = run.rt.definition
            name, technique = str(definition.get("name", vm)), str(definition.get("technique", ""))
            instructions = max(0, run.rt.copy.vm.cpu.stats.retired - run.start)
            if run.recorder is not None:
                number = int(run.rt.vmm.get("slices_recorded", 0))
        with contextlib.suppress(Exception):  # an observer never stops a pCPU
            self.observer.slice_ended(
                SliceReport(
                    self.pcpu,
                    vm,
                    name,
                    technique,
                    ended,
                    switches,
                    dict(exits),
                    instructions,
                    time.perf_counter() - started,
                    number,
                )
            )
        return ended, switches, exits

    def _run_slice(
        self, vm: str, token: int, *, lone: bool, boot: int, lease_end: float | None
    ) -> tuple[str, int, dict[str, int]]:
        """``run_slice``'s steps: take the VM's copy, size the slice, run it (every core run a
        world switch, ``_switch``), commit, give the copy back."""
        try:
            rt = self._load(vm, boot)
        except Exception as exc:
            log.warning("VM %s cannot run: %s", vm, exc)
            return "lost", 0, {}
        guest = rt.copy.vm
        limit = rt.definition.get("max_instructions")
        left = None if limit is None else int(limit) - guest.cpu.stats.retired
        plan = plan_slice(self.policy, lone=lone, rate=rt.rate, left=left)
        if lease_end is None:
            lease_end = time.monotonic() + self.policy.lease_seconds
        if lease_end - time.monotonic() < self.policy.lease_seconds / LEASE_FRACTION:
            # Loading the copy (a replay) took most of the lease: run it in the next slice rather
            # than lose the slice at its first switch and the replayed copy with it.
            log.info("VM %s: replayed to its commit; it runs in its next slice", vm)
            self.runtimes.give_back(rt)
            return "lost", 0, {}
        run = _Slice(
            rt, token, guest.cpu.stats.retired + plan.instructions, lease_end, start=guest.cpu.stats.retired
        )
        run.recorder = self._record_start(rt)
        self._running = run
        rt.copy.link = functools.partial(self._switch, run)
        try:
            how, stop, failed = self._run(run, plan)
        except SwitchFailed as err:
            return self._lost(vm, err, run.switches, run.exits)
        ended = self._commit_slice(run, how, stop, failed)
        if ended[0] not in ("lost", "ended"):
            self.runtimes.give_back(rt)
        return ended

    # -- the flight recorder ----------------------------------------------------------------------
    def _record_start(self, rt: VmRuntime) -> FlightRecorder | None:
        """The VM's recorder (attached to its copy the first time), its slice begun: slices are
        numbered per VM in the VMM's committed record, so a replica that takes the VM over goes on."""
        if not self.flight_slices:
            return None
        guest = rt.copy.vm
        recorder = guest.recorder or FlightRecorder(pcpu=self.pcpu).attach(guest)
        number = int(rt.vmm.get("slices_recorded", 0)) + 1
        rt.vmm["slices_recorded"] = number
        recorder.begin_slice(self.pcpu, number)
        return recorder

    def _record_end(self, vm: str, recorder: FlightRecorder, ended: str) -> None:
        """End the slice's record and keep it in the store.  A lost slice keeps only its own
        record: its exits are done again from the VM's last commit (and recorded then), so the
        exits kept are those the statistics count.  Recording never fails a slice."""
        recorder.end_slice(ended)
        records = recorder.take()
        if ended == "lost":
            records = [r for r in records if r["kind"] == "slice"]
        try:
            self.store.flight_append(vm, records, self.flight_slices)
        except Exception as exc:
            log.warning("VM %s: the flight recorder could not keep its slice: %s", vm, exc)

    def _load(self, vm: str, boot: int) -> VmRuntime:
        """The VM's copy in this replica (replayed to its last commit if there was none)."""
        rt = self.runtimes.take(vm, self.store, boot)
        rt.copy.console_quota = int(rt.definition.get("console_quota") or self.console_quota)
        rt.vmm.setdefault("started", time.time())
        rt.vmm.setdefault("exits_by_reason", {})
        return rt

    def _run(self, run: _Slice, plan: SlicePlan) -> tuple[str, Stop | None, bool]:
        """Run the guest for ``plan`` (its own loop, ``VM.advance``); returns (how the slice ended:
        preempted or idle, the VM's end if it ended, whether the hypervisor itself failed).  A
        refused or failed world switch raises ``SwitchFailed``.

        The slice's host time is up ``plan.seconds`` after it starts running, and never later
        than a quarter of the lease before the lease ends (``LEASE_FRACTION``): loading the copy
        may have taken part of the lease, and the last exit and the commit must land within it.
        A slice that outlived its lease is lost, and a VM whose every slice outlives the lease
        (a busy machine) would never move on."""
        rt = run.rt
        guest = rt.copy.vm
        quota = rt.copy.console_quota
        start, started = guest.cpu.stats.retired, time.perf_counter()
        run.over_at = min(
            time.monotonic() + plan.seconds,
            run.lease_end - self.policy.lease_seconds / LEASE_FRACTION,
        )

        def over() -> bool:  # checked at every exit: the slice ends at the one past the quota
            return run.over() or (quota is not None and len(guest.devices.console) > quota)

        try:
            outcome = guest.advance(plan.instructions, over) if plan.instructions > 0 else None
            how, stop = _slice_end(outcome, guest.cpu.stats.retired, rt.definition.get("max_instructions"))
            if quota is not None and len(guest.devices.console) > quota:
                how, stop = "preempted", console_quota_stop(quota)
            failed = False
        except SwitchFailed:
            raise
        except Exception as exc:  # a fault in the VMM itself: end this VM, keep the pCPU going
            log.exception("VM %s: the hypervisor failed handling its exit", rt.vm)
            how, stop = (
                "preempted",
                Stop("shutdown", None, f"hypervisor error while handling an exit: {exc!r}"),
            )
            failed = True  # its copy may be half-changed: commit the pCPU's state as it is
        elapsed = time.perf_counter() - started
        if how == "preempted" and elapsed > 0:  # a full slice: what the next one may stretch to
            rt.rate = measured_rate(guest.cpu.stats.retired - start, elapsed)
        return how, stop, failed

    def _switch(
        self,
        run: _Slice,
        budget: int,
        delta: ContextDelta,
        controls: Controls,
        nested: int,
        tc: TcRun | None,
    ) -> Switched:
        """One world switch of the slice ``run`` (the copy's ``Link``): the run that may end the
        slice carries its commit."""
        rt = run.rt
        ends_slice = rt.copy.vm.cpu.stats.retired + budget >= run.end
        if tc is not None and run.switches and run.over():
            # bt's translation loop runs on through the VMM calls it makes (a miss, a callout)
            # without looking at the clock: once the slice's time is up, the run it asks for runs
            # nothing, so it returns to VM.advance, which ends the slice at this exit.  (Under
            # load, a cold translation cache took several leases to run one slice's budget, and
            # every slice of the VM was lost: 150 s without progress.)  The slice's first run
            # always runs: a slice that starts late still moves the VM on.
            budget = 0
        started = time.perf_counter()
        switched = self.link.switch(
            WorldSwitch(
                vm=rt.vm,
                token=run.token,
                generation=rt.generation,
                budget=budget,
                controls=controls,
                delta=delta,
                nested_ram_size=nested,
                tc=tc,
                commit=rt.copy.commit(rt.vmm) if ends_slice else None,
                deadline=run.deadline(),
            )
        )
        self._switched(time.perf_counter() - started)
        run.switches += 1
        run.committed_at_switch = switched.generation != rt.generation
        if run.committed_at_switch:
            rt.generation = switched.generation
            rt.copy.committed()
        run.count_exit(exit_name(switched))
        return switched

    def _switched(self, seconds: float) -> None:
        """Tell the observer of a world switch (whatever it does, the slice goes on)."""
        try:
            self.observer.world_switch(self.pcpu, seconds)
        except Exception:
            log.exception("the driver's observer failed")

    def _commit_slice(
        self, run: _Slice, how: str, stop: Stop | None, failed: bool
    ) -> tuple[str, int, dict[str, int]]:
        """Commit what the slice did (unless its last run committed it already and nothing came
        after); an ended VM's copy is dropped."""
        rt = run.rt
        if stop is None and run.committed_at_switch and not rt.copy.changed_since_switch():
            return how, run.switches, run.exits
        try:
            self._final_commit(run, stop, failed)
        except SwitchFailed as err:
            return self._lost(rt.vm, err, run.switches + 1, run.exits)
        except Exception:  # building the commit failed: this copy cannot be trusted, reload it
            log.exception("VM %s: the hypervisor failed to commit its slice", rt.vm)
            return "lost", run.switches, run.exits
        run.switches += 1
        if stop is not None:
            return "ended", run.switches, run.exits
        return how, run.switches, run.exits

    def _final_commit(self, run: _Slice, stop: Stop | None = None, failed: bool = False) -> None:
        """A world switch that runs nothing and commits: the hypervisor's last changes go with it
        (none when the VMM failed: its copy may be half-changed, the pCPU's stands)."""
        rt = run.rt
        copy = rt.copy
        if stop is not None:
            rt.vmm["ended"] = time.time()
        started = time.perf_counter()
        switched = self.link.switch(
            WorldSwitch(
                vm=rt.vm,
                token=run.token,
                generation=rt.generation,
                budget=0,
                controls=copy.controls(),
                delta=None if failed else copy.sync(),
                commit=copy.commit(rt.vmm, stop),
                deadline=run.deadline(),
            )
        )
        self._switched(time.perf_counter() - started)
        rt.generation = switched.generation
        copy.committed()
        if not failed:  # the pCPU now stands where the handlers left the copy: the next slice's
            copy.accept(switched)  # changes are counted from there

    def _lost(
        self, vm: str, err: SwitchFailed, switches: int, seen: dict[str, int]
    ) -> tuple[str, int, dict[str, int]]:
        """A refused commit (stale lease: paused, stopped, destroyed or re-granted), a stale
        generation, a dead, stopped or cut-off pCPU, or copies that disagree: drop what this slice
        did (its copy is not given back); the VM resumes from its commit."""
        log.info("VM %s slice on %s abandoned: %s", vm, self.pcpu, err)
        if err.unreachable:
            log.warning("pCPU %s does not answer: no VM for it until it does", self.pcpu)
            self._unanswered = True
            self._probed = time.monotonic()
        return "lost", switches, seen


class DriverManager(threading.Thread):
    """Starts a driver for every live pCPU registered in the store, and stops those that died."""

    def __init__(
        self,
        store: SchedulerStore,
        connect: ConnectPcpu,
        policy: CreditPolicy,
        console_quota: int = DEFAULT_CONSOLE_QUOTA,
        observer: DriverObserver | None = None,
        flight_slices: int = DEFAULT_FLIGHT_SLICES,
    ) -> None:
        super().__init__(name="drivers", daemon=True)
        self.console_quota = console_quota
        self.flight_slices = flight_slices
        self.observer = observer or DriverObserver()
        """Told of every world switch, slice and decision of this replica's drivers."""
        self.store = store
        self.connect = connect
        self.policy = policy
        self.owner = f"hypervisor-{uuid.uuid4().hex[:8]}"
        self.runtimes = Runtimes()
        self.drivers: dict[str, PcpuDriver] = {}
        self.addresses: dict[str, str] = {}
        """Where each driven pCPU was when its driver started (a pCPU may come back elsewhere)."""
        self.stop_event = threading.Event()
        self.alive = 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                pcpus = self.store.pcpus()
                self.alive = sum(1 for _a, alive in pcpus.values() if alive)
                for pcpu, (address, alive) in pcpus.items():
                    driver = self.drivers.get(pcpu)
                    if alive and driver is not None and self.addresses.get(pcpu) != address:
                        log.info("pCPU %s moved to %s: driving it there", pcpu, address)
                        driver.stop()  # restarted elsewhere: its old driver calls the old address
                        driver = None
                    if alive and (driver is None or not driver.is_alive()):
                        driver = PcpuDriver(
                            self.store,
                            self.runtimes,
                            self.policy,
                            pcpu,
                            self.connect(address),
                            self.owner,
                            lambda: self.alive,
                            self.console_quota,
                            self.observer,
                            self.flight_slices,
                        )
                        self.drivers[pcpu] = driver
                        self.addresses[pcpu] = address
                        driver.start()
                    elif not alive and driver is not None:
                        driver.stop()
                        del self.drivers[pcpu]
            except Exception as exc:
                log.warning("cannot list pCPUs: %s", exc)
            self.stop_event.wait(0.5)

    def stop(self) -> None:
        self.stop_event.set()
        for driver in self.drivers.values():
            driver.stop()
        for driver in self.drivers.values():
            driver.join(timeout=5)
