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
    done = ringlab("demo", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for technique in ("native", "trap-emulate", "bt", "pv", "hw"):
        assert technique in done.stdout
    assert "everything shut down" in done.stdout
    assert (tmp_path / "ringlab-demo-pcpu.png").stat().st_size > 10_000
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.slow
def test_contention_benchmark_json_reports_a_share_per_vm_in_weight_order() -> None:
    """The shares themselves are host-time figures (the benchmark's output); what a busy machine
    cannot change is their form and their order: the VM with four times the weight of another gets
    more of the pCPU than it does."""
    done = ringlab("bench", "--suite", "contention", "--weights", "1,2,4", "--json")
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["vms"] == 3 and figures["weights"] == [1, 2, 4]
    assert figures["targets"] == pytest.approx([1 / 7, 2 / 7, 4 / 7], abs=1e-4)
    shares = figures["shares"]
    assert len(shares) == 3 and all(s > 0 for s in shares) and sum(shares) == pytest.approx(1, abs=1e-3)
    assert shares[2] > shares[0]
    assert 0 <= figures["scheduler_overhead"] < 1 and 0 < figures["jain"] <= 1


@pytest.mark.slow
def test_services_benchmark_json_counts_redis_round_trips_per_world_switch() -> None:
    done = ringlab("bench", "--suite", "services", "--json")
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["redis_round_trips_per_world_switch"] <= 2  # counted, not timed
    assert figures["exit_vs_echo"] > 0  # a ratio of two host times: the benchmark reports it


@pytest.mark.slow
def test_recorder_benchmark_json_compares_recording_on_and_off_in_process_and_through_the_services() -> None:
    """The overheads are host-time figures (the benchmark's output); what it must hold is what it
    compared: each technique's run with a recorder and without, and two deployments, one
    recording (the exits of every system call kept) and one not."""
    done = ringlab("bench", "--suite", "recorder", "--repeats", "1", "--json")
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert set(figures["in_process"]) == {"trap-emulate", "bt", "pv", "hw", "hw+np"}
    assert figures["in_process"]["pv"]["exits"] > 2 * 1000  # two world switches per system call
    for f in figures["in_process"].values():
        assert f["off_cpu_seconds"] > 0 and f["on_cpu_seconds"] > 0
    services = figures["services"]
    assert services["exits_recorded_per_vm"] == figures["in_process"]["pv"]["exits"]
    assert services["off_wall_seconds"] > 0 and services["on_wall_seconds"] > 0


@pytest.mark.slow
def test_migration_benchmark_moves_a_vm_per_working_set_and_compares_them() -> None:
    """What the migration suite compares, not how fast: a VM per working set moved between two
    deployments, pre-copy's rounds (a full copy, then each re-dirtied set, the stop-and-copy last),
    each downtime against the smallest working set's, and the table saying where pre-copy stopped
    converging."""
    import io

    from rich.console import Console

    from ringlab.cli.bench import _print_migration
    from ringlab.cli.bench.migration import migration_suite

    figures = migration_suite((1, 64), bandwidth_mbit=16.0)
    runs = figures["runs"]
    assert [r["pages_per_tick"] for r in runs] == [1, 64]
    assert figures["link_pages_per_second"] == round(16e6 / 8 / 4096, 1)
    for r in runs:
        assert r["rounds"] == len(r["pages_per_round"]) >= 2
        assert r["pages_sent"] == sum(r["pages_per_round"]) and r["pages_per_round"][0] > 64
        assert r["stop_and_copy_pages"] == r["pages_per_round"][-1]
        assert r["rounds"] <= figures["max_rounds"] + 1  # the pre-copy rounds at most, then the stop
        if not r["converged"]:  # only the round limit ends pre-copy short of its target
            assert r["rounds"] == figures["max_rounds"] + 1
    assert runs[0]["downtime_vs_smallest"] == 1.0
    out = io.StringIO()
    _print_migration(figures, Console(file=out, width=200))
    assert "downtime against dirty rate" in out.getvalue() and "pages/tick" in out.getvalue()
