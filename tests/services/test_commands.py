"""The deployment commands end to end, as a person runs them: ``ringlab up`` in the background,
``ringlab vm`` and ``ringlab top`` against it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ringlab.store.server import free_port


def ringlab(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ringlab.cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.mark.slow
def test_up_vm_top_and_graceful_shutdown(tmp_path: Path) -> None:
    port = free_port()
    target = f"127.0.0.1:{port}"
    up = subprocess.Popen(
        [sys.executable, "-m", "ringlab.cli", "up", "--listen", target, "--data", str(tmp_path / "data")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        env = dict(os.environ, RINGLAB_HYPERVISOR=target)
        deadline = time.monotonic() + 60
        while ringlab("vm", "list", "--json", env=env).returncode != 0:
            assert up.poll() is None and time.monotonic() < deadline
            time.sleep(0.3)
        made = ringlab(
            "vm", "create", "h1", "--technique", "hw", "--workload", "hello", "--start", "--json", env=env
        )
        assert made.returncode == 0, made.stderr
        waited = ringlab("vm", "wait", "h1", "--json", env=env)
        assert json.loads(waited.stdout)["console"] == "Hello from ring 3! I am pid 1.\n"
        assert "Hello from ring 3!" in ringlab("vm", "console", "h1", env=env).stdout
        rows = json.loads(ringlab("vm", "list", "--json", env=env).stdout)
        assert rows[0]["name"] == "h1" and rows[0]["status"] == "poweroff"
        assert "pcpu0" in ringlab("top", "--once", env=env).stdout
        assert ringlab("vm", "pause", "h1", env=env).returncode == 3  # it has ended: refused
    finally:
        up.send_signal(signal.SIGTERM)
        out, _ = up.communicate(timeout=60)
    assert up.returncode == 0 and "shutting down" in out
