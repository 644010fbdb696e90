"""``ringlab demo`` and the two benchmarks that run a local deployment, end to end as a person
runs them.  They pin what the commands print, never how fast the host is: figures measured in host
time are the benchmarks' output, not something a test can hold a busy machine to."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def ringlab(*args: str, timeout: float = 600, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ringlab.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd
    )


@pytest.mark.slow
def test_demo_runs_every_technique_through_the_services(tmp_path: Path) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "ringlab.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    for technique in ("native", "trap-emulate", "bt", "pv", "hw"):
        assert technique in done.stdout
    assert "everything shut down" in done.stdout
    assert (tmp_path / "ringlab-demo-pcpu.png").stat().st_size > 10_000
    assert time.monotonic() - started < 60


@pytest.mark.slow
def test_contention_benchmark_json() -> None:
    done = ringlab("bench", "--suite", "contention", "--weights", "1,2,4", "--json", timeout=180)
    figures = json.loads(done.stdout)
    assert figures["vms"] == 3 and figures["weights"] == [1, 2, 4]
    assert figures["max_share_error"] < 0.10 and figures["scheduler_overhead"] < 0.05


@pytest.mark.slow
def test_services_benchmark_json() -> None:
    figures = json.loads(ringlab("bench", "--suite", "services", "--json", timeout=180).stdout)
    assert figures["redis_round_trips_per_world_switch"] <= 2
    assert figures["exit_vs_echo"] < 3  # the target is 1.5; a loaded CI machine gets slack
