"""``ringlab up`` keeps what it promises (real processes, a real Redis): its Redis persists the VMs
(an append-only file in the data folder), a service that dies is restarted on the same address
and the VMs run on, an ``up`` started again on the same folder resumes them, services.json says
which process is which, and a service that keeps dying makes ``up`` give up with status 3.

The services run with small slices (RINGLAB_SLICE), so a VM commits often and is mid-run when a
test kills something.  Every wait is for an event, with a generous deadline; nothing is timed."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ringlab.guestos.build import build_image
from ringlab.vmm import run_vm
from tests.services.conftest import unique
from tests.services.up_process import (
    Up,
    alive,
    await_slices,
    clean_env,
    create_vm,
    kill_all,
    ringlab,
    vm_names,
    wait_for,
    wait_vm,
)

STOP_TIMEOUT = 300.0
"""A safety net for ``up`` to exit after SIGTERM, not a measure.  ``up`` bounds its own stop (the
services together within ``rpc.local.STOP_SECONDS``, then Redis within its own timeouts), but on
a machine loaded 15-30 deep its interpreter gets a fraction of a core: the 60 s ``Up.stop`` waits
was once too little (``subprocess.TimeoutExpired``)."""
SMALL_SLICES = clean_env(RINGLAB_SLICE="20000")
LONG = {"ITERATIONS": 8}
"""multi's workers take 8 steps: a few million instructions, hundreds of slices."""


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    running = Up.start(tmp_path_factory.mktemp("up") / "data", env=SMALL_SLICES)
    yield running
    assert _stop(running) == 0, running.stderr


@pytest.fixture(scope="module")
def image() -> object:
    return build_image("multi", "stock", LONG)


@pytest.fixture(scope="module")
def expected(image: object) -> dict[str, bytes]:
    """The console of each technique's uninterrupted in-process run."""
    return {t: run_vm(image, technique=t).console for t in ("hw", "bt")}  # type: ignore[arg-type]


def _stop(up: Up) -> int:
    """SIGTERM ``up`` and wait for its exit status, within the safety net."""
    if up.process.poll() is None:
        up.process.send_signal(signal.SIGTERM)
    return up.wait(timeout=STOP_TIMEOUT)


def _start_mid_run(up: Up, image: object, technique: str, prefix: str) -> str:
    name = unique(prefix)
    create_vm(up.target, name, image, technique)
    await_slices(up.target, name)
    return name


def test_services_json_lists_every_service_with_its_live_pid(up: Up) -> None:
    record = up.record()
    assert record["hypervisor"] == up.target
    assert record["redis"].startswith("redis://127.0.0.1:")
    assert record["supervisor_pid"] == up.process.pid
    services = record["services"]
    assert [(s["name"], s["kind"]) for s in services] == [
        ("redis", "redis"),
        ("cpu0", "cpu"),
        ("hypervisor", "hypervisor"),
    ]
    assert services[0]["address"] == record["redis"].removeprefix("redis://").split("/")[0]
    assert services[2]["address"] == up.target
    for service in services:
        assert alive(service["pid"]), service
        assert isinstance(service["restarts"], int), service
        host, _, port = service["address"].rpartition(":")
        assert host == "127.0.0.1" and port.isdigit(), service
    assert not list(up.state.glob(".services.json.*")), "a temporary file was left behind"


def test_killing_a_cpu_service_restarts_it_on_its_address_and_the_vm_finishes(
    up: Up, image: object, expected: dict[str, bytes]
) -> None:
    name = _start_mid_run(up, image, "bt", "cpukill")
    before = up.kill("cpu0")
    after = up.await_restart(before)
    assert after["address"] == before["address"]
    assert up.said(f"cpu0 exited with status -9; restarted (restart {after['restarts']})")
    assert f"restarted (restart {after['restarts']})" in (up.state / "cpu0.log").read_text()
    result = wait_vm(up.target, name)
    assert result.console == expected["bt"], (result.reason, result.detail)


def test_killing_the_hypervisor_restarts_it_on_its_address_and_the_vm_finishes(
    up: Up, image: object, expected: dict[str, bytes]
) -> None:
    name = _start_mid_run(up, image, "hw", "hvkill")
    before = up.kill("hypervisor")
    after = up.await_restart(before)
    assert after["address"] == before["address"] == up.target
    assert up.said(f"hypervisor exited with status -9; restarted (restart {after['restarts']})")
    result = wait_vm(up.target, name)  # the same address serves again
    assert result.console == expected["hw"], (result.reason, result.detail)


def test_killing_redis_loses_no_vm(up: Up, image: object, expected: dict[str, bytes]) -> None:
    hello = build_image("hello", "stock")
    ended = [unique("before") for _ in range(3)]
    for vm in ended:
        create_vm(up.target, vm, hello, "hw", "hello")
    for vm in ended:
        wait_vm(up.target, vm)
    running = _start_mid_run(up, image, "bt", "rediskill")
    before = up.kill("redis")
    after = up.await_restart(before)
    assert after["address"] == before["address"]  # the same port: the services find it again
    assert up.record()["redis"] == f"redis://{after['address']}/0"
    assert up.said(f"redis exited with status -9; restarted (restart {after['restarts']})")
    assert {*ended, running} <= vm_names(up.target)
    result = wait_vm(up.target, running)
    assert result.console == expected["bt"], (result.reason, result.detail)
    hello_console = run_vm(hello, technique="hw").console
    for vm in ended:
        assert wait_vm(up.target, vm).console == hello_console


def test_a_paused_service_is_not_restarted(up: Up) -> None:
    before = up.kill("cpu0", signal.SIGSTOP)
    try:
        # Nothing to wait for: a few supervisor rounds (it looks every half second) must go by.
        time.sleep(3)
        now = up.service("cpu0")
        assert (now["pid"], now["restarts"]) == (before["pid"], before["restarts"])
        assert up.process.poll() is None
    finally:
        os.kill(before["pid"], signal.SIGCONT)


def test_a_second_up_on_the_same_data_folder_is_refused(up: Up) -> None:
    from ringlab.store.server import free_port

    done = ringlab("up", "--listen", f"127.0.0.1:{free_port()}", "--data", str(up.state))
    assert done.returncode == 3, done.stderr
    assert "in use by another 'ringlab up'" in done.stderr and f"pid {up.process.pid}" in done.stderr
    assert "Traceback" not in done.stderr
    assert alive(up.service("redis")["pid"])  # the first one was left alone


@pytest.mark.slow
def test_up_started_again_on_the_same_data_folder_resumes_the_vms(tmp_path: Path) -> None:
    data = tmp_path / "data"
    image = build_image("multi", "stock", LONG)
    hello = build_image("hello", "stock")
    first = Up.start(data, env=SMALL_SLICES)
    try:
        create_vm(first.target, "greeted", hello, "hw", "hello")
        wait_vm(first.target, "greeted")
        create_vm(first.target, "worker", image, "bt")
        await_slices(first.target, "worker")
    finally:
        assert _stop(first) == 0, first.stderr
    assert not (data / "services.json").exists()  # removed at the end: no stale pids to kill
    assert (data / "redis" / "appendonly.aof").exists()
    second = Up.start(data, env=SMALL_SLICES)  # another port: the addresses may change
    try:
        assert {"greeted", "worker"} <= vm_names(second.target)
        assert wait_vm(second.target, "greeted").console == run_vm(hello, technique="hw").console
        result = wait_vm(second.target, "worker")
        assert result.console == run_vm(image, technique="bt").console, (result.reason, result.detail)
    finally:
        assert _stop(second) == 0, second.stderr


@pytest.mark.slow
def test_up_fresh_discards_the_vms_of_the_data_folder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = Up.start(data)
    try:
        create_vm(first.target, "old", build_image("hello", "stock"), "hw", "hello")
    finally:
        assert _stop(first) == 0, first.stderr
    second = Up.start(data, "--fresh")
    try:
        assert vm_names(second.target) == set()
    finally:
        assert _stop(second) == 0, second.stderr


@pytest.mark.slow
def test_up_on_the_folder_of_a_killed_up_stops_its_leftovers_and_resumes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    image = build_image("multi", "stock", LONG)
    first = Up.start(data, env=SMALL_SLICES)
    leftovers = [s["pid"] for s in first.record()["services"]]
    second = None
    try:
        create_vm(first.target, "survivor", image, "hw")
        await_slices(first.target, "survivor")
        first.process.kill()  # nothing stops its services: they run on, Redis with the data
        first.wait()
        assert all(alive(pid) for pid in leftovers)
        second = Up.start(data, env=SMALL_SLICES)
        for pid in leftovers:
            assert f"(pid {pid}) that an earlier 'ringlab up' on {data} left running" in second.stderr
        wait_for("the leftovers stopped", lambda: not any(alive(pid) for pid in leftovers), timeout=30)
        result = wait_vm(second.target, "survivor")
        assert result.console == run_vm(image, technique="hw").console, (result.reason, result.detail)
    finally:
        kill_all(leftovers)
        if second is not None:
            assert _stop(second) == 0, second.stderr


@pytest.mark.slow
def test_a_service_dying_in_a_loop_makes_up_give_up_with_status_3(tmp_path: Path) -> None:
    # A window far longer than the test: however slowly the cpu service starts on a busy machine,
    # its three exits fall within it.
    up = Up.start(tmp_path / "data", "--max-restarts", "2", "--restart-window", "3600")
    pids = [s["pid"] for s in up.record()["services"]]
    try:
        killed: set[int] = set()

        def kill_the_new_cpu0() -> bool:
            if up.process.poll() is not None:
                return True
            try:
                pid = up.service("cpu0")["pid"]
            except (OSError, ValueError, StopIteration):  # between two versions, or removed
                return False
            if pid not in killed:
                killed.add(pid)
                pids.append(pid)
                os.kill(pid, signal.SIGKILL)
            return False

        wait_for("up gave up", kill_the_new_cpu0)
        assert up.wait() == 3, up.stderr
        assert len(killed) == 3
        assert "cpu0 exited with status -9; restarted (restart 2)" in up.stderr
        assert "the cpu0 service exited 3 times within 3600 s (at most 2 restarts)" in up.stderr, up.stderr
        assert "shutting down" in up.stderr
        assert not (tmp_path / "data" / "services.json").exists()
        wait_for("every service stopped", lambda: not any(alive(pid) for pid in pids), timeout=30)
    finally:
        if up.process.poll() is None:
            _stop(up)
        kill_all(pids)


def test_stopping_up_stops_every_service_it_started(tmp_path: Path) -> None:
    up = Up.start(tmp_path / "data", "--pcpus", "2")
    record = up.record()
    pids = [s["pid"] for s in record["services"]]
    os.kill(record["services"][1]["pid"], signal.SIGSTOP)  # a paused one too
    try:
        assert _stop(up) == 0, up.stderr
        assert not any(alive(pid) for pid in pids)
        assert not (tmp_path / "data" / "services.json").exists()
    finally:
        kill_all(pids)
