"""Scheduling policy: domain code (no grpc, no redis): who runs next (``credit``) and for how long
(``slices``)."""

from ringlab.sched.credit import CreditPolicy, Decision, Entry, SliceOutcome, jain_index
from ringlab.sched.slices import SlicePlan, measured_rate, plan_slice, runs_alone

__all__ = [
    "CreditPolicy",
    "Decision",
    "Entry",
    "SliceOutcome",
    "SlicePlan",
    "jain_index",
    "measured_rate",
    "plan_slice",
    "runs_alone",
]
