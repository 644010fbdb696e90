"""Plain data for the page: exit rates between two snapshots, and the timeline of slices built from
the hypervisor's event stream. No I/O here: ``source`` turns the gRPC messages into the dicts read
below, ``hub`` feeds them in.

The events a slice leaves (``ringlab.sched.credit`` and the hypervisor's pCPU driver write them):
``scheduled`` (the VM was granted a pCPU; detail ``credit C``), then, when the slice is over, one
``exit`` event with the slice's exits by reason (``reason xN, reason xM``; none when it had
none), then ``descheduled`` (detail ``HOW START END CHARGED``: how it ended, its span in host
seconds since the epoch, the credit charged).
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Slice", "Timeline", "parse_exit_counts", "with_rates"]

_COUNT = re.compile(r"^\s*(?P<reason>\S.*?)\s+x(?P<n>\d+)\s*$")


def parse_exit_counts(detail: str) -> dict[str, int]:
    """``"io x3, hlt x1"`` -> ``{"io": 3, "hlt": 1}``; what does not parse is left out."""
    counts: dict[str, int] = {}
    for part in detail.split(","):
        m = _COUNT.match(part)
        if m:
            counts[m["reason"]] = counts.get(m["reason"], 0) + int(m["n"])
    return counts


def with_rates(vms: list[dict[str, Any]], previous: list[dict[str, Any]] | None, elapsed: float) -> None:
    """Add ``exits_per_s`` and ``rates_by_reason`` to each VM row: its exits since ``previous``
    (the snapshot ``elapsed`` seconds earlier) per second; 0 without one, or for a VM new since.
    A count that went down (the VM was booted afresh) counts from 0."""
    before = {vm["id"]: vm for vm in previous or []}
    for vm in vms:
        old = before.get(vm["id"])
        if old is None or elapsed <= 0:
            vm["exits_per_s"] = 0.0
            vm["rates_by_reason"] = {}
            continue

        def rate(now: int, then: int) -> float:
            return (now - then if now >= then else now) / elapsed

        vm["exits_per_s"] = rate(vm["exits"], old["exits"])
        was = old["exits_by_reason"]
        vm["rates_by_reason"] = {k: rate(v, was.get(k, 0)) for k, v in vm["exits_by_reason"].items()}


@dataclass
class Slice:
    seq: int
    vm: str
    pcpu: str
    start: float
    end: float
    how: str
    exits: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "vm": self.vm,
            "pcpu": self.pcpu,
            "start": self.start,
            "end": self.end,
            "how": self.how,
            "exits": self.exits,
        }


@dataclass
class Timeline:
    """The slices of the last ``window`` seconds (at most ``limit``), and the slice each pCPU is
    running now (from its ``scheduled`` event: it grows until its ``descheduled`` one)."""

    window: float = 60.0
    limit: int = 5000
    slices: deque[Slice] = field(default_factory=deque)
    running: dict[str, dict[str, Any]] = field(default_factory=dict)
    """pCPU -> {"vm", "start"}: the slice it runs now."""
    _exits: dict[str, dict[str, int]] = field(default_factory=dict)
    _seq: int = 0

    def feed(self, event: dict[str, Any]) -> bool:
        """Take one event (``kind``, ``vm``, ``pcpu``, ``detail``, ``time``); True when the
        timeline changed."""
        kind, vm, pcpu = event.get("kind", ""), event.get("vm", ""), event.get("pcpu", "")
        detail = str(event.get("detail", ""))
        if kind == "scheduled" and pcpu:
            self.running[pcpu] = {"vm": vm, "start": float(event.get("time") or 0.0)}
            return True
        if kind == "exit":
            self._exits[vm] = parse_exit_counts(detail)
            return False
        if kind == "descheduled":
            exits = self._exits.pop(vm, {})
            if self.running.get(pcpu, {}).get("vm") == vm:
                del self.running[pcpu]
            parts = detail.split()
            try:
                how, start, end = parts[0], float(parts[1]), float(parts[2])
            except (IndexError, ValueError):
                return False
            self._seq += 1
            self.slices.append(Slice(self._seq, vm, pcpu, start, end, how, exits))
            self.prune(end)
            return True
        if kind in ("destroyed", "stopped", "paused", "ended") and vm:
            for cpu in [p for p, r in self.running.items() if r["vm"] == vm and kind == "destroyed"]:
                del self.running[cpu]
        return False

    def prune(self, now: float) -> None:
        while self.slices and (len(self.slices) > self.limit or self.slices[0].end < now - self.window):
            self.slices.popleft()

    def since(self, seq: int) -> list[dict[str, Any]]:
        """The slices after ``seq`` (0: every one kept), oldest first."""
        return [s.to_json() for s in self.slices if s.seq > seq]

    @property
    def last_seq(self) -> int:
        return self._seq

    def forget_running(self) -> None:
        """The event stream stopped: what runs now is no longer known."""
        self.running.clear()
        self._exits.clear()
