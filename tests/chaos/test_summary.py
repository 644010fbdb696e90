"""The chaos trials' failover figures reach the end of the run: a pytest run in a subprocess, from
the repository's root as .ci/run starts it, of a probe that records victims the way every trial
does (``fleet.record_victims``), must print the summary the chaos conftest writes.  Once it did
not: the hook read a list in the conftest module pytest had loaded (``chaos.conftest``) while the
trials filled the same list in another module object (``tests.chaos.conftest``)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.chaos import fleet

ROOT = Path(__file__).resolve().parents[2]
PROBE = "RINGLAB_CHAOS_SUMMARY_PROBE"
VICTIMS = [
    {"fault": 0, "action": "kill", "target": "cpu1", "vm": "3", "seconds": 1.25, "kind": "cpu",
     "ready_seconds": 0.25, "resumed_seconds": 1.0, "bound_seconds": 2.5, "over_bound": False,
     "lost_seconds": 0.5, "charged_seconds": 0.0},
    {"fault": 1, "action": "pause", "target": "redis", "vm": "4", "seconds": 2.5,
     "lost_seconds": 0.25, "charged_seconds": 0.0},
    {"fault": 1, "action": "pause", "target": "redis", "vm": "5", "seconds": None,
     "lost_seconds": 0.0, "charged_seconds": 0.0},
]  # fmt: skip


@pytest.mark.chaos
def test_summary_probe(record_property: Callable[[str, object], None]) -> None:
    """Not a trial: run only by the test below (in -m chaos runs it is skipped)."""
    if os.environ.get(PROBE) != "1":
        pytest.skip(f"the summary probe: run by test_the_failover_summary_prints ({PROBE}=1)")
    fleet.record_victims(record_property, VICTIMS, 2.0)


@pytest.mark.parametrize("workers", [[], ["-n", "1"]], ids=["in-process", "xdist"])
def test_the_failover_summary_prints(workers: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "RINGLAB_CHAOS"))}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", "chaos", *workers,
         f"{Path(__file__).relative_to(ROOT)}::test_summary_probe"],
        cwd=ROOT, env=env | {PROBE: "1"}, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    assert "1 passed" in out, out[-3000:]
    assert "chaos trials: failover" in out, out[-3000:]
    assert (
        "cpu: 1 VMs hit, 0 never ran again; failover median 1.25 s, max 1.25 s; from when a pCPU "
        "could run it: median 1.00 s, max 1.00 s, 0 over the lease plus one slice (2.50 s)"
    ) in out, out[-3000:]
    assert "redis: 2 VMs hit, 1 never ran again; failover median 2.50 s, max 2.50 s" in out, out[-3000:]
    assert "lost slices after a fault: 0.75 s in all, 0.00 s of it charged to the VMs" in out, out[-3000:]
