"""Scheduling policy: domain code (no grpc, no redis)."""

from ringlab.sched.credit import CreditPolicy, Decision, Entry, SliceOutcome, jain_index

__all__ = ["CreditPolicy", "Decision", "Entry", "SliceOutcome", "jain_index"]
