"""The broken-fencing exercise of docs/labs/chaos.md, for real: ``ringlab chaos run --scenario
split-brain`` pauses the pCPU running a VM past its grant's lease, so that the VM is granted to the
other pCPU, pauses that one before it commits, and resumes the first: it finishes its slice and
commits with its old token.  With fencing (always, but for the teaching switch) that commit is
refused and the checker passes; with ``RINGLAB_UNSAFE_NO_FENCING=1`` it lands, and the checker
fails with a stale commit.  Marked ``chaos``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ringlab.cli import main
from ringlab.cli.exitstatus import EXIT_CHECK_FAILED, EXIT_OK
from tests.chaos import fleet
from tests.chaos.conftest import Up

pytestmark = pytest.mark.chaos

LONG = fleet.Spec("native", "compute", defines=(("ROUNDS", 400),))
"""A VM that computes for a few seconds: still running while its pCPU is paused and it moves."""


@pytest.mark.parametrize("fencing", [True, False], ids=["fenced", "unfenced"])
def test_a_stale_holders_commit_is_refused_unless_fencing_is_broken(
    fencing: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"RINGLAB_LEASE": "2"} | ({} if fencing else {"RINGLAB_UNSAFE_NO_FENCING": "1"})
    up = Up(tmp_path / "data", env)
    try:
        [name] = fleet.create(up.hypervisor, "split", (LONG,))
        history = tmp_path / "history.jsonl"
        status = main(
            ["chaos", "run", "--hypervisor", up.hypervisor, "--data", str(up.folder), "--scenario", "split-brain",
             "--vm", name, "--history", str(history), "--timeout", "300", "--json"]
        )  # fmt: skip
        verdict = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        cpu_log = (up.folder / "cpu0.log").read_text()
    finally:
        up.stop()
    records = [json.loads(line) for line in history.read_text().splitlines()]
    notes = [r["text"] for r in records if r["type"] == "note"]
    faults = [(r["action"], r["target"]) for r in records if r["type"] == "fault"]
    assert len(faults) >= 2 and all(action == "pause" for action, _ in faults), (faults, notes)
    failed = {p["name"]: p["failures"] for p in verdict["properties"] if not p["ok"]}
    # The VM ended exactly as in-process either way: runs are deterministic, so even the stale
    # commit holds a state the VM did reach. What fencing protects is the rule itself.
    assert "ended" not in failed and "equivalent" not in failed, failed
    if fencing:
        assert status == EXIT_OK, (failed, notes)
        assert verdict["commits"]["refused_stale_lease"] >= 1, notes  # the old holder was turned away
        assert "RINGLAB_UNSAFE_NO_FENCING" not in cpu_log
    else:
        assert status == EXIT_CHECK_FAILED, (verdict, notes)
        assert list(failed) == ["fenced"], failed
        assert failed["fenced"][0].startswith(f"stale commit: VM {name} generation ")
        assert "[fencing was off]" in failed["fenced"][0]
        assert "!!! RINGLAB_UNSAFE_NO_FENCING=1: commits are NOT fenced" in cpu_log  # said loudly
