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


@pytest.mark.parametrize("action", ["run"])
def test_every_option_of_trace_says_its_default(action: str) -> None:
    def subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
        return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))

    trace = subparsers(build_parser()).choices["trace"]
    for option in subparsers(trace).choices[action]._actions:
        if not option.option_strings or option.nargs == 0:
            continue
        assert "default" in (option.help or ""), option.option_strings
