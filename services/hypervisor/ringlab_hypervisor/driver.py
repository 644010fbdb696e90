"""Driving one pCPU: the scheduler loop (decide, grant, run a slice, account) and the slice loop
(the VM's own loop, ``VM.advance``, whose every core run is a ``RunVcpu`` world switch and whose
every exit is handled here, ``remote.py``).

Per slice the steady state costs two Redis round trips: the commit (done by the pCPU in the
slice's last RunVcpu, with the hypervisor's last changes) and the grant that accounts this slice
and hands out the next (it also returns the fresh snapshot the next decision needs).  Exits inside
a slice cost no Redis at all: runs are deterministic, so progress after the last commit is simply
re-executed after a crash.

How long a slice runs (stretched for a VM nobody else waits for) is the scheduling policy's:
``ringlab.sched.slices``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import grpc

from ringlab.image import Image
from ringlab.rpc import open_channel
from ringlab.rpc.convert import REASON_NAMES
from ringlab.sched import CreditPolicy, Entry, SliceOutcome, measured_rate, plan_slice, runs_alone
from ringlab.store import SharedState
from ringlab.v1 import common_pb2, cpu_pb2, cpu_pb2_grpc
from ringlab.vmm import Stop
from ringlab.vmm.translated import VmmCall
from ringlab_hypervisor.remote import RemoteVm, stop_status

__all__ = ["PcpuDriver", "Runtimes", "VmRuntime"]

log = logging.getLogger("ringlab.hypervisor")

DRIVER_TTL_MS = 3_000
IDLE_POLL = 0.01


@dataclass
class VmRuntime:
    """What the hypervisor keeps per VM between slices (rebuilt from Redis when stale)."""

    vm: str
    definition: dict[str, Any]
    remote: RemoteVm
    vmm: dict[str, Any]
    """The VMM's per-VM record (exits by reason, start and end times), as of the pCPU's progress."""
    generation: int
    """The last commit."""
    rate: float = 0.0
    """Instructions per host second in its last slice (0: not measured yet)."""
    boot: int = 0
    """Which boot of the VM this is (its scheduler entry's ``boot``: StartVm of an ended VM boots
    it afresh, and a runtime of an earlier boot must not run)."""


class Runtimes:
    """VM runtimes shared by this replica's drivers (a VM runs on one pCPU at a time)."""

    def __init__(self, state: SharedState) -> None:
        self.state = state
        self._lock = threading.Lock()
        self._by_vm: dict[str, VmRuntime] = {}

    def get(self, vm: str, state: SharedState, boot: int = 0) -> VmRuntime:
        """The runtime of boot ``boot`` of ``vm``, loaded through ``state`` (the caller's, which
        counts its round trips) and replayed to its last commit when this replica has none."""
        with self._lock:
            rt = self._by_vm.get(vm)
        if rt is not None and rt.boot == boot:
            return rt
        definition, _ = state.vm_record(vm)
        _state, stats, vmm, generation = state.vm_vcpu_summary(vm)
        image = Image.from_bytes(state.vm_image(vm))
        rt = VmRuntime(
            vm,
            definition,
            RemoteVm(definition, image, int(stats.get("retired", 0))),
            vmm,
            generation,
            boot=boot,
        )
        with self._lock:
            self._by_vm[vm] = rt
        return rt

    def drop(self, vm: str) -> None:
        with self._lock:
            self._by_vm.pop(vm, None)


class PcpuDriver(threading.Thread):
    """Schedules VMs on one pCPU while this replica holds the pCPU's driver lease."""

    def __init__(
        self,
        state: SharedState,
        runtimes: Runtimes,
        policy: CreditPolicy,
        pcpu: str,
        address: str,
        owner: str,
        token: str,
        pcpus: Any,
    ) -> None:
        super().__init__(name=f"driver-{pcpu}", daemon=True)
        self.state = SharedState(state.r)  # its own round-trip counter, the same connection pool
        self.runtimes = runtimes
        self.policy = policy
        self.pcpu = pcpu
        self.address = address
        self.owner = owner
        self.stop_event = threading.Event()
        self.channel = open_channel(address, token)
        self.stub = cpu_pb2_grpc.CpuStub(self.channel)
        self._pcpus = pcpus  # callable: how many pCPUs are alive (refill scales with it)
        self._lease_renewed = 0.0
        self._reported_trips = 0
        self._unreleased: SliceOutcome | None = None
        """A slice that ended but whose accounting (the next grant) has not been applied yet."""

    def stop(self) -> None:
        self.stop_event.set()

    def _hold_pcpu(self) -> bool:
        now = time.monotonic()
        if now - self._lease_renewed < DRIVER_TTL_MS / 3000:
            return True
        if self.state.renew_driver(self.pcpu, self.owner, DRIVER_TTL_MS):
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
                self.state.release_driver(self.pcpu, self.owner)
            self.channel.close()

    def _release_last_slice(self) -> None:
        """On a graceful stop, account the slice that just ended and hand its VM back to the run
        queue, so another replica runs it at once instead of waiting for the grant to expire."""
        finished = self._unreleased
        for _attempt in range(5):
            if finished is None:
                return
            version, raw = self.state.sched_snapshot()
            entries = {vm: Entry.from_dict(d) for vm, d in raw.items()}
            if finished.vm not in entries:
                return
            now = time.time()
            self.policy.account(entries, finished, now)
            update = {finished.vm: entries[finished.vm].to_dict()}
            result = self.state.grant(
                version=version,
                pcpu=self.pcpu,
                now=now,
                lease_seconds=self.policy.lease_seconds,
                chosen=None,
                updates=update,
                events=[
                    {
                        "kind": "descheduled",
                        "vm": finished.vm,
                        "detail": f"{finished.ended} {now - finished.held_seconds:.6f} {now:.6f}",
                    }
                ],
                busy_seconds=finished.held_seconds,
                slices=1,
            )
            if result.applied:
                return

    def _loop(self) -> None:
        version, raw = self.state.sched_snapshot()
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
                decision = self.policy.decide(entries, now, pcpus=max(1, self._pcpus()), finished=finished)
                if finished is not None and slice_exits:
                    # One "exit" event per slice (not per exit: a console byte is an exit), in the
                    # same script as the grant, so it costs no round trip.
                    counts = ", ".join(f"{name} x{n}" for name, n in sorted(slice_exits.items()))
                    decision.events.insert(0, {"kind": "exit", "vm": finished.vm, "detail": counts})
                result = self.state.grant(
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
                    round_trips=self.state.round_trips - self._reported_trips + 1,  # + this grant
                )
                self._reported_trips = self.state.round_trips
                version, raw = result.version, result.entries
                if not result.applied:
                    continue  # someone else changed the entries: decide again on the fresh ones
                finished, busy, switches = None, 0.0, 0
                self._unreleased = None
                if decision.chosen is None:
                    self.stop_event.wait(IDLE_POLL)
                    version, raw = self.state.sched_snapshot()
                    continue
                lone = runs_alone(self.policy, entries, decision.chosen, now)
                started = time.perf_counter()
                boot = int(entries[decision.chosen].extra.get("boot", 0))
                ended, switches, slice_exits = self.run_slice(
                    decision.chosen, result.token, lone=lone, boot=boot
                )
                busy = time.perf_counter() - started
                finished = SliceOutcome(decision.chosen, result.token, busy, ended)
                self._unreleased = finished
            except Exception as exc:  # Redis or the pCPU went away: keep trying, say why
                log.warning("pCPU %s: %s", self.pcpu, exc)
                self.stop_event.wait(0.5)
                with contextlib.suppress(Exception):
                    version, raw = self.state.sched_snapshot()

    # -- one slice ------------------------------------------------------------------------------
    def run_slice(
        self, vm: str, token: int, *, lone: bool = False, boot: int = 0
    ) -> tuple[str, int, dict[str, int]]:
        """Run boot ``boot`` of ``vm`` for one slice (stretched when ``lone``: no other VM waits);
        returns (how it ended, world switches, exits by reason)."""
        try:
            rt = self.runtimes.get(vm, self.state, boot)
        except Exception as exc:
            log.warning("VM %s cannot run: %s", vm, exc)
            return "lost", 0, {}
        remote = rt.remote
        guest = remote.vm
        vmm = rt.vmm
        vmm.setdefault("started", time.time())
        exits = vmm.setdefault("exits_by_reason", {})
        seen: dict[str, int] = {}
        switches = 0
        limit = rt.definition.get("max_instructions")
        left = None if limit is None else int(limit) - guest.cpu.stats.retired
        plan = plan_slice(self.policy, lone=lone, rate=rt.rate, left=left)
        budget = plan.instructions
        start, started = guest.cpu.stats.retired, time.perf_counter()
        slice_end = start + budget
        deadline = started + plan.seconds  # then the slice ends at the first exit

        def until() -> bool:
            return time.perf_counter() > deadline

        committed_at_switch = False
        """The pCPU committed at the last switch (a run that ended the slice carried the commit)."""

        def link(
            budget: int,
            sync: cpu_pb2.VcpuSync,
            controls: common_pb2.Controls,
            nested: int,
            tc: cpu_pb2.TcRun | None,
        ) -> cpu_pb2.RunVcpuResponse:
            nonlocal switches, committed_at_switch
            request = cpu_pb2.RunVcpuRequest(
                vm=vm,
                lease_token=token,
                generation=rt.generation,
                budget=budget,
                controls=controls,
                sync=sync,
                nested_ram_size=nested,
                tc=tc,
            )
            if guest.cpu.stats.retired + budget >= slice_end:  # this run may end the slice
                request.commit.CopyFrom(self._commit_request(rt))
            response = self.stub.RunVcpu(request, timeout=60)
            switches += 1
            committed_at_switch = response.generation != rt.generation
            if committed_at_switch:
                self._committed(rt, response, len(guest.devices.console))
            name = ""
            if response.HasField("tc") and response.tc.event:  # translated code called the VMM
                name = VmmCall(response.tc.event).exit_name
            elif response.exit.reason != common_pb2.EXIT_REASON_BUDGET:
                name = REASON_NAMES.get(response.exit.reason, str(response.exit.reason))
            if name:
                exits[name] = exits.get(name, 0) + 1
                seen[name] = seen.get(name, 0) + 1
                vmm["exits"] = int(vmm.get("exits", 0)) + 1
            return response

        remote.link = link
        stop: Stop | None = None
        how = "preempted"
        failed = False
        try:
            outcome = guest.advance(budget, until) if budget > 0 else None
            if isinstance(outcome, Stop):
                stop = outcome
            elif outcome is not None:
                how = "idle"  # the guest idles in hlt: it yields the rest of its slice
            elif limit is not None and guest.cpu.stats.retired >= int(limit):
                stop = Stop("limit", None, f"{limit} instructions retired")
        except grpc.RpcError as err:
            return self._lost(vm, err, switches, seen)
        except Exception as exc:  # a fault in the VMM itself: end this VM, keep the pCPU going
            log.exception("VM %s: the hypervisor failed handling its exit", vm)
            failed = True  # its copy may be half-changed: commit the pCPU's state as it is
            stop = Stop("shutdown", None, f"hypervisor error while handling an exit: {exc!r}")
        elapsed = time.perf_counter() - started
        if how == "preempted" and elapsed > 0:  # a full slice: what the next one may stretch to
            rt.rate = measured_rate(guest.cpu.stats.retired - start, elapsed)
        if stop is None and committed_at_switch and not remote.changed_since_switch():
            return how, switches, seen  # the slice's last run committed it, and nothing came after
        try:
            self._final_commit(rt, token, stop, failed)
        except grpc.RpcError as err:
            return self._lost(vm, err, switches + 1, seen)
        except Exception:  # building the commit failed: this copy cannot be trusted, reload it
            log.exception("VM %s: the hypervisor failed to commit its slice", vm)
            self.runtimes.drop(vm)
            return "lost", switches, seen
        switches += 1
        if stop is not None:
            self.runtimes.drop(vm)
            return "ended", switches, seen
        return how, switches, seen

    # -- commits ----------------------------------------------------------------------------------
    @staticmethod
    def _commit_request(rt: VmRuntime, stop: Stop | None = None) -> cpu_pb2.CommitRequest:
        remote = rt.remote
        commit = cpu_pb2.CommitRequest(console=remote.new_console(), stats_json=remote.statistics(stop))
        if stop is not None:
            rt.vmm["ended"] = time.time()
            commit.status, code, commit.detail = stop_status(stop)
            if code is not None:
                commit.code = code
        commit.vmm_state = json.dumps(rt.vmm)
        return commit

    @staticmethod
    def _committed(rt: VmRuntime, response: cpu_pb2.RunVcpuResponse, console_end: int) -> None:
        rt.generation = response.generation
        rt.remote.console_committed = console_end

    def _final_commit(
        self, rt: VmRuntime, token: int, stop: Stop | None = None, failed: bool = False
    ) -> None:
        """A RunVcpu that runs nothing and commits: the hypervisor's last changes go with it."""
        remote = rt.remote
        request = cpu_pb2.RunVcpuRequest(
            vm=rt.vm,
            lease_token=token,
            generation=rt.generation,
            budget=0,
            controls=remote.controls(),
            sync=None if failed else remote.sync(),
            commit=self._commit_request(rt, stop),
        )
        response = self.stub.RunVcpu(request, timeout=60)
        self._committed(rt, response, len(remote.vm.devices.console))

    def _lost(
        self, vm: str, err: grpc.RpcError, switches: int, seen: dict[str, int]
    ) -> tuple[str, int, dict[str, int]]:
        """A refused commit (stale lease: paused, stopped, destroyed or re-granted), a stale
        generation or a dead pCPU: drop what this slice did; the VM resumes from its commit."""
        log.info("VM %s slice on %s abandoned: %s: %s", vm, self.pcpu, err.code(), err.details())
        self.runtimes.drop(vm)
        return "lost", switches, seen
