"""``ringlab trace run``: one guest recorded under several techniques, one Perfetto trace file with
a track per technique, a xenalyze-style summary; its mistakes are one clear line and status 2."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from ringlab.cli.exitstatus import EXIT_USAGE
from ringlab.cli.main import build_parser
from tests.cli.conftest import HELLO, ringlab


def test_trace_run_writes_a_trace_whose_exits_are_each_runs_statistics(tmp_path: Path) -> None:
    out = tmp_path / "syscall.json"
    p = ringlab(
        "trace", "run", "--workload", "syscall", "--technique", "bt", "--technique", "hw+np",
        "--clock", "virtual", "-o", str(out), "--json",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert set(doc["runs"]) == {"bt", "hw+np"}
    trace = json.loads(out.read_text())
    events = trace["traceEvents"]
    for technique, run in doc["runs"].items():
        assert run["exit"]["reason"] == "poweroff"
        summed = {r["reason"]: r["count"] for r in doc["summary"] if r["vm"] == technique}
        assert summed == run["exits"] and run["exits"]
        (pid,) = {e["pid"] for e in events if e["ph"] == "M" and e["args"].get("name") == f"VM {technique}"}
        instants = [e for e in events if e["ph"] == "i" and e["pid"] == pid]
        assert len(instants) == sum(run["exits"].values())
    assert trace["otherData"]["clock"] == "virtual"


def test_trace_run_prints_a_table_per_technique_and_where_the_file_went(tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    p = ringlab("trace", "run", "--workload", "hello", "--technique", "trap-emulate", "-o", str(out))
    assert p.returncode == 0, p.stderr
    assert "trap-emulate:" in p.stdout and "exits" in p.stdout
    assert "#GP (out)" in p.stdout  # trap-and-emulate's trap, named by the instruction
    assert f"wrote {out}" in p.stdout and "ui.perfetto.dev" in p.stdout


def test_trace_run_of_a_bare_program_natively_says_there_is_nothing_to_record(tmp_path: Path) -> None:
    prog = tmp_path / "hello.s"
    prog.write_text(HELLO)
    p = ringlab("trace", "run", str(prog), "--technique", "native", "-o", str(tmp_path / "n.json"))
    assert p.returncode == 0, p.stderr
    assert "no exits were recorded" in p.stdout


def test_trace_run_with_no_room_for_a_record_is_a_usage_error(tmp_path: Path) -> None:
    p = ringlab("trace", "run", "--capacity", "0", "-o", str(tmp_path / "x.json"))
    assert p.returncode == EXIT_USAGE and "Traceback" not in p.stderr
    assert "--capacity" in p.stderr


def test_trace_run_to_a_file_that_cannot_be_written_is_a_usage_error(tmp_path: Path) -> None:
    p = ringlab("trace", "run", "--technique", "hw", "-o", str(tmp_path / "no" / "such" / "dir.json"))
    assert p.returncode == EXIT_USAGE and "Traceback" not in p.stderr
    assert "cannot write the trace" in p.stderr


def test_trace_run_of_a_program_and_a_workload_is_a_usage_error(tmp_path: Path) -> None:
    prog = tmp_path / "hello.s"
    prog.write_text(HELLO)
    p = ringlab("trace", "run", str(prog), "--workload", "hello", "-o", str(tmp_path / "x.json"))
    assert p.returncode == EXIT_USAGE and "give one" in p.stderr


@pytest.mark.parametrize("action", ["run", "vm"])
def test_every_option_of_trace_says_its_default(action: str) -> None:
    def subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
        return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))

    trace = subparsers(build_parser()).choices["trace"]
    for option in subparsers(trace).choices[action]._actions:
        if not option.option_strings or option.nargs == 0:
            continue
        assert "default" in (option.help or ""), option.option_strings


def test_trace_vm_spans_on_the_virtual_clock_is_a_usage_error(tmp_path: Path) -> None:
    p = ringlab("trace", "vm", "--spans", str(tmp_path), "--clock", "virtual", "-o", str(tmp_path / "x.json"))
    assert p.returncode == EXIT_USAGE and "Traceback" not in p.stderr
    assert "--spans" in p.stderr and "wall clock" in p.stderr


def test_trace_vm_spans_of_a_folder_that_is_not_there_is_a_usage_error(tmp_path: Path) -> None:
    p = ringlab("trace", "vm", "--spans", str(tmp_path / "none"), "-o", str(tmp_path / "x.json"))
    assert p.returncode == EXIT_USAGE and "Traceback" not in p.stderr
    assert "no such folder" in p.stderr and "RINGLAB_TRACING=file:" in p.stderr


def _span(name: str, span_id: str, parent: str | None, start: int, end: int, **where: object) -> dict:
    service = str(where.pop("service", "hypervisor"))
    return {
        "trace_id": str(where.pop("trace", "t1")),
        "span_id": span_id,
        "parent_id": parent,
        "name": name,
        "kind": str(where.pop("kind", "INTERNAL")),
        "start_ns": start,
        "end_ns": end,
        "status": "UNSET",
        "attributes": {"thread.name": str(where.pop("thread", "driver-pcpu0")), **where},
        "service": service,
        "instance": "pcpu0" if service == "cpu" else "",
        "pid": 7 if service == "cpu" else 5,
    }


def test_span_files_become_a_track_per_process_a_thread_per_thread_and_arrows_between_services() -> None:
    from ringlab.cli.trace import span_tracks
    from ringlab.vmm.trace_events import trace_events

    ms = 1_000_000
    spans = [
        _span("slice", "a", None, 0, 10 * ms, **{"ringlab.vm.id": "1"}),
        _span("world switch", "b", "a", 1 * ms, 4 * ms, **{"ringlab.vm.id": "1"}),
        _span("/ringlab.v1.Cpu/RunVcpu", "c", "b", 1 * ms, 4 * ms, kind="CLIENT"),
        _span(
            "/ringlab.v1.Cpu/RunVcpu", "d", "c", 2 * ms, 3 * ms, kind="SERVER", service="cpu", thread="cpu_0"
        ),
        _span("commit", "e", "d", 2 * ms, 3 * ms, service="cpu", thread="cpu_0", **{"ringlab.vm.id": "1"}),
        _span("slice", "f", None, 0, 5 * ms, trace="t2", thread="driver-pcpu1", **{"ringlab.vm.id": "2"}),
        _span("slice", "g", None, 50 * ms, 60 * ms, trace="t3", **{"ringlab.vm.id": "1"}),
    ]
    assert {s["args"]["span_id"] for s in span_tracks(spans, {"1"}, (0, 20 * ms))} == set("abcde")
    assert {s["args"]["span_id"] for s in span_tracks(spans)} == set("abcdefg")
    events = trace_events({}, spans=span_tracks(spans))["traceEvents"]
    processes = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert sorted(processes.values()) == ["cpu pcpu0 (pid 7)", "hypervisor (pid 5)"]
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert sorted(threads.values()) == ["cpu_0", "driver-pcpu0", "driver-pcpu1"]
    drawn = {e["args"]["span_id"]: e for e in events if e["ph"] == "X"}
    assert processes[drawn["d"]["pid"]] == "cpu pcpu0 (pid 7)"
    assert drawn["d"]["args"]["parent_id"] == "c" and drawn["d"]["args"]["kind"] == "SERVER"
    assert drawn["b"]["ts"] == 1000 and drawn["b"]["dur"] == 3000  # microseconds from the first span
    assert drawn["f"]["tid"] != drawn["a"]["tid"]  # another driver thread: another track line
    # One arrow, from the client span's thread to the server's (the only parent elsewhere), at
    # the server span's start.
    flows = sorted((e["ph"], e["pid"], e["tid"], e["ts"]) for e in events if e["ph"] in ("s", "f"))
    assert flows == [
        ("f", drawn["d"]["pid"], drawn["d"]["tid"], 2000.0),
        ("s", drawn["c"]["pid"], drawn["c"]["tid"], 2000.0),
    ]
