"""Seeded chaos trials on a real ``ringlab up`` deployment (two pCPUs, its supervisor restarting
what is killed): each trial starts VMs under every technique (and a guest service owning one more),
kills, pauses and restarts cpu services, the hypervisor, the guest and Redis while they run, with
``ringlab chaos run``, and must pass ``ringlab chaos check``: every VM ended exactly as its
in-process run, no stale commit landed, nothing committed went backwards.

Marked ``chaos`` (.ci/run runs them after the fuzzers): 20 trials, ten per deployment (whose
guest service lives through them all), each with twelve VMs (two of every technique, hw with
nested paging among them) and the guest service's VM; RINGLAB_CHAOS_FULL=1 runs 100.
Odd trials follow a schedule that covers every kind of service with every action (over the
run); even ones draw theirs from the seed.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ringlab.cli import main
from ringlab.cli.exitstatus import EXIT_OK
from ringlab.cli.launch import ProcessLauncher
from tests.chaos import fleet
from tests.chaos.conftest import Up

pytestmark = pytest.mark.chaos

FULL = os.environ.get("RINGLAB_CHAOS_FULL") == "1"
TRIALS = 100 if FULL else 20
PER_DEPLOYMENT = 10
LEASE = "2"
"""The grant lease (seconds): short, so that a VM whose pCPU failed moves soon."""
COMBOS = [
    (kind, action)
    for kind in ("cpu", "hypervisor", "guest", "redis")
    for action in ("kill", "pause", "restart")
]
GUEST_TECHNIQUES = ("native", "trap-emulate", "bt", "pv", "hw")


@pytest.fixture(scope="module")
def deployments(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[int], Up]]:
    """The deployment of trial group N (one at a time: the previous one is stopped)."""
    home = tmp_path_factory.mktemp("chaos-home")
    saved = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(home)  # the launched guests' records, apart from anyone else's
    current: dict[int, Up] = {}

    def get(group: int) -> Up:
        if group not in current:
            for up in current.values():
                up.stop()
            current.clear()
            up = current[group] = Up(tmp_path_factory.mktemp(f"chaos-up{group}"), {"RINGLAB_LEASE": LEASE})
            _launch_guest(up, f"guest{group}", GUEST_TECHNIQUES[group % len(GUEST_TECHNIQUES)])
        return current[group]

    try:
        yield get
    finally:
        for group, up in current.items():
            ProcessLauncher().remove(f"guest{group}")
            up.stop()
        if saved is None:
            os.environ.pop("XDG_STATE_HOME", None)
        else:
            os.environ["XDG_STATE_HOME"] = saved


def _schedule(trial: int, rng: random.Random) -> str:
    """Two faults that walk through COMBOS over the odd trials, and one drawn from the seed."""
    first = (trial // 2 * 2) % len(COMBOS)
    picked = [COMBOS[first], COMBOS[(first + 1) % len(COMBOS)], rng.choice(COMBOS)]
    at, out = 1.0, []
    for kind, action in picked:
        out.append(
            f"{at:.2f}:{action}:{kind}" + (f":{rng.uniform(0.3, 2.0):.2f}" if action == "pause" else "")
        )
        at += rng.uniform(0.6, 1.8)
    return ",".join(out)


def _launch_guest(up: Up, name: str, technique: str) -> None:
    env = dict(os.environ, RINGLAB_REDIS=up.redis, RINGLAB_HYPERVISOR=up.hypervisor)
    done = subprocess.run(
        [sys.executable, "-m", "ringlab.cli", "vm", "create", name, "--launcher", "process",
         "--technique", technique, "--workload", "hello", "--json"],
        env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def _summary(verdict: dict[str, object]) -> str:
    failed = [p for p in verdict["properties"] if not p["ok"]]  # type: ignore[attr-defined]
    return "; ".join(f"{p['name']}: {' | '.join(p['failures'][:4])}" for p in failed)


@pytest.mark.parametrize("trial", range(TRIALS))
def test_a_chaos_trial_loses_nothing_committed(
    trial: int,
    deployments: Callable[[int], Up],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    record_property: Callable[[str, object], None],
) -> None:
    up = deployments(trial // PER_DEPLOYMENT)
    seed = 1000 + trial
    names = fleet.create(up.hypervisor, f"t{trial}", fleet.FLEET, start=False)
    history = tmp_path / "history.jsonl"
    faults = (
        ["--schedule", _schedule(trial, random.Random(seed))]
        if trial % 2
        else ["--seed", str(seed), "--faults", "3", "--every", "1.2", "--pause", "2"]
    )
    fleet.start(up.hypervisor, names)
    status = main(
        ["chaos", "run", "--hypervisor", up.hypervisor, "--data", str(up.folder), *faults,
         "--history", str(history), "--timeout", "300", "--json"]
    )  # fmt: skip
    out = capsys.readouterr().out
    verdict = json.loads(out.strip().splitlines()[-1])
    fleet.destroy(up.hypervisor, names)
    fleet.record_victims(record_property, verdict["victims"], float(LEASE))
    faults_seen = [json.loads(line) for line in history.read_text().splitlines() if '"fault"' in line]
    assert faults_seen, "no fault was injected"
    assert status == EXIT_OK, f"trial {trial} (history {history}): {_summary(verdict)}"
