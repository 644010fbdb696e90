"""The flight recorder: every world switch (exit) of a VM and every slice it ran, in a ring buffer.

What Xen's xentrace and ``perf kvm stat`` record, for one VM under any technique: each exit with
its virtual time (the guest's instruction clock), wall time, pCPU, slice, the guest's ``eip`` and
ring, the technique, the reason in the technique's own terms (``EventCounter.exits``: a VMX exit
reason, a trapped event, a hypercall, a bt callout, a traced page-table write) and its simulated
cost; and each slice with its start, end, pCPU, why it ended and how many exits it held.

The recorder hangs off the VM's counters (``EventCounter.on_exit``), so it sees exactly the world
switches the statistics count: a trace's exits, reason by reason, are ``stats.guest.exits``
(unless the ring buffer dropped the oldest, which ``dropped`` says).  An exit's cost is what the
VMM's switch work (``costs.switch_cycles``: the exit itself and what handling it did, shadow syncs
and reflected events included) grew by from its start to the next exit or the end of its slice;
the cycles bt's translated code adds in the guest (inline instructions, lookups, translation)
belong to no exit.

Records are plain JSON-ready dicts, so they travel with a slice's commit through the services
(``take``) and into a trace file (``ringlab.vmm.trace_events``).  Recording is off unless asked
for: a VM without a recorder pays one ``None`` check per world switch.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ringlab.vmm.costs import switch_cycles

if TYPE_CHECKING:
    from ringlab.vmm.vm import VM

__all__ = ["DEFAULT_CAPACITY", "FlightRecorder", "Record", "exits_by_reason"]

Record = dict[str, Any]
"""One record: ``{"kind": "exit", ...}`` or ``{"kind": "slice", ...}`` (docs/tracing.md)."""

DEFAULT_CAPACITY = 65_536
"""Records kept per VM; older ones are dropped first (and counted in ``dropped``)."""


class FlightRecorder:
    """Records one VM's exits and slices (``attach`` it to the VM)."""

    def __init__(
        self,
        capacity: int = DEFAULT_CAPACITY,
        *,
        clock: Callable[[], int] = time.time_ns,
        cost_profile: str | None = None,
        pcpu: str = "in-process",
    ) -> None:
        if capacity < 1:
            raise ValueError("a flight recorder keeps at least one record")
        self.records: deque[Record] = deque(maxlen=capacity)
        self.dropped = 0
        """Records the ring buffer let go of (the oldest first)."""
        self.pcpu = pcpu
        """The pCPU an in-process run's slice names (``VM.run``)."""
        self._clock = clock
        self._profile = cost_profile
        self._vm: VM | None = None
        self._technique = ""
        self._open: Record | None = None
        """The last exit, whose cost is known when the next exit or the slice's end comes."""
        self._base = 0
        self._did: tuple[int, ...] = ()
        self._slice: Record | None = None
        self._slices = 0
        self._taken = 0
        """Records handed out by ``take`` (counted from the first ever recorded)."""
        self._recorded = 0

    # -- wiring ---------------------------------------------------------------------------------
    def attach(self, vm: VM) -> FlightRecorder:
        """Record ``vm``'s world switches from now on."""
        self._vm = vm
        vm.recorder = self
        name = vm.technique.name
        self._technique = f"{name}+np" if getattr(vm.technique, "nested_paging", False) else name
        vm.counters.on_exit = self._exit
        return self

    def detach(self) -> None:
        if self._vm is not None:
            self._close_exit()
            self._vm.counters.on_exit = None
            self._vm.recorder = None
            self._vm = None

    # -- what the VM calls ------------------------------------------------------------------------
    def begin_slice(self, pcpu: str, number: int | None = None) -> None:
        """A slice of the VM's run starts on ``pcpu`` (numbered in order unless ``number``)."""
        if self._slice is not None:
            self.end_slice("superseded")
        vm = self._vm
        self._slices = self._slices + 1 if number is None else number
        self._slice = {
            "kind": "slice",
            "slice": self._slices,
            "pcpu": pcpu,
            "technique": self._technique,
            "start_vt": 0 if vm is None else vm.cpu.state.tsc,
            "start_ns": self._clock(),
            "exits": 0,
        }

    def end_slice(self, why: str) -> None:
        """The current slice ended (``why``: preempted, idle, lost, or how the VM ended)."""
        self._close_exit()
        current = self._slice
        if current is None:
            return
        vm = self._vm
        current.update(
            end_vt=current["start_vt"] if vm is None else vm.cpu.state.tsc, end_ns=self._clock(), why=why
        )
        self._slice = None
        self._append(current)

    def take(self) -> list[Record]:
        """The records made since the last ``take`` that are complete (an exit whose cost is
        still open stays for the next one): what a commit carries."""
        done = self._recorded - (1 if self._open is not None else 0)
        fresh = done - self._taken
        if fresh <= 0:
            return []
        kept = len(self.records) - (1 if self._open is not None else 0)
        fresh = min(fresh, kept)
        out = list(self.records)[kept - fresh : kept]
        self._taken = done
        return out

    # -- inside ---------------------------------------------------------------------------------
    def _exit(self, reason: str) -> None:
        vm = self._vm
        assert vm is not None
        # One pricing per exit: what closes the last exit is where this one starts.
        now, work = switch_cycles(vm.counters, self._profile), _work(vm)
        self._close_exit(now, work)
        s = vm.cpu.state
        current = self._slice
        record: Record = {
            "kind": "exit",
            "vt": s.tsc,
            "wall_ns": self._clock(),
            "pcpu": None if current is None else current["pcpu"],
            "slice": None if current is None else current["slice"],
            "eip": s.eip,
            "ring": vm.vcpu.cpl,
            "technique": self._technique,
            "reason": reason,
            "cost": 0,
        }
        if current is not None:
            current["exits"] += 1
        self._base, self._did = now, work
        self._open = record
        self._append(record)

    def _close_exit(self, now: int | None = None, work: tuple[int, ...] | None = None) -> None:
        """Price the open exit: what the switch work grew by up to ``now`` (default: this moment)."""
        record = self._open
        if record is None or self._vm is None:
            return
        if now is None or work is None:
            now, work = switch_cycles(self._vm.counters, self._profile), _work(self._vm)
        record["cost"] = now - self._base
        did = {k: n - was for k, n, was in zip(WORK, work, self._did, strict=True) if n != was}
        if did:
            record["vmm"] = did
        self._open = None

    def _append(self, record: Record) -> None:
        if len(self.records) == self.records.maxlen:
            self.dropped += 1
        self.records.append(record)
        self._recorded += 1


WORK = ("shadow_syncs", "shadow_flushes", "reflected", "traced_writes")
"""What the VMM did in an exit, beyond its reason, that an exit record counts (``"vmm"``)."""


def _work(vm: VM) -> tuple[int, ...]:
    c = vm.counters
    return (c.shadow_syncs, c.shadow_flushes, c.reflected, c.traced_writes)


def exits_by_reason(records: Iterable[Record]) -> dict[str, int]:
    """How many exits ``records`` hold, by reason (compare ``stats.guest.exits``)."""
    out: dict[str, int] = {}
    for r in records:
        if r.get("kind") == "exit":
            out[r["reason"]] = out.get(r["reason"], 0) + 1
    return dict(sorted(out.items()))
