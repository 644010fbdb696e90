"""The credit policy (``ringlab.sched.credit``) on its own: shares follow weights, boosts, caps,
fairness; pure decisions on plain entries, no services."""

from __future__ import annotations

import pytest

from ringlab.sched import CreditPolicy, Entry, SliceOutcome, jain_index


def test_credit_policy_shares_follow_weights() -> None:
    policy = CreditPolicy()
    entries = {"1": Entry(status="runnable", weight=100), "2": Entry(status="runnable", weight=300)}
    finished = None
    used = {"1": 0.0, "2": 0.0}
    now = 0.0
    for _ in range(400):
        decision = policy.decide(entries, now, finished=finished)
        for vm, d in decision.updates.items():
            entries[vm] = Entry.from_dict(d)
        assert decision.chosen is not None
        entries[decision.chosen].status, entries[decision.chosen].token = "running", 1
        now += 0.01
        used[decision.chosen] += 0.01
        finished = SliceOutcome(decision.chosen, 1, 0.01)
    assert used["2"] / (used["1"] + used["2"]) == pytest.approx(0.75, abs=0.02)


def test_a_vm_that_yielded_in_hlt_is_boosted_next() -> None:
    policy = CreditPolicy()
    entries = {
        "1": Entry(status="runnable", credit=5.0),
        "2": Entry(status="running", token=7, credit=1.0),
    }
    decision = policy.decide(entries, 1.0, finished=SliceOutcome("2", 7, 0.001, "idle"))
    assert decision.chosen == "2"  # boosted despite less credit
    assert not entries["2"].boost  # the boost is spent by this grant


def test_a_vm_over_its_share_is_not_boosted() -> None:
    policy = CreditPolicy()
    entries = {
        "1": Entry(status="runnable", credit=5.0),
        "2": Entry(status="running", token=7, credit=-1.0),
    }
    decision = policy.decide(entries, 1.0, finished=SliceOutcome("2", 7, 0.001, "idle"))
    assert decision.chosen == "1"


def test_a_vm_that_idles_on_every_slice_cannot_starve_a_busy_one() -> None:
    """hlt jumps virtual time to the next tick, so a guest idling in a loop wakes at once, slice
    after slice: boosted every time it would hold the pCPU forever. The busy VM must get about
    its share of host time."""
    policy = CreditPolicy()
    entries = {"1": Entry(status="runnable"), "2": Entry(status="runnable")}  # 1 idles, 2 computes
    slice_seconds = {"1": 0.001, "2": 0.03}
    used = dict.fromkeys(entries, 0.0)
    finished, now = None, 0.0
    while now < 20.0:
        decision = policy.decide(entries, now, finished=finished)
        for vm, d in decision.updates.items():
            entries[vm] = Entry.from_dict(d)
        chosen = decision.chosen
        assert chosen is not None
        entries[chosen].status, entries[chosen].token = "running", 1
        now += slice_seconds[chosen]
        used[chosen] += slice_seconds[chosen]
        finished = SliceOutcome(chosen, 1, slice_seconds[chosen], "idle" if chosen == "1" else "preempted")
    assert used["2"] / now == pytest.approx(0.5, abs=0.05)


def test_a_capped_vm_is_not_scheduled_past_its_cap() -> None:
    policy = CreditPolicy(cap_window_seconds=1.0)
    e = Entry(status="runnable", cap=10, cap_window=0.0, cap_used=0.2)
    assert not policy.eligible(e, 0.5)
    assert policy.eligible(e, 1.5)


def test_jain_index() -> None:
    assert jain_index([1, 1, 1, 1]) == 1.0
    assert jain_index([1, 0, 0, 0]) == 0.25


def test_a_lost_slice_is_not_charged_but_releases_the_grant() -> None:
    """A slice whose pCPU failed (or whose grant was revoked) kept nothing: the VM goes on from its
    last commit, so the time is not taken from its credit or counted as its CPU time."""
    policy = CreditPolicy()
    entries = {"1": Entry(status="running", token=3, pcpu="p", credit=0.2, cpu_seconds=1.0)}
    event = policy.account(entries, SliceOutcome("1", 3, 4.5, "lost"), now=10.0)
    e = entries["1"]
    assert (e.credit, e.cpu_seconds) == (0.2, 1.0)
    assert (e.status, e.token, e.pcpu) == ("runnable", 0, "")
    # what the event stream tells a checker: the lost span, and nothing charged for it
    assert event == {"kind": "descheduled", "vm": "1", "detail": "lost 5.500000 10.000000 0.000000"}


def test_a_slice_that_ran_is_charged_what_it_held() -> None:
    policy = CreditPolicy()
    entries = {"1": Entry(status="running", token=3, credit=0.2, cpu_seconds=1.0)}
    event = policy.account(entries, SliceOutcome("1", 3, 0.05, "preempted"), now=10.0)
    assert entries["1"].credit == pytest.approx(0.15)
    assert entries["1"].cpu_seconds == pytest.approx(1.05)
    assert event is not None and event["detail"] == "preempted 9.950000 10.000000 0.050000"


def test_a_pcpu_unfit_to_run_accounts_its_last_slice_and_picks_nobody() -> None:
    """The driver of a pCPU that stopped answering still hands its last slice back (so the VM runs
    elsewhere at once), but takes no VM until the pCPU answers again."""
    policy = CreditPolicy()
    entries = {
        "1": Entry(status="running", token=3, pcpu="p", credit=0.5),
        "2": Entry(status="runnable", credit=0.5),
    }
    decision = policy.decide(entries, 5.0, finished=SliceOutcome("1", 3, 0.1, "lost"), pick=False)
    assert decision.chosen is None
    assert decision.updates["1"]["status"] == "runnable"
    assert [e["kind"] for e in decision.events] == ["descheduled"]


def test_the_scheduled_event_says_the_credit_and_the_grants_lease() -> None:
    """``ringlab chaos check`` judges a failover against the lease the victim's grant had."""
    policy = CreditPolicy(lease_seconds=2.5)
    entries = {"1": Entry(status="runnable", weight=256, credit=0.25)}
    decision = policy.decide(entries, 10.0)
    assert decision.chosen == "1"
    assert decision.events == [{"kind": "scheduled", "vm": "1", "detail": "credit 0.250000 lease 2.5"}]
