"""The checker: what a chaos history must show, in the spirit of Jepsen's checkers and
Maelstrom's: the run is judged by what was observed, against a model (here: the same VM run
in-process, which is deterministic).

Properties (each passes or fails, with the evidence):

    ended           every started VM ended (a VM still running, or gone, is lost)
    equivalent      each VM ended with the console, exit, registers and guest statistics of its
                    in-process run (``ringlab.vmm.run_vm``, same image and technique; under bt
                    the counts that depend on slice boundaries are left out, as in the tests)
    fenced          no commit landed with a stale token: every applied commit carried the grant
                    current at that moment, for a running VM (the commit log's ``current``)
    monotonic       committed state never went backwards: per VM, each applied commit's
                    generation is above the last one, and its retired count is not below it
                    (within one boot: a reboot starts the count again)
    uncharged       no slice that was lost took credit from its VM: the scheduler's own record of
                    each slice (the "descheduled" event: how it ended, its span, the credit it
                    charged) says 0 for every lost one

Measures (reported; a property only when a bound is given):

    failover        per fault of a pCPU, the hypervisor or Redis, and per VM it hit (a VM holding
                    a slice on the failed part at that moment): the time from the fault to the VM
                    running again, i.e. to the start of its next slice that was not lost (or to
                    the end of the slice it was in, when that slice survived the fault)
    ready           of that time, how long the deployment could run no VM at all: the hypervisor
                    or Redis down, or every pCPU (a paused part is down until it was resumed; a
                    killed or restarted one until the deployment's own record shows it serving
                    again: a pCPU's next grant, the hypervisor's first grant, Redis' first event)
    resumed         failover minus ready: how long the VM waited while it could have run
    lost            host time those VMs spent in slices that were lost, after the fault (failed
                    time, which the uncharged property checks was not taken from their credit)
    charged         the credit (host seconds) the scheduler took from them for those lost slices

The failover bound (``failover_bound``; ``"lease"``: each grant's own) is the design's promise
for a *pCPU* failover: a VM whose pCPU is killed, paused or restarted resumes within the lease
plus one slice (a quarter of the lease, ``sched.slices.LEASE_FRACTION``): the lease, after
which the scheduler may grant the VM again, and the slice another pCPU may be in the middle of.
It is judged on ``resumed``, for faults of a cpu service only.  A VM cannot resume on no pCPU,
so the time no pCPU (or no hypervisor, or no Redis) was up is not held against it (``ready``); a
fault of the hypervisor or Redis is not a pCPU failover (the VMs wait for the restart, which
the bound does not cover) and its figures are only reported.  The lease is the one the victim's
grant recorded (its "scheduled" event: ``credit C lease L``), so the bound is the deployment's
own, not a figure the checker assumes; failover times are host time, which a busy machine
stretches: measured, judged only when asked.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ringlab.sched.credit import TERMINAL
from ringlab.sched.slices import LEASE_FRACTION

__all__ = [
    "SLICE_DEPENDENT",
    "Failover",
    "Property",
    "Verdict",
    "check",
    "comparable",
    "failover_bound_of",
    "expected_result",
]

SLICE_DEPENDENT = ("translations", "translated_instructions", "cycles")
"""bt translates from where a slice starts, so slice boundaries add a few blocks: these counts,
and the simulated cycles that price them, depend on the scheduling slices; nothing else does
(tests/services/test_equivalence.py leaves out the same)."""
FAULTS_THAT_MOVE_VMS = frozenset({"cpu", "hypervisor", "redis"})
"""The targets whose failure interrupts the VMs that hold a slice (a guest only owns its VM)."""
BOUNDED = frozenset({"cpu"})
"""The faults the failover bound is judged on: a pCPU's (see the module's docstring)."""

Expected = Callable[[dict[str, Any], bytes | None], dict[str, Any]]


@dataclass
class Property:
    name: str
    summary: str
    checked: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass
class Failover:
    """One VM hit by one fault."""

    fault: int
    """The fault's index in the history's faults (0, 1, ...)."""
    action: str
    target: str
    vm: str
    seconds: float | None
    """From the fault to the VM running again; None: it never ran again in the history."""
    lost: float
    """Host seconds the VM spent in slices that were lost, after the fault."""
    charged: float
    """The credit (host seconds) the scheduler took from the VM for those lost slices."""
    kind: str = "cpu"
    """The kind of the failed target (cpu, hypervisor, redis)."""
    ready: float = 0.0
    """Of ``seconds``, the time the deployment could run no VM at all (the hypervisor or Redis
    down, or every pCPU): not the failover's to account for."""
    bound: float | None = None
    """The lease plus one slice of the grant the VM held at the fault (None: not recorded)."""

    @property
    def resumed(self) -> float | None:
        """From when the deployment could run the VM to when it ran: what the bound judges."""
        if self.seconds is None:
            return None
        return max(0.0, self.seconds - self.ready)

    @property
    def over_bound(self) -> bool:
        """A pCPU failover that took longer than its bound (or never ended)."""
        if self.kind not in BOUNDED or self.bound is None:
            return False
        resumed = self.resumed
        return resumed is None or resumed > self.bound


@dataclass
class Verdict:
    properties: list[Property]
    vms: int
    faults: list[dict[str, Any]]
    failovers: list[Failover]
    commits: dict[str, int]

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.properties)

    def failover_figures(self) -> dict[str, Any]:
        times = [f.seconds for f in self.failovers if f.seconds is not None]
        pcpu = [f for f in self.failovers if f.kind in BOUNDED]
        resumed = [r for f in pcpu if (r := f.resumed) is not None]
        return {
            "victims": len(self.failovers),
            "recovered": len(times),
            "median_seconds": statistics.median(times) if times else None,
            "max_seconds": max(times) if times else None,
            "pcpu_victims": len(pcpu),
            "pcpu_median_resumed_seconds": statistics.median(resumed) if resumed else None,
            "pcpu_max_resumed_seconds": max(resumed) if resumed else None,
            "pcpu_over_bound": sum(1 for f in pcpu if f.over_bound),
            "lost_seconds": sum(f.lost for f in self.failovers),
            "max_lost_seconds": max((f.lost for f in self.failovers), default=0.0),
            "charged_seconds": sum(f.charged for f in self.failovers),
            "max_charged_seconds": max((f.charged for f in self.failovers), default=0.0),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "vms": self.vms,
            "faults": len(self.faults),
            "commits": self.commits,
            "properties": [
                {
                    "name": p.name,
                    "ok": p.ok,
                    "checked": p.checked,
                    "summary": p.summary,
                    "failures": p.failures,
                }
                for p in self.properties
            ],
            "failover": self.failover_figures(),
            "victims": [
                {
                    "fault": f.fault,
                    "action": f.action,
                    "target": f.target,
                    "vm": f.vm,
                    "kind": f.kind,
                    "seconds": f.seconds,
                    "ready_seconds": f.ready,
                    "resumed_seconds": f.resumed,
                    "bound_seconds": f.bound,
                    "over_bound": f.over_bound,
                    "lost_seconds": f.lost,
                    "charged_seconds": f.charged,
                }
                for f in self.failovers
            ],
        }


# -- the model: the in-process run ----------------------------------------------------------------
def comparable(doc: dict[str, Any], technique: str) -> dict[str, Any]:
    """What must be equal between a run through the services and in-process: everything but the
    host's figures and, under bt, the slice-dependent counts.  The simulated cycles are compared
    too: a pCPU that reloads a VM cold makes the walks the uninterrupted run makes (issue 13,
    tests/services/test_reload_equivalence.py)."""
    out = {k: v for k, v in doc.items() if k != "stats"}
    guest = dict(doc.get("stats", {}).get("guest", {}))
    if technique == "bt":
        guest = {k: v for k, v in guest.items() if k not in SLICE_DEPENDENT}
    out["guest"] = guest
    return out


_EXPECTED: dict[tuple[Any, ...], dict[str, Any]] = {}


def _image_of(definition: dict[str, Any], image: bytes | None) -> bytes:
    if image is not None:
        return image
    from ringlab.guestos.build import build_image

    built = build_image(
        definition["workload"], definition["kernel"], dict(definition.get("defines") or {})
    ).to_bytes()
    want = definition.get("image_sha256")
    if want and hashlib.sha256(built).hexdigest() != want:
        raise ValueError(
            f"VM {definition.get('name')}: its image is not workload {definition['workload']!r} built "
            "here (record the history with the store reachable: it keeps the image then)"
        )
    return built


def expected_result(definition: dict[str, Any], image: bytes | None) -> dict[str, Any]:
    """The in-process run's JSON object for a VM defined so (``image`` None: rebuilt from its
    workload), computed once per definition in this process."""
    from ringlab.image import Image
    from ringlab.vmm import run_vm

    blob = _image_of(definition, image)
    key = (
        hashlib.sha256(blob).hexdigest(),
        definition["technique"],
        bool(definition.get("nested_paging")),
        int(definition.get("memory_size") or 4 << 20),
        definition.get("max_instructions"),
        definition.get("input") or "",
    )
    if key not in _EXPECTED:
        _EXPECTED[key] = run_vm(
            Image.from_bytes(blob),
            technique=definition["technique"],
            nested_paging=bool(definition.get("nested_paging")),
            memory_size=key[3],
            max_instructions=key[4],
            input=key[5].encode("latin-1"),
        ).to_json()
    return _EXPECTED[key]


def _first_difference(got: bytes, want: bytes) -> str:
    at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    return (
        f"{len(got)} bytes, expected {len(want)}; first difference at byte {at}: "
        f"{got[max(0, at - 12) : at + 12]!r} vs {want[max(0, at - 12) : at + 12]!r}"
    )


def _differences(got: dict[str, Any], want: dict[str, Any]) -> list[str]:
    out = []
    if got.get("console") != want.get("console"):
        g = str(got.get("console", "")).encode("latin-1", "replace")
        w = str(want.get("console", "")).encode("latin-1", "replace")
        out.append(f"console differs ({_first_difference(g, w)})")
    if got.get("exit") != want.get("exit"):
        out.append(f"exit differs: {got.get('exit')} vs {want.get('exit')}")
    regs = sorted(k for k in set(got.get("registers", {})) | set(want.get("registers", {}))
                  if got.get("registers", {}).get(k) != want.get("registers", {}).get(k))  # fmt: skip
    if regs:
        out.append("registers differ: " + ", ".join(regs[:6]))
    gs, ws = got.get("guest", {}), want.get("guest", {})
    stats = sorted(k for k in set(gs) | set(ws) if gs.get(k) != ws.get(k))
    if stats:
        out.append(
            "guest statistics differ: " + ", ".join(f"{k} {gs.get(k)} vs {ws.get(k)}" for k in stats[:4])
        )
    rest = sorted(k for k in set(got) | set(want) if k not in ("console", "exit", "registers", "guest")
                  and got.get(k) != want.get(k))  # fmt: skip
    if rest:
        out.append("differs in: " + ", ".join(rest))
    return out


# -- slices, from the event stream ---------------------------------------------------------------
@dataclass
class _Slice:
    vm: str
    pcpu: str
    granted: float
    end: float | None = None
    how: str = ""
    """preempted, idle, ended, lost; "" when no pCPU reported it (its driver died)."""
    charged: float = 0.0
    """The credit the scheduler took for it (its "descheduled" event's fourth field)."""
    lease: float | None = None
    """The grant's lease, when its "scheduled" event says it (``credit C lease L``)."""


def _lease_of(detail: str) -> float | None:
    parts = detail.split()
    for key, value in itertools.pairwise(parts):
        if key == "lease":
            try:
                return float(value)
            except ValueError:
                return None
    return None


def failover_bound_of(lease: float) -> float:
    """The lease plus one slice (``1 / LEASE_FRACTION`` of the lease): how soon a VM whose pCPU
    failed must run again."""
    return lease * (1 + 1 / LEASE_FRACTION)


def _slices(events: list[dict[str, Any]]) -> dict[str, list[_Slice]]:
    """Per VM, its slices in grant order: a "scheduled" event opens one on its pCPU, the next
    "descheduled" of that VM on that pCPU closes it (detail: how start end charged)."""
    open_: dict[tuple[str, str], _Slice] = {}
    out: dict[str, list[_Slice]] = {}
    for e in events:
        vm, pcpu, kind = e.get("vm", ""), e.get("pcpu", ""), e.get("kind", "")
        if kind == "scheduled":
            s = _Slice(vm, pcpu, float(e["time"]), lease=_lease_of(str(e.get("detail", ""))))
            open_[(vm, pcpu)] = s
            out.setdefault(vm, []).append(s)
        elif kind == "descheduled":
            s_ = open_.pop((vm, pcpu), None)
            if s_ is None:
                continue
            parts = str(e.get("detail", "")).split()
            s_.how = parts[0] if parts else ""
            try:
                s_.end = float(parts[2])
            except (IndexError, ValueError):
                s_.end = float(e["time"])
            try:
                s_.charged = float(parts[3])
            except (IndexError, ValueError):
                s_.charged = 0.0
    return out


Intervals = dict[str, list[tuple[float, float]]]


def _part(fault: dict[str, Any]) -> str:
    """What a fault took down: its pCPU (``pcpu:ID``), or the hypervisor or Redis as a whole."""
    return f"pcpu:{fault.get('pcpu')}" if fault.get("kind") == "cpu" else str(fault.get("kind"))


def _down(records: list[dict[str, Any]], events: list[dict[str, Any]]) -> Intervals:
    """When each part was down, from the history: a paused (or cut-off) part from the fault to
    its resumption; a killed or restarted one from the fault to the deployment's own record of
    it serving again (a pCPU: its next grant; the hypervisor: its first grant; Redis: the first
    event written to it), after the chaos runner saw its new process."""
    out: Intervals = {}
    recovers = [r for r in records if r["type"] == "recover"]
    services = [r for r in records if r["type"] == "service"]
    for fault in (r for r in records if r["type"] == "fault"):
        kind = fault.get("kind")
        if kind not in FAULTS_THAT_MOVE_VMS:
            continue
        at = float(fault["time"])
        end: float | None
        if fault.get("action") in ("pause", "partition"):
            end = next(
                (float(r["time"]) for r in recovers
                 if r.get("target") == fault.get("target") and float(r["time"]) >= at),
                at + float(fault.get("seconds") or 0),
            )  # fmt: skip
        else:
            after = next(
                (float(r["time"]) for r in services
                 if r.get("name") == fault.get("target") and float(r["time"]) >= at),
                at,
            )  # fmt: skip
            end = next(
                (float(e["time"]) for e in events
                 if float(e["time"]) > after and (
                     (kind == "cpu" and e.get("kind") == "scheduled" and e.get("pcpu") == fault.get("pcpu"))
                     or (kind == "hypervisor" and e.get("kind") == "scheduled")
                     or kind == "redis")),
                None,
            )  # fmt: skip
        out.setdefault(_part(fault), []).append((at, float("inf") if end is None else end))
    return out


def _unavailable(start: float, stop: float, down: Intervals, pcpus: set[str]) -> float:
    """Seconds between ``start`` and ``stop`` when the deployment could run no VM: the
    hypervisor or Redis was down, or every pCPU was."""

    def up(part: str, x: float) -> bool:
        return not any(a <= x < b for a, b in down.get(part, ()))

    def runs(x: float) -> bool:
        return up("hypervisor", x) and up("redis", x) and (not pcpus or any(up(p, x) for p in pcpus))

    cuts = sorted(
        {start, stop} | {t for spans in down.values() for span in spans for t in span if start < t < stop}
    )
    return sum(b - a for a, b in itertools.pairwise(cuts) if not runs(a))


def _failovers(
    faults: list[dict[str, Any]],
    events: list[dict[str, Any]],
    ended_at: dict[str, float],
    down: Intervals | None = None,
) -> list[Failover]:
    slices = _slices(events)
    down = down or {}
    pcpus = {f"pcpu:{e['pcpu']}" for e in events if e.get("pcpu")} | {
        _part(f) for f in faults if f.get("kind") == "cpu"
    }
    out = []
    for index, fault in enumerate(faults):
        if fault.get("kind") not in FAULTS_THAT_MOVE_VMS:
            continue
        at = float(fault["time"])
        for vm, mine in sorted(slices.items()):
            before = [s for s in mine if s.granted <= at]
            if not before or (vm in ended_at and ended_at[vm] < at):
                continue
            hit = before[-1]  # the slice it held at the fault, if that one had not ended
            if (hit.end is not None and hit.end < at) or (
                fault["kind"] == "cpu" and hit.pcpu != fault.get("pcpu")
            ):
                continue

            def productive(s: _Slice, mine: list[_Slice] = mine, vm: str = vm) -> bool:
                if s.how in ("preempted", "idle", "ended"):
                    return True
                # No pCPU reported it: it counts if the VM ended in it (its last slice).
                return s.how == "" and s is mine[-1] and ended_at.get(vm, -1.0) >= s.granted

            candidates = [s.granted for s in mine if s.granted > at and productive(s)]
            if productive(hit) and hit.end is not None:
                candidates.append(hit.end)  # it rode out the fault in the same slice
            elif productive(hit):
                candidates.append(ended_at[vm])
            recovered = min(candidates) if candidates else None
            stop = recovered if recovered is not None else max((s.end or s.granted) for s in mine)
            lost = [s for s in mine
                    if s.how == "lost" and s.end is not None and s.end > at and s.granted <= stop]  # fmt: skip
            out.append(
                Failover(index, fault["action"], fault["target"], vm,
                         None if recovered is None else max(0.0, recovered - at),
                         sum(s.end - max(s.granted, at) for s in lost if s.end is not None),
                         sum(s.charged for s in lost),
                         kind=str(fault["kind"]),
                         ready=_unavailable(at, stop if recovered is None else recovered, down, pcpus),
                         bound=None if hit.lease is None else failover_bound_of(hit.lease))
            )  # fmt: skip
    return out


# -- the check -----------------------------------------------------------------------------------
def check(
    records: Iterable[dict[str, Any]],
    *,
    expected: Expected | None = expected_result,
    failover_bound: float | str | None = None,
    charge_bound: float | None = None,
) -> Verdict:
    """Judge a history (``history.load``).  ``expected`` gives a VM's in-process result from its
    definition and image (None: skip the equivalence property).  ``failover_bound`` (seconds, or
    ``"lease"``: each victim's grant's lease plus one slice) and ``charge_bound`` (seconds) add
    properties on the measures; the failover bound is judged on pCPU faults, from when the VM
    could run again (see the module's docstring)."""
    records = list(records)
    vms: dict[str, dict[str, Any]] = {}
    results: dict[str, dict[str, Any]] = {}
    commits = [r for r in records if r["type"] == "commit"]
    events = sorted(
        (r for r in records if r["type"] == "event"), key=lambda r: (r["time"], r.get("cursor", ""))
    )
    faults = [r for r in records if r["type"] == "fault"]
    for r in records:
        if r["type"] == "vm":
            vms.setdefault(str(r["id"]), r)
        elif r["type"] == "result":
            results[str(r["vm"])] = r

    ended = Property("ended", "every started VM ended")
    equivalent = Property(
        "equivalent", "each VM ended as its in-process run (console, exit, registers, guest stats)"
    )
    fenced = Property("fenced", "no commit landed with a stale token")
    monotonic = Property("monotonic", "committed generation and retired count never went backwards")

    for vm, rec in sorted(vms.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0):
        name = rec.get("name", vm)
        result = results.get(vm)
        status = result.get("status") if result else None
        if status == "created":
            continue  # never started: nothing to judge
        ended.checked += 1
        if result is None or status not in TERMINAL:
            ended.failures.append(f"VM {name} (id {vm}) did not end: last seen {status or 'nowhere'} (lost)")
            continue
        if status == "stopped" or expected is None:
            continue  # stopped by an operator: no model to compare with
        equivalent.checked += 1
        doc = result.get("doc")
        if not doc:
            equivalent.failures.append(f"VM {name}: no result to compare (WaitVm gave none)")
            continue
        definition = rec.get("definition") or {}
        image = base64.b64decode(rec["image"]) if rec.get("image") else None
        try:
            want = expected(definition, image)
        except (ValueError, KeyError) as exc:
            equivalent.failures.append(f"VM {name}: no in-process run to compare with: {exc}")
            continue
        technique = str(definition.get("technique", ""))
        diffs = _differences(comparable(doc, technique), comparable(want, technique))
        for d in diffs:
            equivalent.failures.append(
                f"VM {name} ({technique}{'+np' if definition.get('nested_paging') else ''}): {d}"
            )

    last: dict[str, tuple[int, int, int]] = {}
    counts = {"applied": 0, "refused": 0, "refused_stale_lease": 0}
    for c in commits:
        vm = str(c["vm"])
        name = vms.get(vm, {}).get("name", vm)
        if c.get("outcome") != "applied":
            counts["refused"] += 1
            if str(c.get("why", "")).startswith("stale lease"):
                counts["refused_stale_lease"] += 1
            continue
        counts["applied"] += 1
        fenced.checked += 1
        monotonic.checked += 1
        if str(c.get("token")) != str(c.get("current")) or c.get("status") != "running":
            fenced.failures.append(
                f"stale commit: VM {name} generation {c.get('generation')} landed with token {c.get('token')} "
                f"while the grant was {c.get('current')} (VM {c.get('status')}, pCPU {c.get('pcpu') or '-'})"
                + (" [fencing was off]" if str(c.get("fenced")) == "0" else "")
            )
        generation, retired, boot = int(c["generation"]), int(c.get("retired", -1)), int(c.get("boot", 0))
        if vm in last:
            g0, r0, b0 = last[vm]
            if generation <= g0:
                monotonic.failures.append(f"VM {name}: generation went from {g0} to {generation}")
            if boot == b0 and retired >= 0 and r0 >= 0 and retired < r0:
                monotonic.failures.append(
                    f"VM {name}: retired instructions went back from {r0:,} to {retired:,} (generation {generation})"
                )
        last[vm] = (generation, retired, boot)

    ended_at = {str(e["vm"]): float(e["time"]) for e in events if e.get("kind") in ("ended", "stopped")}
    failovers = _failovers(faults, events, ended_at, _down(records, events))
    uncharged = Property("uncharged", "no lost slice took credit from its VM")
    for vm_slices in _slices(events).values():
        for s in vm_slices:
            if s.how != "lost":
                continue
            uncharged.checked += 1
            if s.charged > 0:
                uncharged.failures.append(
                    f"VM {vms.get(s.vm, {}).get('name', s.vm)}: a slice lost on {s.pcpu} was charged "
                    f"{s.charged:.3f} s of credit"
                )
    properties = [ended, equivalent, fenced, monotonic, uncharged]
    if failover_bound is not None:
        by_lease = failover_bound == "lease"
        bounded = Property(
            "failover",
            "every VM whose pCPU failed ran again within "
            + ("its grant's lease plus one slice" if by_lease else f"{float(failover_bound):g} s")
            + " of when it could",
        )
        for f in failovers:
            if f.kind not in BOUNDED:
                continue
            bound = f.bound if by_lease else float(failover_bound)
            if bound is None:
                continue  # its grant did not record its lease (a history from before it did)
            bounded.checked += 1
            resumed = f.resumed
            if resumed is None or resumed > bound:
                took = (
                    "never ran again"
                    if resumed is None
                    else f"took {f.seconds:.2f} s, {resumed:.2f} s of it while it could run (bound {bound:.2f} s)"
                )
                bounded.failures.append(
                    f"VM {vms.get(f.vm, {}).get('name', f.vm)} after fault {f.fault} ({f.action} {f.target}): {took}"
                )
        properties.append(bounded)
    if charge_bound is not None:
        charge = Property("charged", f"no VM a fault hit was charged over {charge_bound:g} s for lost slices")
        for f in failovers:
            charge.checked += 1
            if f.charged > charge_bound:
                charge.failures.append(
                    f"VM {vms.get(f.vm, {}).get('name', f.vm)} after fault {f.fault} ({f.action} {f.target}): "
                    f"charged {f.charged:.2f} s of failed time"
                )
        properties.append(charge)
    return Verdict(properties, len(vms), faults, failovers, counts)
