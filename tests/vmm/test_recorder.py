"""The flight recorder (issue 15): what it records is what the statistics count, under every
technique; it changes nothing about the run; its ring buffer is bounded; a trace file holds
one track per VM and per pCPU, slices as spans and exits as instants."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ringlab.guestos.build import build_image
from ringlab.vmm import run_vm
from ringlab.vmm.costs import switch_cycles
from ringlab.vmm.recorder import FlightRecorder, exits_by_reason
from ringlab.vmm.trace_events import summarize, trace_events

RUNS = [
    ("trap-emulate", "stock"),
    ("bt", "stock"),
    ("hw", "stock"),
    ("hw+np", "stock"),
    ("pv", "paravirt"),
]


def record(
    technique: str, kernel: str, workload: str = "syscall", **kw: Any
) -> tuple[dict[str, Any], FlightRecorder]:
    name, _, np = technique.partition("+")
    recorder = FlightRecorder(**kw)
    result = run_vm(
        build_image(workload, kernel), technique=name, nested_paging=bool(np), recorder=recorder
    ).to_json()
    return result, recorder


@pytest.mark.parametrize(("technique", "kernel"), RUNS)
def test_the_recorded_exits_are_the_statistics_reason_by_reason(technique: str, kernel: str) -> None:
    result, recorder = record(technique, kernel)
    guest = result["stats"]["guest"]
    assert guest["world_switches"] > 0
    assert exits_by_reason(recorder.records) == guest["exits"]
    assert sum(guest["exits"].values()) == guest["world_switches"]
    (the_slice,) = [r for r in recorder.records if r["kind"] == "slice"]
    assert the_slice["exits"] == guest["world_switches"]
    assert the_slice["why"] == result["exit"]["reason"]
    assert the_slice["end_vt"] >= the_slice["start_vt"]
    assert recorder.dropped == 0


@pytest.mark.parametrize(("technique", "kernel"), RUNS)
def test_the_exits_costs_add_up_to_the_vmms_switch_cycles(technique: str, kernel: str) -> None:
    """Each exit is priced from its start to the next exit (or its slice's end), so together they
    are every cycle the VMM's switch work cost after the first exit began."""
    name, _, np = technique.partition("+")
    recorder = FlightRecorder()
    from ringlab.vmm import VM, make_technique

    vm = VM(build_image("syscall", kernel), make_technique(name, nested_paging=bool(np)))
    before_first: list[int] = []
    recorder.attach(vm)
    record_exit = vm.counters.on_exit
    assert record_exit is not None

    def first(reason: str) -> None:
        if not before_first:
            before_first.append(switch_cycles(vm.counters))
        record_exit(reason)

    vm.counters.on_exit = first
    vm.run()
    costs = sum(r["cost"] for r in recorder.records if r["kind"] == "exit")
    assert costs == switch_cycles(vm.counters) - before_first[0]
    assert all(r["cost"] >= 0 for r in recorder.records if r["kind"] == "exit")


@pytest.mark.parametrize("technique", ["bt", "hw"])
def test_recording_changes_nothing_about_the_run(technique: str) -> None:
    plain = run_vm(build_image("syscall", "stock"), technique=technique).to_json()
    recorded, _ = record(technique, "stock")
    for doc in (plain, recorded):
        doc["stats"]["host"].pop("wall_seconds")
    assert recorded == plain


def test_the_ring_buffer_keeps_the_newest_records() -> None:
    full, _ = record("trap-emulate", "stock", capacity=1_000_000)
    _, recorder = record("trap-emulate", "stock", capacity=10)
    total = full["stats"]["guest"]["world_switches"] + 1  # and the slice
    assert len(recorder.records) == 10
    assert recorder.dropped == total - 10
    assert list(recorder.records)[-1]["kind"] == "slice"
    with pytest.raises(ValueError, match="at least one record"):
        FlightRecorder(0)


def test_take_hands_out_each_finished_record_once() -> None:
    """What a commit carries: every record exactly once, an exit only once its cost is known."""
    from ringlab.vmm import VM, make_technique

    recorder = FlightRecorder()
    vm = VM(build_image("syscall", "stock"), make_technique("hw"))
    recorder.attach(vm)
    taken: list[dict[str, Any]] = []
    recorder.begin_slice("cpu-0")
    for _ in range(50):
        outcome = vm.advance(2_000)
        taken += recorder.take()
        if outcome is not None:
            break
    recorder.end_slice("poweroff")
    taken += recorder.take()
    assert taken == list(recorder.records)
    assert recorder.take() == []
    exits = [r for r in taken if r["kind"] == "exit"]
    assert exits and all(r["pcpu"] == "cpu-0" and r["slice"] == 1 for r in exits)


def test_an_exit_record_says_where_the_guest_was_and_what_the_vmm_did() -> None:
    _, recorder = record("hw", "stock")
    exits = [r for r in recorder.records if r["kind"] == "exit"]
    io = [r for r in exits if r["reason"] == "IO_INSTRUCTION (30)"]
    assert io and all(r["cost"] == 1500 + 300 + 13900 + 100 for r in io)  # exit, emulation, I/O exit, device
    fills = [r for r in exits if r["reason"] == "EXCEPTION_NMI (0)" and "shadow_syncs" in r.get("vmm", {})]
    assert fills, "hw with shadow paging fills the shadow in #PF exits"
    assert all(r["technique"] == "hw" and r["ring"] in (0, 3) for r in exits)
    assert [r["vt"] for r in exits] == sorted(r["vt"] for r in exits)


def test_a_trace_has_a_track_per_vm_and_pcpu_with_slices_and_exits() -> None:
    runs = {t: record(t, k)[1] for t, k in RUNS[:3]}
    records = {t: list(r.records) for t, r in runs.items()}
    doc = json.loads(json.dumps(trace_events(records, clock="virtual")))
    events = doc["traceEvents"]
    names = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    assert names == {f"VM {t}" for t in records} | {"pCPU in-process"}
    vm_pid = {
        e["args"]["name"][3:]: e["pid"]
        for e in events
        if e["ph"] == "M" and e["args"]["name"].startswith("VM ")
    }
    for technique, rs in records.items():
        instants = [e for e in events if e["ph"] == "i" and e["pid"] == vm_pid[technique]]
        by_reason: dict[str, int] = {}
        for e in instants:
            by_reason[e["name"]] = by_reason.get(e["name"], 0) + 1
        assert by_reason == exits_by_reason(rs)
        (span,) = [e for e in events if e["ph"] == "X" and e["pid"] == vm_pid[technique]]
        assert all(span["ts"] <= e["ts"] <= span["ts"] + span["dur"] for e in instants)


def test_the_summary_counts_and_prices_each_reason() -> None:
    _, recorder = record("trap-emulate", "stock")
    rows = summarize({"vm": recorder.records})
    assert [r.count for r in rows] == sorted((r.count for r in rows), reverse=True)
    assert {r.reason: r.count for r in rows} == exits_by_reason(recorder.records)
    for r in rows:
        assert r.total_cost == sum(
            x["cost"] for x in recorder.records if x["kind"] == "exit" and x["reason"] == r.reason
        )
        assert r.mean_cost == r.total_cost / r.count
