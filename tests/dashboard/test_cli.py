"""The dashboard's commands: ``ringlab up --dashboard`` and ``RINGLAB_DASHBOARD`` (a bad value is
a usage error before anything starts; the default port in use falls back to a free one), and
``ringlab dashboard`` alone (it serves, says when the hypervisor does not answer, and stops
cleanly on SIGTERM)."""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

import ringlab.dashboard as settings
from ringlab.cli.deployment import _bind_dashboard, _Bound
from ringlab.cli.main import build_parser
from ringlab.store.server import free_port
from tests.services.up_process import clean_env
from tests.services.up_process import ringlab as run_ringlab


def _subparser(name: str) -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return " ".join(sub.choices[name].format_help().split())


def test_the_options_say_their_defaults() -> None:
    up = _subparser("up")
    assert "--dashboard HOST:PORT|off" in up and "(default: $RINGLAB_DASHBOARD, else 127.0.0.1:50080" in up
    alone = _subparser("dashboard")
    for text in ("--target HOST:PORT", "else 127.0.0.1:50051", "--listen HOST:PORT", "else 127.0.0.1:50080"):
        assert text in alone


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--dashboard", "nowhere:port"], {}, "expected HOST:PORT, PORT or off"),
        (["--dashboard", "127.0.0.1:99999"], {}, "out of range"),
        ([], {"RINGLAB_DASHBOARD": "lots"}, "RINGLAB_DASHBOARD=lots: expected HOST:PORT"),
    ],
)
def test_a_bad_dashboard_setting_is_a_usage_error(
    tmp_path: Path, args: list[str], env: dict[str, str], says: str
) -> None:
    done = run_ringlab(
        "up", "--listen", f"127.0.0.1:{free_port()}", "--data", str(tmp_path), *args, env=clean_env(**env)
    )
    assert done.returncode == 2, done.stderr
    assert says in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "services.json").exists()  # nothing was started


def test_a_dashboard_port_in_use_is_refused_unless_it_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        monkeypatch.delenv("RINGLAB_DASHBOARD", raising=False)
        assert _bind_dashboard(("127.0.0.1", port)) == 3  # asked for: refused
        monkeypatch.setattr(settings, "DEFAULT_DASHBOARD", f"127.0.0.1:{port}")
        bound = _bind_dashboard(None)  # the default: any free port instead
        assert isinstance(bound, _Bound)
        try:
            assert bound.sock.getsockname()[1] != port and f"port {port} was in use" in bound.note
        finally:
            bound.sock.close()
        monkeypatch.setenv("RINGLAB_DASHBOARD", "off")
        assert _bind_dashboard(None) is None
        assert _bind_dashboard("off") is None


def test_the_dashboard_alone_serves_and_says_the_hypervisor_is_not_there() -> None:
    nothing = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [sys.executable, "-m", "ringlab.cli", "dashboard", "--target", nothing, "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=clean_env(),
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("dashboard   http://127.0.0.1:"), line
        url = line.split()[1]
        assert f"the hypervisor at {nothing}; open: no operator's token" in line
        with urllib.request.urlopen(url + "healthz", timeout=30) as answer:
            assert answer.read() == b"ok"
        with urllib.request.urlopen(url + "api/state", timeout=60) as answer:
            state = json.load(answer)
        assert state["vms"] == [] and f"{nothing}: UNAVAILABLE" in state["error"]
    finally:
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert f"warning: {nothing}: UNAVAILABLE" in err and "Traceback" not in err


def test_the_dashboard_alone_refuses_a_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = run_ringlab("dashboard", "--listen", f"127.0.0.1:{port}")
    assert done.returncode == 3, done.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in done.stderr and "--listen" in done.stderr
    assert "Traceback" not in done.stderr
