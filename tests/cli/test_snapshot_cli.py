"""``ringlab run/boot --snapshot-at N --snapshot FILE`` and ``ringlab run --restore FILE``: the
restored VM prints and ends as the run never snapshotted; mistakes are one clear line, status 2."""

from __future__ import annotations

import json
from pathlib import Path

from ringlab.cli.exitstatus import EXIT_USAGE
from tests.cli.conftest import HELLO, ringlab


def test_boot_snapshot_then_restore_ends_as_the_whole_run(tmp_path: Path) -> None:
    snap = tmp_path / "pv.snap"
    whole = ringlab("boot", "--workload", "syscall", "--technique", "pv", "--json")
    first = ringlab(
        "boot", "--workload", "syscall", "--technique", "pv", "--snapshot-at", "30000",
        "--snapshot", str(snap), "--json",
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert f"snapshot at 30000 instructions written to {snap}" in first.stderr
    rest = ringlab("run", "--restore", str(snap), "--json")
    assert rest.returncode == 0, rest.stderr
    want, got = json.loads(whole.stdout), json.loads(rest.stdout)
    assert got["console"] == want["console"] and got["exit"] == want["exit"]
    assert got["registers"] == want["registers"]
    assert got["stats"]["guest"] == want["stats"]["guest"]


def test_restore_with_run_options_that_the_snapshot_decides_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "hello.s"
    src.write_text(HELLO)
    snap = tmp_path / "h.snap"
    made = ringlab("run", str(src), "--snapshot-at", "5", "--snapshot", str(snap))
    assert made.returncode == 0, made.stderr
    p = ringlab("run", str(src), "--restore", str(snap), "--technique", "bt")
    assert p.returncode == EXIT_USAGE
    assert "leave out PROGRAM, --technique" in p.stderr


def test_a_damaged_snapshot_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.snap"
    bad.write_bytes(b"RLSNAP\r\n" + bytes(100))
    p = ringlab("run", "--restore", str(bad))
    assert p.returncode == EXIT_USAGE
    assert p.stderr.strip().splitlines() == [
        f"ringlab: {bad}: snapshot format version 0; this Ringlab reads version 1"
    ]


def test_snapshot_needs_its_instruction_count(tmp_path: Path) -> None:
    src = tmp_path / "hello.s"
    src.write_text(HELLO)
    p = ringlab("run", str(src), "--snapshot", str(tmp_path / "x.snap"))
    assert p.returncode == EXIT_USAGE and "go together" in p.stderr
    assert not (tmp_path / "x.snap").exists()
