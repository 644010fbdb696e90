"""The examples (examples/*.py): the address and token come from RINGLAB_HYPERVISOR /
RINGLAB_TOKEN (an argument overrides them), and an address where nothing answers gets one line
and exit status 3, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ringlab.store import LocalRedis
from ringlab.store.server import free_port
from tests.services.conftest import Deployment, start_deployment

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.py"))
TOKEN = "example-token"


def run_example(example: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in ("RINGLAB_HYPERVISOR", "RINGLAB_TOKEN")}
    return subprocess.run(
        [sys.executable, str(example), *args],
        env=environment | env,
        capture_output=True,
        text=True,
        timeout=300,  # a safety net only
    )


@pytest.fixture(scope="module")
def guarded(redis_server: LocalRedis) -> Iterator[Deployment]:
    d = start_deployment(redis_server, token=TOKEN, db=6)
    yield d
    d.hypervisor.stop(1)
    d.cpu.stop(1)


def test_there_are_examples() -> None:
    assert {p.name for p in EXAMPLES} >= {"create_vms.py", "stream_console.py", "watch_contention.py"}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_an_example_with_nothing_listening_says_so_in_one_line_and_exits_3(example: Path) -> None:
    target = f"127.0.0.1:{free_port()}"
    done = run_example(example, RINGLAB_HYPERVISOR=target)
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{target}: UNAVAILABLE") and "ringlab up" in lines[0]


def test_an_example_address_argument_overrides_the_environment(deployment: Deployment) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    example = EXAMPLES[0].parent / "stream_console.py"
    done = run_example(example, nowhere, "hello", RINGLAB_HYPERVISOR=deployment.hypervisor_target)
    assert done.returncode == 3 and done.stderr.startswith(f"{nowhere}: UNAVAILABLE")


def test_create_vms_example_boots_the_guest_os_by_workload_name(deployment: Deployment) -> None:
    example = EXAMPLES[0].parent / "create_vms.py"
    done = run_example(example, RINGLAB_HYPERVISOR=deployment.hypervisor_target)
    assert done.returncode == 0, done.stderr
    results = [line for line in done.stdout.splitlines() if ": poweroff " in line]
    assert len(results) == 5 and all("Hello from ring 3! I am pid 1." in line for line in results)


def test_an_example_takes_the_token_from_the_environment(guarded: Deployment) -> None:
    example = EXAMPLES[0].parent / "stream_console.py"
    target = guarded.hypervisor_target
    done = run_example(example, "--token", "wrong", RINGLAB_HYPERVISOR=target, RINGLAB_TOKEN=TOKEN)
    assert done.returncode == 3 and "UNAUTHENTICATED" in done.stderr and "Traceback" not in done.stderr
    done = run_example(example, RINGLAB_HYPERVISOR=target, RINGLAB_TOKEN=TOKEN)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()  # the io workload's console
