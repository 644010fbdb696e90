"""Running chaos against a deployment: a schedule of faults (seeded random, or given), the
recorder that writes the history while they happen, and the split-brain scenario of the lab's
broken-fencing exercise.

The recorder follows the hypervisor's event stream (``StreamEvents``, resumed from its cursor
whenever the hypervisor or Redis is down), notes every restart the local supervisor makes, and at
the end waits for every VM to end, then records each VM's result (``WaitVm``), the events it missed
and the store's commit log since the start.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import heapq
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ringlab.cli.chaos.history import History
from ringlab.cli.chaos.targets import ACTIONS, KINDS, Target, Targets
from ringlab.errors import DeploymentFailed, UsageError
from ringlab.sched.credit import TERMINAL

__all__ = [
    "KINDS",
    "Fault",
    "Injector",
    "Recorder",
    "parse_schedule",
    "random_schedule",
    "run_schedule",
    "split_brain",
]

LOOKBACK_SECONDS = 5.0
"""The history starts with the events and commits of this long before the run (the slices the
VMs were in when it began)."""
TRAILING_SECONDS = 1.5
"""After the last VM ended, how long the recorder still listens (the pCPUs report the slices the
VMs ended in with their next grant)."""


@dataclass(frozen=True)
class Fault:
    at: float
    """Seconds after the run's start."""
    action: str
    target: str
    """A kind (cpu, hypervisor, guest, redis: one of them, chosen by the seed) or a target's name."""
    seconds: float = 0.0
    """How long a pause or a partition lasts."""


def parse_schedule(text: str) -> list[Fault]:
    """``T:ACTION:TARGET[:SECONDS],...``, e.g. ``2:kill:cpu0,4.5:pause:redis:3``."""
    out = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        fields = item.split(":")
        if len(fields) not in (3, 4):
            raise UsageError(
                f"--schedule entry {item!r}: want SECONDS:ACTION:TARGET[:SECONDS], e.g. 2:kill:cpu0"
            )
        try:
            at = float(fields[0])
            seconds = float(fields[3]) if len(fields) == 4 else 0.0
        except ValueError:
            raise UsageError(f"--schedule entry {item!r}: the times are seconds, e.g. 2.5") from None
        if fields[1] not in ACTIONS:
            raise UsageError(f"--schedule entry {item!r}: the action is one of {', '.join(ACTIONS)}")
        if fields[1] in ("pause", "partition") and seconds <= 0:
            seconds = 2.0
        out.append(Fault(at, fields[1], fields[2], seconds))
    return sorted(out, key=lambda f: f.at)


def random_schedule(
    rng: random.Random,
    *,
    faults: int,
    every: float,
    actions: tuple[str, ...],
    kinds: tuple[str, ...],
    pause: float,
    start: float = 1.0,
) -> list[Fault]:
    """``faults`` faults, one every ``every`` seconds on average (uniformly 0.5-1.5 times it),
    each an action and a kind drawn from the seeded ``rng``; pauses last 0.2 s to ``pause``."""
    out, at = [], start
    for _ in range(faults):
        action, kind = rng.choice(actions), rng.choice(kinds)
        seconds = round(rng.uniform(0.2, pause), 3) if action in ("pause", "partition") else 0.0
        out.append(Fault(round(at, 3), action, kind, seconds))
        at += rng.uniform(0.5 * every, 1.5 * every)
    return out


# -- the recorder -------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def _rebuilt_sha(workload: str, kernel: str, defines: tuple[tuple[str, int], ...]) -> str:
    from ringlab.guestos.build import build_image

    try:
        return hashlib.sha256(build_image(workload, kernel, dict(defines)).to_bytes()).hexdigest()
    except Exception:
        return ""


class Recorder:
    """Writes what the deployment did into ``history`` while chaos runs."""

    def __init__(self, history: History, targets: Targets, token: str = "") -> None:
        from ringlab.rpc import open_channel
        from ringlab.v1 import hypervisor_pb2_grpc

        self.history = history
        self.targets = targets
        self.channel = open_channel(targets.hypervisor, token)
        self.stub = hypervisor_pb2_grpc.HypervisorStub(self.channel)
        self.started = time.time()
        self.cursor = f"{int((self.started - LOOKBACK_SECONDS) * 1000)}-0"
        self.commit_cursor = self.cursor
        self.stop_event = threading.Event()
        self._stream: Any = None
        self._changed = threading.Condition()
        self.recorded: set[str] = set()
        self._threads: list[threading.Thread] = []

    # -- following ---------------------------------------------------------------------------
    def start(self) -> None:
        for target, name in ((self._follow, "chaos-events"), (self._watch_services, "chaos-services")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _event(self, e: Any) -> None:
        self.history.add(
            "event", time=e.time, cursor=e.cursor, kind=e.kind, vm=e.vm, pcpu=e.pcpu, detail=e.detail
        )
        self.cursor = e.cursor
        with self._changed:
            self._changed.notify_all()

    def _follow(self) -> None:
        from ringlab.v1 import hypervisor_pb2

        while not self.stop_event.is_set():
            try:
                self._stream = self.stub.StreamEvents(
                    hypervisor_pb2.StreamEventsRequest(follow=True, after=self.cursor)
                )
                for e in self._stream:
                    self._event(e)
            except Exception:  # the hypervisor or Redis is down: resume from the cursor
                self.stop_event.wait(0.3)

    def _watch_services(self) -> None:
        read = getattr(self.targets, "services", None)
        if read is None:
            return
        seen: dict[str, Any] = {}
        while not self.stop_event.wait(0.2):
            try:
                services = read()
            except Exception:
                continue
            for s in services:
                key = str(s.get("name"))
                if key in seen and seen[key] != s.get("pid"):
                    self.history.add("service", name=key, pid=s.get("pid"), restarts=s.get("restarts"))
                seen[key] = s.get("pid")

    def wait_event(
        self, match: Callable[[dict[str, Any]], bool], timeout: float, since: float = 0.0
    ) -> dict[str, Any] | None:
        """The first recorded event (at or after ``since``) that ``match`` accepts, waiting up to
        ``timeout`` seconds for it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for r in list(self.history.records):
                    if r["type"] == "event" and r["time"] >= since and match(r):
                        return r
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(min(left, 0.25))

    # -- VMs -----------------------------------------------------------------------------------
    def _list_vms(self, deadline: float) -> list[Any]:
        from ringlab.v1 import hypervisor_pb2

        while True:
            try:
                return list(self.stub.ListVms(hypervisor_pb2.ListVmsRequest(), timeout=10).vms)
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise DeploymentFailed(
                        f"the hypervisor at {self.targets.hypervisor} does not answer: {exc}"
                    ) from None
                time.sleep(0.5)

    def record_vm(self, vm: str, name: str) -> None:
        if vm in self.recorded:
            return
        definition: dict[str, Any] = {}
        image: str | None = None
        for _attempt in range(40):
            try:
                definition, blob = self.targets.store.definition(vm)
                break
            except Exception:
                time.sleep(0.5)
        else:
            blob = b""
        if blob and definition:
            rebuilt = ""
            if definition.get("workload") and definition.get("kernel") not in (None, "", "none"):
                defines = tuple(sorted((definition.get("defines") or {}).items()))
                rebuilt = _rebuilt_sha(str(definition["workload"]), str(definition["kernel"]), defines)
            if rebuilt != hashlib.sha256(blob).hexdigest():
                image = base64.b64encode(blob).decode()
        self.history.add("vm", id=vm, name=name, definition=definition, image=image)
        self.recorded.add(vm)

    def wait_ended(self, timeout: float) -> bool:
        """Wait until every started VM has ended (True), or ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            vms = self._list_vms(deadline=deadline + 60)
            for vm in vms:
                self.record_vm(vm.id, vm.name)
            from ringlab.cli.deployment import vm_row

            live = [vm for vm in vms if vm_row(vm)["status"] not in TERMINAL | {"created"}]
            if not live:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)

    def finish(self, ended: bool) -> None:
        """Record every VM's result, the events not seen yet and the commit log; stop following."""
        from ringlab.cli.deployment import vm_row
        from ringlab.v1 import hypervisor_pb2

        time.sleep(TRAILING_SECONDS)
        self.stop_event.set()
        if self._stream is not None:
            self._stream.cancel()
        for thread in self._threads:
            thread.join(timeout=5)
        deadline = time.monotonic() + 60
        while True:  # the events the follower missed (it was reconnecting at the end)
            try:
                for e in self.stub.StreamEvents(
                    hypervisor_pb2.StreamEventsRequest(follow=False, after=self.cursor), timeout=30
                ):
                    self._event(e)
                break
            except Exception:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.5)
        for vm in self._list_vms(deadline=time.monotonic() + 60):
            self.record_vm(vm.id, vm.name)
            row = vm_row(vm)
            doc = None
            if row["status"] in TERMINAL:
                try:
                    result = self.stub.WaitVm(
                        hypervisor_pb2.WaitVmRequest(vm=vm.id, timeout_seconds=10), timeout=30
                    )
                    import json

                    doc = json.loads(result.result_json)
                except Exception as exc:
                    self.history.add("note", text=f"WaitVm {vm.name}: {exc}")
            self.history.add(
                "result",
                vm=vm.id,
                name=vm.name,
                status=row["status"],
                doc=doc,
                credit=vm.stats.credit,
                cpu_seconds=vm.stats.cpu_seconds,
            )
        for commit in self.commits_since(self.commit_cursor):
            self.history.add(
                "commit",
                time=float(commit.get("time") or 0),
                **{k: v for k, v in commit.items() if k != "time"},
            )
        self.history.add("end", ended=ended, seconds=time.time() - self.started)
        self.channel.close()

    def commits_since(self, cursor: str) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        deadline = time.monotonic() + 60
        while True:
            try:
                page = self.targets.store.commits(cursor)
            except Exception:
                if time.monotonic() > deadline:
                    self.history.add("note", text="the commit log could not be read (Redis unreachable)")
                    return out
                time.sleep(0.5)
                continue
            if not page:
                return out
            out += page
            cursor = page[-1]["cursor"]


# -- faults ---------------------------------------------------------------------------------------
class Injector:
    """Acts on targets, records each fault, and ends pauses and partitions when due (always, even
    when interrupted: nothing is left stopped)."""

    def __init__(self, history: History, targets: Targets, rng: random.Random) -> None:
        self.history = history
        self.targets = targets
        self.rng = rng
        self._due: list[tuple[float, int, str, Target]] = []
        self.count = 0

    def pick(self, selector: str) -> Target | None:
        found = self.targets.targets()
        named = [t for t in found if t.name == selector]
        if named:
            return named[0]
        of_kind = sorted((t for t in found if t.kind == selector), key=lambda t: t.name)
        return self.rng.choice(of_kind) if of_kind else None

    def inject(
        self, action: str, target: Target, seconds: float = 0.0, *, recover: bool = True
    ) -> dict[str, Any]:
        """Start ``action`` on ``target`` and record it; with ``recover``, a pause or partition
        ends after ``seconds``, and a killed guest (or container) is started again when due."""
        info = self.targets.act(action, target)
        record = self.history.add(
            "fault",
            action=action,
            target=target.name,
            kind=target.kind,
            pcpu=target.pcpu,
            seconds=seconds,
            **info,
        )
        self.count += 1
        relaunched = target.kind == "guest" or (self.targets.kind == "compose" and action == "kill")
        if recover and (action in ("pause", "partition") or (action in ("kill", "restart") and relaunched)):
            heapq.heappush(self._due, (time.monotonic() + seconds, self.count, action, target))
        return record

    def recover_due(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        while self._due and self._due[0][0] <= now:
            _when, _n, action, target = heapq.heappop(self._due)
            self._recover(action, target)

    def _recover(self, action: str, target: Target) -> None:
        try:
            info = self.targets.recover(action, target)
        except Exception as exc:
            self.history.add("note", text=f"could not end {action} of {target.name}: {exc}")
            return
        if info is not None:
            self.history.add("recover", action=action, target=target.name, kind=target.kind, **info)

    def sleep_until(self, when: float) -> None:
        while (left := when - time.monotonic()) > 0:
            next_due = self._due[0][0] if self._due else when
            time.sleep(max(0.0, min(left, next_due - time.monotonic(), 0.05)))
            self.recover_due()

    def recover_all(self) -> None:
        """End every pause and partition now (and relaunch what is due)."""
        while self._due:
            _when, _n, action, target = heapq.heappop(self._due)
            self._recover(action, target)


def run_schedule(injector: Injector, schedule: list[Fault], t0: float) -> None:
    try:
        for fault in schedule:
            injector.sleep_until(t0 + fault.at)
            injector.recover_due()
            target = injector.pick(fault.target)
            if target is None:
                injector.history.add("note", text=f"no {fault.target} to {fault.action} at +{fault.at:g} s")
                continue
            try:
                injector.inject(fault.action, target, fault.seconds)
            except (ProcessLookupError, PermissionError) as exc:
                injector.history.add("note", text=f"{fault.action} {target.name}: {exc}")
        if injector._due:
            injector.sleep_until(max(when for when, *_ in injector._due))
    finally:
        injector.recover_all()


# -- the split-brain scenario --------------------------------------------------------------------
def split_brain(
    recorder: Recorder, injector: Injector, vm_name: str, *, lease_wait: float = 90.0, attempts: int = 3
) -> bool:
    """The lab's broken-fencing exercise: pause the pCPU running ``vm_name`` mid-slice past its
    grant's lease, so the VM is granted to another pCPU; pause that one before it commits; resume
    the first: it finishes its slice and commits with its old token (refused when commits are
    fenced; landing when ``RINGLAB_UNSAFE_NO_FENCING=1``); then resume the second.  True when
    the old holder's commit was attempted while the VM was granted elsewhere."""
    from ringlab.v1 import hypervisor_pb2

    vm_id = recorder.stub.DescribeVm(hypervisor_pb2.VmRef(vm=vm_name), timeout=30).id
    for attempt in range(1, attempts + 1):
        now = time.time()
        first = recorder.wait_event(
            lambda e: e["vm"] == vm_id and e["kind"] == "scheduled", 60, since=now - 1
        )
        if first is None:
            recorder.history.add("note", text=f"split-brain: VM {vm_name} was not scheduled within 60 s")
            return False
        holder = str(first["pcpu"])
        old = next((t for t in injector.targets.targets() if t.kind == "cpu" and t.pcpu == holder), None)
        if old is None:
            recorder.history.add("note", text=f"split-brain: no cpu service is pCPU {first['pcpu']}")
            return False
        injector.inject("pause", old, recover=False)  # resumed by hand below
        paused_at = time.time()
        try:

            def elsewhere(e: dict[str, Any], holder: str = holder) -> bool:
                return bool(e["vm"] == vm_id and e["kind"] == "scheduled" and e["pcpu"] != holder)

            moved = recorder.wait_event(elsewhere, lease_wait, since=paused_at)
            new = None
            if moved is not None:
                new = next(
                    (t for t in injector.targets.targets() if t.kind == "cpu" and t.pcpu == moved["pcpu"]),
                    None,
                )
                if new is not None:
                    injector.inject("pause", new, recover=False)
        finally:
            resumed = time.time()
            injector._recover("pause", old)
        if moved is None or new is None:
            recorder.history.add(
                "note", text=f"split-brain: VM {vm_name} did not move within {lease_wait:g} s"
            )
            return False
        try:
            deadline = time.monotonic() + 30
            stale: list[dict[str, str]] = []
            while time.monotonic() < deadline and not stale:
                time.sleep(0.2)
                commits = [c for c in recorder.commits_since(recorder.commit_cursor) if c.get("vm") == vm_id]
                # The old holder's commit: after it was resumed, with a token that is not the grant.
                stale = [
                    c
                    for c in commits
                    if float(c.get("time") or 0) >= resumed and c.get("token") != c.get("current")
                ]
            early = [
                c for c in commits
                if c.get("outcome") == "applied" and c.get("pcpu") == moved["pcpu"] and float(c.get("time") or 0) < resumed
                and float(c.get("time") or 0) >= paused_at
            ]  # fmt: skip
        finally:
            injector._recover("pause", new)
        if stale and not early:
            return True
        recorder.history.add(
            "note",
            text=f"split-brain attempt {attempt}: missed the window (the new holder committed first); again",
        )
    return False
