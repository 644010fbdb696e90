"""The checker on small hand-built histories: each broken property makes it fail, naming the
evidence; a clean history passes; the failover, lost-time and charge measures come out of the
events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ringlab.cli import main
from ringlab.cli.chaos.checker import check
from ringlab.cli.chaos.history import History, load
from ringlab.cli.exitstatus import EXIT_CHECK_FAILED, EXIT_OK, EXIT_USAGE

DEFINITION = {"name": "a", "technique": "native", "workload": "hello", "kernel": "stock"}
WANT = {
    "console": "hello\n",
    "exit": {"reason": "poweroff", "code": 0, "detail": ""},
    "registers": {"eax": 0},
    "stats": {"guest": {"retired": 100}, "host": {"wall_seconds": 1.0}},
}


def model(definition: dict[str, Any], image: bytes | None) -> dict[str, Any]:
    return WANT


def commit(token: int, current: int, generation: int, retired: int, **more: Any) -> dict[str, Any]:
    return {
        "type": "commit",
        "time": 10.0 + generation,
        "vm": "1",
        "token": str(token),
        "current": str(current),
        "status": "running",
        "pcpu": "pcpu0",
        "boot": "0",
        "base": str(generation - 1),
        "generation": str(generation),
        "retired": str(retired),
        "outcome": "applied",
        "fenced": "1",
    } | more


def history(**change: Any) -> list[dict[str, Any]]:
    """A clean history of one VM (id 1, "a") with two commits; ``change`` replaces parts."""
    doc = json.loads(json.dumps(WANT))
    doc["stats"]["host"]["wall_seconds"] = 7.0  # host figures never count
    records: list[dict[str, Any]] = [
        {"type": "start", "time": 1.0, "seed": 1},
        {"type": "vm", "time": 1.0, "id": "1", "name": "a", "definition": DEFINITION, "image": None},
        *change.get("commits", [commit(5, 5, 1, 50), commit(6, 6, 2, 100)]),
        {"type": "result", "time": 20.0, "vm": "1", "name": "a", "status": change.get("status", "poweroff"),
         "doc": change.get("doc", doc)},
        {"type": "end", "time": 21.0, "ended": True},
    ]  # fmt: skip
    return records


def failed(records: list[dict[str, Any]]) -> dict[str, list[str]]:
    verdict = check(records, expected=model)
    return {p.name: p.failures for p in verdict.properties if not p.ok}


def test_a_clean_history_passes() -> None:
    verdict = check(history(), expected=model)
    assert verdict.ok, [p.failures for p in verdict.properties]
    assert verdict.commits["applied"] == 2


def test_a_stale_commit_fails_fenced() -> None:
    found = failed(history(commits=[commit(5, 5, 1, 50), commit(5, 6, 2, 100, fenced="0")]))
    assert list(found) == ["fenced"]
    assert "stale commit: VM a generation 2 landed with token 5 while the grant was 6" in found["fenced"][0]
    assert "[fencing was off]" in found["fenced"][0]


def test_a_refused_stale_commit_is_counted_not_failed() -> None:
    refused = commit(5, 6, 2, 100, outcome="refused", why="stale lease: token 5 is not the current grant")
    verdict = check(history(commits=[commit(5, 5, 1, 50), refused, commit(6, 6, 2, 100)]), expected=model)
    assert verdict.ok and verdict.commits["refused_stale_lease"] == 1


def test_a_regressing_generation_or_retired_count_fails_monotonic() -> None:
    found = failed(history(commits=[commit(5, 5, 2, 100), commit(6, 6, 2, 100)]))
    assert found == {"monotonic": ["VM a: generation went from 2 to 2"]}
    found = failed(history(commits=[commit(5, 5, 1, 100), commit(6, 6, 2, 60)]))
    assert found == {"monotonic": ["VM a: retired instructions went back from 100 to 60 (generation 2)"]}
    # A reboot starts the count again: not a regression.
    assert not failed(history(commits=[commit(5, 5, 1, 100), commit(6, 6, 2, 60, boot="1")]))


def test_a_lost_vm_fails_ended() -> None:
    found = failed(history(status="running"))
    assert found == {"ended": ["VM a (id 1) did not end: last seen running (lost)"]}
    records = [r for r in history() if r["type"] != "result"]
    assert failed(records) == {"ended": ["VM a (id 1) did not end: last seen nowhere (lost)"]}


def test_a_differing_console_fails_equivalent() -> None:
    doc = json.loads(json.dumps(WANT))
    doc["console"] = "hellp\n"
    found = failed(history(doc=doc))
    assert list(found) == ["equivalent"]
    assert found["equivalent"][0].startswith(
        "VM a (native): console differs (6 bytes, expected 6; first difference at byte 4"
    )


def test_differing_guest_statistics_or_exit_fail_equivalent() -> None:
    doc = json.loads(json.dumps(WANT))
    doc["stats"]["guest"]["retired"] = 99
    doc["exit"]["code"] = 1
    found = failed(history(doc=doc))["equivalent"]
    assert any("exit differs" in f for f in found)
    assert any("guest statistics differ: retired 99 vs 100" in f for f in found)


def _paused_pcpu_events(lost_detail: str) -> list[dict[str, Any]]:
    return [
        {"type": "event", "time": 100.0, "kind": "scheduled", "vm": "1", "pcpu": "pcpu0", "detail": "credit 1"},
        {"type": "fault", "time": 101.0, "action": "pause", "target": "cpu0", "kind": "cpu", "pcpu": "pcpu0", "seconds": 5},
        # The slice on the paused pCPU is lost when the pCPU answers again, 6 s later ...
        {"type": "event", "time": 107.0, "kind": "descheduled", "vm": "1", "pcpu": "pcpu0", "detail": lost_detail},
        # ... and the VM had run again on the other pCPU 3 s after the fault.
        {"type": "event", "time": 104.0, "kind": "scheduled", "vm": "1", "pcpu": "pcpu1", "detail": "credit 1"},
        {"type": "event", "time": 105.0, "kind": "descheduled", "vm": "1", "pcpu": "pcpu1", "detail": "preempted 104.0 105.0 1.0"},
        # A fault of the other pCPU afterwards hits nothing.
        {"type": "fault", "time": 106.0, "action": "kill", "target": "cpu1", "kind": "cpu", "pcpu": "pcpu1"},
    ]  # fmt: skip


def test_failover_and_lost_time_come_from_the_slices() -> None:
    events = _paused_pcpu_events("lost 100.0 107.0 0.0")
    verdict = check(history() + events, expected=model)
    [hit] = verdict.failovers
    assert (hit.fault, hit.vm, hit.seconds, hit.lost, hit.charged) == (0, "1", 3.0, 6.0, 0.0)
    assert verdict.ok  # the lost slice took no credit
    bounded = check(history() + events, expected=model, failover_bound=2.0, charge_bound=1.0)
    assert {p.name for p in bounded.properties if not p.ok} == {"failover"}


def _pcpu_failover(*, other_down_until: float | None, hypervisor_fault: bool = False) -> list[dict[str, Any]]:
    """VM 1 holds a 2 s grant on pcpu0, which is killed at 101; the VM runs again on pcpu1 at 106.
    With ``other_down_until``, pcpu1 is paused from 100.5 to then (the VM cannot move meanwhile)."""
    records: list[dict[str, Any]] = [
        {"type": "event", "time": 100.0, "kind": "scheduled", "vm": "1", "pcpu": "pcpu0", "detail": "credit 1 lease 2"},
        {"type": "fault", "time": 101.0, "action": "kill", "target": "cpu0", "kind": "cpu", "pcpu": "pcpu0"},
        {"type": "event", "time": 101.5, "kind": "descheduled", "vm": "1", "pcpu": "pcpu0", "detail": "lost 100.0 101.5 0.0"},
        {"type": "event", "time": 106.0, "kind": "scheduled", "vm": "1", "pcpu": "pcpu1", "detail": "credit 1 lease 2"},
        {"type": "event", "time": 106.5, "kind": "descheduled", "vm": "1", "pcpu": "pcpu1", "detail": "preempted 106.0 106.5 0.5"},
    ]  # fmt: skip
    if other_down_until is not None:
        records += [
            {"type": "fault", "time": 100.5, "action": "pause", "target": "cpu1", "kind": "cpu", "pcpu": "pcpu1", "seconds": 9},
            {"type": "recover", "time": other_down_until, "action": "pause", "target": "cpu1", "kind": "cpu"},
        ]  # fmt: skip
    if hypervisor_fault:  # the same VM, hit by a kill of the hypervisor instead
        records[1] = {"type": "fault", "time": 101.0, "action": "kill", "target": "hypervisor", "kind": "hypervisor", "pcpu": ""}  # fmt: skip
    return records


def test_a_pcpu_failover_is_judged_against_its_grants_lease_plus_one_slice() -> None:
    """5 s from the kill to the next slice, against 2 s + 0.5 s: over the bound."""
    events = _pcpu_failover(other_down_until=None)
    verdict = check(history() + events, expected=model)
    [hit] = verdict.failovers
    assert (hit.kind, hit.seconds, hit.ready, hit.resumed, hit.bound) == ("cpu", 5.0, 0.0, 5.0, 2.5)
    assert hit.over_bound and verdict.ok  # measured; a property only when asked
    assert verdict.failover_figures()["pcpu_over_bound"] == 1
    bounded = check(history() + events, expected=model, failover_bound="lease")
    assert {p.name: p.failures for p in bounded.properties if not p.ok} == {
        "failover": [
            "VM a after fault 0 (kill cpu0): took 5.00 s, 5.00 s of it while it could run (bound 2.50 s)"
        ]
    }
    assert not check(history() + events, expected=model, failover_bound=6.0).properties[-1].failures


def test_the_time_no_pcpu_was_up_is_not_held_against_the_failover() -> None:
    """pcpu1 was paused until 104: of the 5 s, 3 s (101 to 104) no pCPU could run the VM, so it
    resumed 2 s after it could, within its bound."""
    events = _pcpu_failover(other_down_until=104.0)
    verdict = check(history() + events, expected=model, failover_bound="lease")
    [hit] = [f for f in verdict.failovers if f.target == "cpu0"]
    assert (hit.seconds, hit.ready, hit.resumed, hit.over_bound) == (5.0, 3.0, 2.0, False)
    assert verdict.ok, [p.failures for p in verdict.properties]


def test_a_fault_of_the_hypervisor_is_measured_but_not_judged_as_a_pcpu_failover() -> None:
    events = _pcpu_failover(other_down_until=None, hypervisor_fault=True)
    verdict = check(history() + events, expected=model, failover_bound="lease")
    [hit] = verdict.failovers
    assert (hit.kind, hit.seconds) == ("hypervisor", 5.0)
    assert not hit.over_bound and verdict.ok
    [failover] = [p for p in verdict.properties if p.name == "failover"]
    assert failover.checked == 0


def test_a_lost_slice_that_took_credit_fails_uncharged() -> None:
    """The scheduler's own record of the slice says what it charged: a lost slice must say 0."""
    events = _paused_pcpu_events("lost 100.0 107.0 7.0")
    verdict = check(history() + events, expected=model)
    assert {p.name: p.failures for p in verdict.properties if not p.ok} == {
        "uncharged": ["VM a: a slice lost on pcpu0 was charged 7.000 s of credit"]
    }
    assert verdict.failovers[0].charged == 7.0
    bounded = check(history() + events, expected=model, charge_bound=1.0)
    assert {p.name for p in bounded.properties if not p.ok} == {"uncharged", "charged"}


def test_chaos_check_prints_the_verdict_and_exits_4_on_a_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import ringlab.cli.chaos.checker as checker

    monkeypatch.setattr(checker, "expected_result", model)
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    for path, records in ((good, history()), (bad, history(commits=[commit(5, 6, 1, 50)]))):
        with History(path) as h:
            for r in records:
                h.add(r.pop("type"), **r)
    assert load(good)[1]["name"] == "a"
    assert main(["chaos", "check", str(good)]) == EXIT_OK
    assert "PASS: every property held" in capsys.readouterr().out
    assert main(["chaos", "check", str(bad)]) == EXIT_CHECK_FAILED
    out = capsys.readouterr().out
    assert "FAIL: fenced (stale commit)" in out and "stale commit: VM a" in out
    assert main(["chaos", "check", "--json", str(bad)]) == EXIT_CHECK_FAILED
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and [p["name"] for p in doc["properties"] if not p["ok"]] == ["fenced"]
    bad.write_text("{not json\n" + good.read_text())
    assert main(["chaos", "check", str(bad)]) == EXIT_USAGE
    assert "bad.jsonl:1: not a JSON object" in capsys.readouterr().err


def test_chaos_check_failover_bound_lease_judges_each_grants_lease(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import ringlab.cli.chaos.checker as checker

    monkeypatch.setattr(checker, "expected_result", model)
    path = tmp_path / "history.jsonl"
    with History(path) as h:
        for r in history() + _pcpu_failover(other_down_until=None):
            h.add(r.pop("type"), **r)
    assert main(["chaos", "check", "--json", str(path)]) == EXIT_OK  # measured only
    doc = json.loads(capsys.readouterr().out)
    assert doc["failover"]["pcpu_over_bound"] == 1
    assert (doc["victims"][0]["kind"], doc["victims"][0]["over_bound"]) == ("cpu", True)
    assert (doc["victims"][0]["resumed_seconds"], doc["victims"][0]["bound_seconds"]) == (5.0, 2.5)
    assert main(["chaos", "check", "--json", "--failover-bound", "lease", str(path)]) == EXIT_CHECK_FAILED
    doc = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in doc["properties"] if not p["ok"]] == ["failover"]
