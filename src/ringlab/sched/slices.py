"""How long a granted slice runs (after Xen's ``credit.c``: the tunables first, then pure
functions of the policy, the entries and what the driver measured).

A slice is counted in guest instructions (virtual time), so the same slices give the same run;
host time only ends a slice early, at the first exit after it is up.

A VM nobody else waits for (and without a cap: a cap is enforced at each grant) gets a
*stretched* slice: as many instructions as it ran in about ``LONE_SLICE_SECONDS`` of its last
full slice, at most ``STRETCH`` slices, ending early at the first exit after that time (a guest
that turned slow must not keep the pCPU for ``STRETCH`` slow slices).  A lone runnable task runs
on, as under Xen credit2 or Linux's CFS.  A lone compute-bound VM then
crosses to the hypervisor, commits and is granted about four times a second instead of thirty,
which keeps it near in-process speed; a VM that arrives meanwhile waits at most that long.

Any other slice ends at the first exit after ``1 / LEASE_FRACTION`` of its grant's lease: a slice
of exit-heavy code can take seconds, and one that outlived its lease would be granted again while
it still runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ringlab.sched.credit import CreditPolicy, Entry

__all__ = [
    "LEASE_FRACTION",
    "LONE_SLICE_SECONDS",
    "STRETCH",
    "SlicePlan",
    "measured_rate",
    "plan_slice",
    "runs_alone",
]

LONE_SLICE_SECONDS = 0.25
"""About how long a stretched slice runs (what a crash re-executes, how long a newcomer waits)."""
STRETCH = 16
"""A stretched slice is at most this many slices."""
LEASE_FRACTION = 4
"""Any other slice ends at the first exit after this fraction of its grant's lease."""


@dataclass(frozen=True)
class SlicePlan:
    """One granted slice: run ``instructions`` guest instructions, ending early at the first
    exit after ``seconds`` of host time."""

    instructions: int
    seconds: float
    stretched: bool


def runs_alone(policy: CreditPolicy, entries: Mapping[str, Entry], chosen: str, now: float) -> bool:
    """Whether ``chosen`` may have a stretched slice: it has no cap and no other VM is eligible."""
    return not entries[chosen].cap and not any(
        policy.eligible(e, now) for vm, e in entries.items() if vm != chosen
    )


def plan_slice(policy: CreditPolicy, *, lone: bool, rate: float, left: int | None = None) -> SlicePlan:
    """The slice of a VM that ran ``rate`` instructions per host second in its last full slice (0:
    not measured yet) and may retire ``left`` more instructions before its limit (None: no
    limit); stretched when it runs ``lone``."""
    base = policy.slice_instructions
    instructions = base
    if lone and rate:
        instructions = max(base, min(STRETCH * base, int(rate * LONE_SLICE_SECONDS)))
    if left is not None:
        instructions = min(instructions, left)
    stretched = instructions > base
    seconds = LONE_SLICE_SECONDS if stretched else policy.lease_seconds / LEASE_FRACTION
    return SlicePlan(instructions, seconds, stretched)


def measured_rate(instructions: int, seconds: float) -> float:
    """Instructions per host second of a full slice (what the next stretched slice is sized from);
    0 when no host time was measured."""
    return instructions / seconds if seconds > 0 else 0.0
