"""The credit scheduler's policy (after Xen's ``credit``), as pure functions on plain entries.

Each VM has a *weight* (its share relative to the others), an optional *cap* (at most that
percent of one pCPU, even when the pCPU would otherwise idle) and a *credit* balance in seconds of
pCPU (host) time.  A VM is charged the host time it held a pCPU, its exits included, which is
what CPU share is measured in.  When no eligible VM has credit left, every live VM is refilled in
proportion to its weight, so over time the shares converge to the weights.

Who runs next: a VM *boosted* because it woke from I/O (it yielded its slice in an idle ``hlt``)
first, then the one with the most credit, then the one that ran least recently.  As in Xen, only
a VM still *under* its share (credit left) is boosted: here ``hlt`` jumps virtual time to the next
tick, so a guest that idles on every slice wakes at once, and boosting it over its share would
starve every other VM.  A grant is for
one *slice* counted in guest instructions (virtual time), so the same slices give the same run.

The policy only decides; ``ringlab.store`` applies each decision in one Lua script that refuses
it if the entries changed since they were read (several hypervisor replicas and pCPUs).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "LIVE",
    "TERMINAL",
    "CreditPolicy",
    "Decision",
    "Entry",
    "SliceOutcome",
    "jain_index",
]

LIVE = frozenset({"runnable", "running", "blocked"})
TERMINAL = frozenset({"stopped", "poweroff", "halted", "shutdown", "limit"})
DEFAULT_WEIGHT = 256


@dataclass
class Entry:
    """One VM's scheduling state (the JSON value of ``rl:sched:vms``)."""

    status: str = "created"
    weight: int = DEFAULT_WEIGHT
    cap: int = 0
    """Percent of one pCPU; 0 = no cap."""
    credit: float = 0.0
    boost: bool = False
    token: int = 0
    pcpu: str = ""
    lease_until: float = 0.0
    cpu_seconds: float = 0.0
    slices: int = 0
    last_run: float = 0.0
    cap_window: float = 0.0
    """Start of the current cap accounting window (host seconds)."""
    cap_used: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Entry:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d and k != "extra"}
        extra = {k: v for k, v in d.items() if k not in cls.__dataclass_fields__}
        e = cls(**known)
        e.extra = extra
        e.weight = int(e.weight) or DEFAULT_WEIGHT
        e.token = int(e.token)
        e.boost = bool(e.boost)
        return e

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = asdict(self)
        extra: dict[str, Any] = d.pop("extra")
        return d | extra


@dataclass(frozen=True)
class SliceOutcome:
    """How a granted slice ended, as the pCPU's driver reports it to ``account``."""

    vm: str
    token: int
    held_seconds: float
    ended: str = "preempted"
    """preempted (slice used up), idle (yielded in hlt: boost on wake), ended (the VM finished),
    lost (the grant was revoked or the commit refused)."""


@dataclass
class Decision:
    chosen: str | None
    updates: dict[str, dict[str, Any]]
    events: list[dict[str, str]]
    refilled: bool = False
    """Every live VM's credit was refilled (no eligible VM had any left): what an observer
    counts (the hypervisor's ``ringlab_scheduler_refills_total``)."""


@dataclass(frozen=True)
class CreditPolicy:
    slice_instructions: int = 500_000
    """The time slice, in guest instructions (virtual time): about 15 ms of native compute on the
    simulated core (Xen credit's default is 30 ms).  Each slice costs at least one world switch
    across the service boundary (1-2 ms on a 2-core machine).  The hypervisor's driver stretches
    the slice of a VM nobody else waits for."""
    refill_seconds: float = 0.3
    """Credit handed out per refill round, per pCPU, split by weight."""
    lease_seconds: float = 10.0
    """A grant whose holder has not committed or released by then may be granted again."""
    cap_window_seconds: float = 1.0

    def account(self, entries: dict[str, Entry], outcome: SliceOutcome, now: float) -> dict[str, str] | None:
        """Charge ``outcome.vm`` for the host time it held the pCPU and release the grant; the
        slice's "descheduled" event (None: the VM was destroyed meanwhile).  A lost slice is not
        charged: nothing it did was kept (the VM goes on from its last commit), and the time went
        to a pCPU that failed or a grant that was revoked, not to the VM.

        The event's detail is ``HOW START END CHARGED``: how the slice ended (``SliceOutcome.ended``),
        its span in host seconds since the epoch, and the credit (seconds) taken for it, so that a
        reader of the event stream (``ringlab chaos check``) sees what the policy charged."""
        e = entries.get(outcome.vm)
        if e is None:
            return None  # destroyed meanwhile
        held = 0.0 if outcome.ended == "lost" else outcome.held_seconds
        event = {
            "kind": "descheduled",
            "vm": outcome.vm,
            "detail": f"{outcome.ended} {now - outcome.held_seconds:.6f} {now:.6f} {held:.6f}",
        }
        e.credit -= held
        e.cpu_seconds += held
        e.slices += 1
        e.last_run = now
        if e.cap:
            if now - e.cap_window >= self.cap_window_seconds:
                e.cap_window, e.cap_used = now, 0.0
            e.cap_used += held
        if e.token != outcome.token or e.status != "running":
            return event  # an operator or another grant took it: the status is theirs
        e.token, e.pcpu, e.lease_until = 0, "", 0.0
        e.status = "runnable"
        if outcome.ended == "idle" and e.credit > 0:
            e.boost = True  # woke from I/O, still under its share
        return event

    def eligible(self, e: Entry, now: float) -> bool:
        if e.status == "runnable" or (e.status == "running" and e.lease_until < now):
            if e.cap and now - e.cap_window < self.cap_window_seconds:
                return e.cap_used < e.cap / 100 * self.cap_window_seconds
            return True
        return False

    def decide(
        self,
        entries: dict[str, Entry],
        now: float,
        pcpus: int = 1,
        finished: SliceOutcome | None = None,
        pick: bool = True,
    ) -> Decision:
        """Account ``finished`` (if any), refill credits if every candidate is out, pick the next
        VM (unless not ``pick``: the pCPU is not fit to run one).  Returns the entries to write
        back and the VM to grant (or None: idle); the grant's "scheduled" event has the detail
        ``credit C lease L`` (the VM's credit, the grant's lease in seconds)."""
        changed: set[str] = set()
        events: list[dict[str, str]] = []
        if finished is not None:
            event = self.account(entries, finished, now)
            if event is not None:
                changed.add(finished.vm)
                events.append(event)
        candidates = [vm for vm, e in entries.items() if self.eligible(e, now)]
        refilled = False
        if pick and candidates and all(entries[vm].credit <= 0 for vm in candidates):
            refilled = True
            live = [vm for vm, e in entries.items() if e.status in LIVE]
            total = sum(entries[vm].weight for vm in live) or 1
            for vm in live:
                e = entries[vm]
                quantum = self.refill_seconds * pcpus * e.weight / total
                # Never hoard more than two rounds: an idle VM does not bank credit forever.
                e.credit = min(e.credit + quantum, 2 * quantum)
                changed.add(vm)
        chosen: str | None = None
        if candidates and pick:
            chosen = min(
                candidates,
                key=lambda vm: (not entries[vm].boost, -entries[vm].credit, entries[vm].last_run, int(vm)),
            )
            e = entries[chosen]
            e.boost = False
            changed.add(chosen)
            # The grant's lease goes with it: a reader of the event stream (``ringlab chaos
            # check``) judges failover against the lease the grant really had.
            events.append(
                {
                    "kind": "scheduled",
                    "vm": chosen,
                    "detail": f"credit {e.credit:.6f} lease {self.lease_seconds:g}",
                }
            )
        return Decision(
            chosen, {vm: entries[vm].to_dict() for vm in changed if vm in entries}, events, refilled
        )


def jain_index(values: list[float]) -> float:
    """Jain's fairness index: 1 when all equal, 1/n when one value has everything."""
    if not values:
        return 1.0
    total = sum(values)
    squares = sum(v * v for v in values)
    return total * total / (len(values) * squares) if squares else 1.0
