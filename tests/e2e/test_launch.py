"""The launchers without an engine: local processes for real, and the Docker launcher's messages
when there is nothing to talk to (the compose test drives it against a real engine)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ringlab.cli.launch import DockerLauncher, LaunchError, LaunchSpec, ProcessLauncher, guest_spec


def _sleeper(name: str, seconds: int = 60) -> LaunchSpec:
    code = f"import time, os; print('up', os.environ['X_TAG'], flush=True); time.sleep({seconds})"
    return LaunchSpec(name, (sys.executable, "-c", code), {"X_TAG": name})


def test_process_launch_runs_detached_with_its_env_and_remove_stops_it(tmp_path: Path) -> None:
    launcher = ProcessLauncher(tmp_path)
    launched = launcher.launch(_sleeper("vm-a"))
    try:
        assert [item.name for item in launcher.running()] == ["vm-a"]
        deadline = time.monotonic() + 5
        while "up vm-a" not in Path(launched.detail).read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "up vm-a" in Path(launched.detail).read_text()
        with pytest.raises(LaunchError, match="already running"):
            launcher.launch(_sleeper("vm-a"))
    finally:
        removed = launcher.remove("vm-a")
    assert [item.ref for item in removed] == [launched.ref]
    assert launcher.running() == []
    # The process ended, and the launcher that started it reaped it: no zombie is left behind
    # (from the CLI, the process is init's child and init reaps it).
    with pytest.raises(ProcessLookupError):
        os.kill(int(launched.ref), 0)
    with pytest.raises(ChildProcessError):
        os.waitpid(int(launched.ref), os.WNOHANG)
    assert launcher.remove("vm-a") == []  # removing twice is not an error


def test_process_that_dies_at_once_is_reported_with_its_output(tmp_path: Path) -> None:
    spec = LaunchSpec("bad", (sys.executable, "-c", "raise SystemExit('no hypervisor configured')"))
    with pytest.raises(LaunchError, match="no hypervisor configured"):
        ProcessLauncher(tmp_path, startup_check=1.0).launch(spec)
    assert ProcessLauncher(tmp_path).running() == []


def test_names_that_cannot_name_a_file_or_container_are_refused(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="letters, digits"):
        ProcessLauncher(tmp_path).launch(_sleeper("../escape"))


def test_guest_spec_configures_the_guest_service_by_environment() -> None:
    spec = guest_spec(
        "vm1", technique="hw", kernel="stock", workload="compute", weight=512, launcher="process",
        hypervisor="127.0.0.1:50051", redis="redis://127.0.0.1:6379/0", token="",
    )  # fmt: skip
    assert spec.command[1:] == ("-m", "ringlab_guest")
    assert spec.env["RINGLAB_GUEST_NAME"] == "vm1" and spec.env["RINGLAB_TECHNIQUE"] == "hw"
    assert spec.env["RINGLAB_HYPERVISOR"] == "127.0.0.1:50051" and spec.env["RINGLAB_MIX"] == ""
    docker_spec = guest_spec(
        "vm1", technique="hw", kernel="stock", workload="compute", weight=512, launcher="docker",
        hypervisor="127.0.0.1:50051",
    )  # fmt: skip
    # In a container the deployment's own addresses apply (the launcher adds them), not the host's.
    assert "RINGLAB_HYPERVISOR" not in docker_spec.env
    assert docker_spec.command == ("python", "-m", "ringlab_guest")


def test_docker_launcher_without_an_engine_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(LaunchError, match=r"no Docker engine answers at unix:///nonexistent/docker\.sock"):
        DockerLauncher().launch(guest_spec("vm1", technique="native", kernel="stock", workload="hello",
                                           weight=256, launcher="docker", hypervisor=""))  # fmt: skip


class _NoContainers:
    def list(self, **kwargs: Any) -> list[Any]:
        return []


class _EmptyEngine:
    containers = _NoContainers()


def test_docker_launcher_without_a_deployment_says_how_to_start_one() -> None:
    launcher = DockerLauncher(client_factory=lambda: _EmptyEngine())  # type: ignore[arg-type, return-value]
    with pytest.raises(LaunchError, match=r"no running 'hypervisor' container .*docker compose up -d"):
        launcher.launch(LaunchSpec("vm1", ("true",)))
    assert launcher.running() == []
