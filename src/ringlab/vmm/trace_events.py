"""Flight-recorder records -> a Perfetto / Chrome trace-event file, and a xenalyze-style summary.

The file is the Trace Event Format's JSON object (``{"traceEvents": [...]}``) that
ui.perfetto.dev and chrome://tracing open: one process per pCPU and one per VM, each with one
track.  A slice is a complete event (``"ph": "X"``) on its pCPU's track and on its VM's; an exit
is an instant (``"ph": "i"``) on both, named by its reason, with the record's fields as its
arguments (virtual time, guest ``eip`` and ring, technique, cost, what the VMM did).

Time is the wall clock by default (microseconds since the first record), or with
``clock="virtual"`` the guest's instruction clock, one retired instruction to a microsecond, which
is the same from run to run (docs/tracing.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ringlab.vmm.recorder import Record

__all__ = ["CLOCKS", "Clock", "ReasonSummary", "summarize", "trace_events"]

Clock = Literal["wall", "virtual"]
CLOCKS: tuple[Clock, ...] = ("wall", "virtual")
_PCPU_PIDS = 1
_VM_PIDS = 10_000


def trace_events(
    records_by_vm: Mapping[str, Iterable[Record]],
    *,
    clock: Clock = "wall",
    spans: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The trace-event JSON object for the records of each VM (``name -> records``).  ``spans``:
    extra complete events already in the format's terms but timed in wall nanoseconds
    (``start_ns``, ``end_ns``, ``name``, ``track``, ``args``), such as OpenTelemetry spans; each
    track a process of the file, with a thread per ``thread`` its spans name (one when none do),
    and an arrow (a flow event) from a span to each child (``parent_id`` naming its ``span_id``)
    on another thread or track: a call from one service to another."""
    by_vm = {vm: list(records) for vm, records in records_by_vm.items()}
    extra = list(spans)
    pcpus = sorted({str(r["pcpu"]) for rs in by_vm.values() for r in rs if r.get("pcpu") is not None})
    pcpu_pid = {p: _PCPU_PIDS + i for i, p in enumerate(pcpus)}
    vm_pid = {vm: _VM_PIDS + i for i, vm in enumerate(sorted(by_vm))}
    origin = _origin(by_vm, extra, clock)

    def ts(record: Record, key: str) -> float:
        if clock == "virtual":
            return float(record[f"{key}_vt" if key in ("start", "end") else "vt"])
        return (int(record[f"{key}_ns" if key in ("start", "end") else "wall_ns"]) - origin) / 1000

    events: list[dict[str, Any]] = []
    for name, pid in pcpu_pid.items():
        events += _names(pid, f"pCPU {name}", "slices and exits")
    for vm, pid in vm_pid.items():
        events += _names(pid, f"VM {vm}", "slices and exits")
    for vm, records in sorted(by_vm.items()):
        for r in records:
            pids = [vm_pid[vm]] + ([pcpu_pid[str(r["pcpu"])]] if r.get("pcpu") is not None else [])
            if r.get("kind") == "slice" and "end_ns" in r:
                start = ts(r, "start")
                args = {k: r[k] for k in ("slice", "pcpu", "technique", "why", "exits", "start_vt", "end_vt")}
                for pid in pids:
                    events.append(
                        {
                            "name": f"{vm} slice {r['slice']}"
                            if pid != vm_pid[vm]
                            else f"slice {r['slice']}",
                            "cat": "slice",
                            "ph": "X",
                            "ts": start,
                            "dur": max(ts(r, "end") - start, 0.0),
                            "pid": pid,
                            "tid": 1,
                            "args": {"vm": vm, **args},
                        }
                    )
            elif r.get("kind") == "exit":
                args = {
                    k: r[k] for k in ("vt", "eip", "ring", "technique", "cost", "pcpu", "slice") if k in r
                }
                args["eip"] = f"{r['eip']:#x}"
                if "vmm" in r:
                    args["vmm"] = r["vmm"]
                for pid in pids:
                    events.append(
                        {
                            "name": r["reason"],
                            "cat": "exit",
                            "ph": "i",
                            "s": "t",
                            "ts": ts(r, "at"),
                            "pid": pid,
                            "tid": 1,
                            "args": {"vm": vm, **args},
                        }
                    )
    if clock == "wall":
        events += _span_events(extra, origin)
    return {
        "traceEvents": events,
        "displayTimeUnit": "ns" if clock == "wall" else "ms",
        "otherData": {"producer": "ringlab", "clock": clock},
    }


def _span_events(spans: list[Mapping[str, Any]], origin: int) -> list[dict[str, Any]]:
    """The spans' complete events, each track a process and each thread of it a thread, and a flow
    (``"ph": "s"`` in the parent, ``"f"`` at the child's start) where a child is elsewhere."""
    events: list[dict[str, Any]] = []
    tracks: dict[str, int] = {}
    threads: dict[tuple[str, str], int] = {}
    placed: dict[str, tuple[int, int]] = {}
    for span in spans:
        track = str(span.get("track", "traces"))
        thread = str(span.get("thread", "spans"))
        if track not in tracks:
            tracks[track] = _VM_PIDS * 2 + len(tracks)
            events.append(
                {"name": "process_name", "ph": "M", "pid": tracks[track], "tid": 1, "args": {"name": track}}
            )
        if (track, thread) not in threads:
            threads[(track, thread)] = 1 + sum(1 for t, _ in threads if t == track)
            events.append(
                {
                    "name": "thread_name",
                    "ph": "M",
                    "pid": tracks[track],
                    "tid": threads[(track, thread)],
                    "args": {"name": thread},
                }
            )
        where = (tracks[track], threads[(track, thread)])
        if span.get("span_id"):
            placed[str(span["span_id"])] = where
        events.append(
            {
                "name": str(span["name"]),
                "cat": "span",
                "ph": "X",
                "ts": (int(span["start_ns"]) - origin) / 1000,
                "dur": max((int(span["end_ns"]) - int(span["start_ns"])) / 1000, 0.0),
                "pid": where[0],
                "tid": where[1],
                "args": dict(span.get("args", {})),
            }
        )
    for flow, span in enumerate(spans, start=1):
        parent = placed.get(str(span.get("parent_id") or ""))
        child = placed.get(str(span.get("span_id") or ""))
        if parent is None or child is None or parent == child:
            continue
        ts = (int(span["start_ns"]) - origin) / 1000
        for ph, (pid, tid) in (("s", parent), ("f", child)):
            event = {"name": "call", "cat": "span", "ph": ph, "id": flow, "ts": ts, "pid": pid, "tid": tid}
            if ph == "f":
                event["bp"] = "e"
            events.append(event)
    return events


def _names(pid: int, process: str, thread: str) -> list[dict[str, Any]]:
    return [
        {"name": "process_name", "ph": "M", "pid": pid, "tid": 1, "args": {"name": process}},
        {"name": "thread_name", "ph": "M", "pid": pid, "tid": 1, "args": {"name": thread}},
    ]


def _origin(by_vm: Mapping[str, list[Record]], spans: list[Mapping[str, Any]], clock: Clock) -> int:
    if clock == "virtual":
        return 0
    times = [r.get("wall_ns", r.get("start_ns")) for rs in by_vm.values() for r in rs]
    times += [int(s["start_ns"]) for s in spans]
    found = [t for t in times if isinstance(t, int)]
    return min(found) if found else 0


@dataclass(frozen=True)
class ReasonSummary:
    """One row of ``summarize``: a VM's exits for one reason."""

    vm: str
    reason: str
    count: int
    total_cost: int

    @property
    def mean_cost(self) -> float:
        return self.total_cost / self.count if self.count else 0.0


def summarize(records_by_vm: Mapping[str, Iterable[Record]]) -> list[ReasonSummary]:
    """Exits by reason per VM with their count and total and mean simulated cost (xenalyze's
    summary), each VM's most frequent reason first."""
    rows: list[ReasonSummary] = []
    for vm, records in sorted(records_by_vm.items()):
        count: dict[str, int] = {}
        cost: dict[str, int] = {}
        for r in records:
            if r.get("kind") == "exit":
                count[r["reason"]] = count.get(r["reason"], 0) + 1
                cost[r["reason"]] = cost.get(r["reason"], 0) + int(r.get("cost", 0))
        for reason in sorted(count, key=lambda k: (-count[k], k)):
            rows.append(ReasonSummary(vm, reason, count[reason], cost[reason]))
    return rows
