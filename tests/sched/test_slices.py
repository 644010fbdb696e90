"""Slice sizing (``ringlab.sched.slices``): instruction counts from given rates, no wall clock."""

from __future__ import annotations

import pytest

from ringlab.sched import CreditPolicy, Entry, measured_rate, plan_slice, runs_alone
from ringlab.sched.slices import LEASE_FRACTION, LONE_SLICE_SECONDS, STRETCH

POLICY = CreditPolicy(slice_instructions=100_000, lease_seconds=10.0)


def test_a_slice_is_the_policy_slice_when_others_wait() -> None:
    plan = plan_slice(POLICY, lone=False, rate=10_000_000.0)
    assert plan.instructions == 100_000
    assert not plan.stretched
    assert plan.seconds == POLICY.lease_seconds / LEASE_FRACTION


def test_an_unmeasured_lone_vm_gets_a_plain_slice() -> None:
    plan = plan_slice(POLICY, lone=True, rate=0.0)
    assert plan.instructions == 100_000 and not plan.stretched


def test_a_lone_vm_runs_about_lone_slice_seconds_of_its_rate() -> None:
    rate = 2_000_000.0  # 0.25 s of it: 500,000 instructions, 5 slices
    plan = plan_slice(POLICY, lone=True, rate=rate)
    assert plan.instructions == int(rate * LONE_SLICE_SECONDS) == 500_000
    assert plan.stretched
    assert plan.seconds == LONE_SLICE_SECONDS


def test_a_stretched_slice_is_at_most_stretch_slices() -> None:
    plan = plan_slice(POLICY, lone=True, rate=1e12)
    assert plan.instructions == STRETCH * 100_000


def test_a_slow_lone_vm_still_gets_a_whole_slice() -> None:
    plan = plan_slice(POLICY, lone=True, rate=1_000.0)  # 250 instructions in 0.25 s
    assert plan.instructions == 100_000
    assert not plan.stretched
    assert plan.seconds == POLICY.lease_seconds / LEASE_FRACTION


def test_the_instruction_limit_shortens_the_slice_and_can_undo_the_stretch() -> None:
    assert plan_slice(POLICY, lone=False, rate=0.0, left=30_000).instructions == 30_000
    plan = plan_slice(POLICY, lone=True, rate=2_000_000.0, left=120_000)
    assert plan.instructions == 120_000 and plan.stretched
    plan = plan_slice(POLICY, lone=True, rate=2_000_000.0, left=80_000)
    assert plan.instructions == 80_000 and not plan.stretched
    assert plan.seconds == POLICY.lease_seconds / LEASE_FRACTION
    assert plan_slice(POLICY, lone=False, rate=0.0, left=0).instructions == 0


def test_only_an_uncapped_vm_that_nobody_waits_for_runs_alone() -> None:
    now = 100.0
    entries = {"1": Entry(status="running"), "2": Entry(status="created"), "3": Entry(status="paused")}
    assert runs_alone(POLICY, entries, "1", now)
    entries["2"].status = "runnable"
    assert not runs_alone(POLICY, entries, "1", now)
    capped = {"1": Entry(status="running", cap=50)}
    assert not runs_alone(POLICY, capped, "1", now)
    # a grant whose lease expired is up for grabs: that VM waits too
    expired = {"1": Entry(status="running"), "2": Entry(status="running", lease_until=now - 1)}
    assert not runs_alone(POLICY, expired, "1", now)


def test_measured_rate() -> None:
    assert measured_rate(500_000, 0.25) == pytest.approx(2_000_000.0)
    assert measured_rate(500_000, 0.0) == 0.0
