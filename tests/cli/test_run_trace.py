"""``ringlab run --trace FILE`` and ``ringlab boot --trace``: the instruction trace of an in-process
run, its limit, and its mistakes (one clear line, status 2)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ringlab.cli.exitstatus import EXIT_USAGE
from tests.cli.conftest import HELLO, ringlab

INSN = re.compile(r"^ +\d+  tsc \d+ +0x[0-9a-f]{8}  r[0-3]  ")


def test_run_trace_writes_one_line_per_retired_instruction_and_the_same_output(tmp_path: Path) -> None:
    src = tmp_path / "hello.s"
    src.write_text(HELLO)
    trace = tmp_path / "hello.trace"
    plain = ringlab("run", str(src), "--json")
    traced = ringlab("run", str(src), "--json", "--trace", str(trace))
    assert traced.returncode == 0, traced.stderr
    doc, reference = json.loads(traced.stdout), json.loads(plain.stdout)
    assert doc["console"] == reference["console"] == "hi\n"
    assert doc["stats"]["guest"] == reference["stats"]["guest"]
    lines = trace.read_text().splitlines()
    assert sum(bool(INSN.match(line)) for line in lines) == doc["stats"]["guest"]["retired"]
    assert "movzx eax, byte [esi]" in lines[1]


def test_boot_trace_to_stderr_keeps_the_console_on_stdout_and_honours_the_limit() -> None:
    p = ringlab("boot", "--workload", "hello", "--technique", "pv", "--trace", "-", "--trace-limit", "3000")
    assert p.returncode == 0, p.stderr
    assert "hello" in p.stdout.lower()
    assert sum(bool(INSN.match(line)) for line in p.stderr.splitlines()) == 3000
    assert "world switch: hypercall" in p.stderr


def test_trace_with_via_is_refused_with_what_to_use_instead(tmp_path: Path) -> None:
    src = tmp_path / "hello.s"
    src.write_text(HELLO)
    p = ringlab("run", str(src), "--trace", "-", "--via", "127.0.0.1:1")
    assert p.returncode == EXIT_USAGE
    assert "ringlab trace vm" in p.stderr and "Traceback" not in p.stderr


def test_a_trace_file_that_cannot_be_written_is_one_clear_line(tmp_path: Path) -> None:
    src = tmp_path / "hello.s"
    src.write_text(HELLO)
    p = ringlab("run", str(src), "--trace", str(tmp_path / "no" / "such" / "dir" / "t.trace"))
    assert p.returncode != 0
    assert "t.trace" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
