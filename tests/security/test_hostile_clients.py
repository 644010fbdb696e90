"""A hostile-client suite (issue 14, item 6): the injection that was seen, and its variants,
against a real locked-down deployment (Redis with its ACL users, the cpu and hypervisor services
on loopback, each with its role's credentials).

What was seen: ``Cpu/RunVcpu`` called directly with a guessed lease token (``budget=0``) read a
running VM's registers, and a second call committed ``console=b"INJECTED..."``, status poweroff.
Now every such call is refused with PERMISSION_DENIED or UNAUTHENTICATED before any handler runs,
and NOTHING changes in Redis: a dump of the VM's keys, its scheduler entry, the fencing counter
and the commit log's length are the same before and after."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import grpc
import pytest

from ringlab.guestos.build import WORKLOADS
from ringlab.store import keys
from ringlab.store.credentials import GUEST_KEY_PREFIX, DeploymentSecrets
from ringlab.v1 import cpu_pb2, hypervisor_pb2
from tests.security.conftest import OPERATOR, Secure, create, refusal, unique, vm_dump, wait, wait_status

DENIED = {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED}
LONG = (("ROUNDS", 400),)
"""compute for long enough to be attacked mid-run (it runs again after the attacks)."""


def _injection(vm: str, token: int) -> list[cpu_pb2.RunVcpuRequest]:
    """The two calls of the attack: read the registers, then commit the attacker's console."""
    commit = cpu_pb2.CommitRequest(
        console=b"INJECTED-BY-ATTACKER\n", status="poweroff", code=66, detail="pwned", vmm_state="{}"
    )
    return [
        cpu_pb2.RunVcpuRequest(vm=vm, lease_token=token, generation=0, budget=0),
        cpu_pb2.RunVcpuRequest(vm=vm, lease_token=token, budget=0, commit=commit),
    ]


@pytest.fixture(scope="module")
def victim(secure: Secure) -> Iterator[tuple[str, str]]:
    """A VM that was running, paused (so that nothing legitimate changes its keys while it is
    attacked): its name and id."""
    hv = secure.hv()
    name = unique("victim")
    vm = create(hv, name, workload="compute", defines=LONG)
    wait_status(hv, name, {"running"})
    hv.PauseVm(hypervisor_pb2.VmRef(vm=name), timeout=10)
    wait_status(hv, name, {"paused"})
    settle(secure, vm.id)
    yield name, vm.id


def settle(secure: Secure, vm: str, seconds: float = 120) -> None:
    """Wait until the pCPU that held the paused VM has committed its last slice and given its
    grant back (the scheduler entry holds no pCPU and no token), and its keys stay as they are."""
    admin = secure.admin()
    deadline = time.monotonic() + seconds
    while True:
        entry = json.loads(admin.hget(keys.SCHED_VMS, vm) or b"{}")
        if not entry.get("pcpu") and not int(entry.get("token") or 0):
            first = vm_dump(admin, vm)
            time.sleep(0.5)
            if vm_dump(admin, vm) == first:
                return
        assert time.monotonic() < deadline, f"VM {vm} never settled: {entry}"
        time.sleep(0.1)


def _changed(token: str) -> str:
    """``token`` with its last character changed (setting it to "0" left a token that ended in
    "0" as it was, one run in sixteen or so: the hypervisor's own, which the cpu service took)."""
    return token[:-1] + ("1" if token.endswith("0") else "0")


def attackers(secure: Secure, victim_name: str) -> dict[str, str]:
    """Every credential an attacker could hold that is not the hypervisor's."""
    other = DeploymentSecrets.generate(OPERATOR)
    return {
        "none": "",
        "the operator's token (a student holding the class's token)": OPERATOR,
        "the victim's own guest token": secure.secrets.guest_token(victim_name),
        "another guest's token": secure.secrets.guest_token("someone-else"),
        "the guests' fleet key": GUEST_KEY_PREFIX + secure.secrets.guest_key,
        "another deployment's hypervisor token": other.hypervisor_token,
        "a replayed token with a byte changed": _changed(secure.secrets.hypervisor_token),
        "garbage": "x" * 300,
    }


def test_the_seen_injection_and_its_variants_are_refused_and_change_nothing(
    secure: Secure, victim: tuple[str, str]
) -> None:
    name, vm = victim
    admin = secure.admin()
    before = vm_dump(admin, vm)
    fence = int(admin.get(keys.FENCE) or 0)
    # Lease tokens: guessed ones, the current grant's (as if a message had leaked it), a stale one.
    guesses = sorted({1, 2, 86, max(1, fence), fence + 1, max(1, fence - 1)})
    tried = 0
    tokens = attackers(secure, name)
    assert secure.secrets.hypervisor_token not in tokens.values()  # (each is someone else's)
    for who, token in tokens.items():
        cpu = secure.cpu_stub(token)
        for lease in guesses:
            for request in _injection(vm, lease):
                code, message = refusal(lambda: cpu.RunVcpu(request, timeout=10))  # noqa: B023
                assert code in DENIED, (who, lease, code, message)
                assert str(fence) not in message.split() and "current" not in message, (who, message)
                tried += 1
        for call in (
            lambda: cpu.EvictVcpu(cpu_pb2.EvictVcpuRequest(vm=vm), timeout=10),  # noqa: B023
            lambda: cpu.DescribeCpu(cpu_pb2.DescribeCpuRequest(), timeout=10),  # noqa: B023
        ):
            code, _ = refusal(call)
            assert code in DENIED, who
    assert tried >= 8 * len(guesses) * 2
    assert vm_dump(admin, vm) == before, "a refused call changed the VM's state in Redis"


def test_a_guest_cannot_touch_another_guests_vm_through_the_hypervisor(
    secure: Secure, victim: tuple[str, str]
) -> None:
    name, vm = victim
    admin = secure.admin()
    before = vm_dump(admin, vm)
    intruder = secure.hv(secure.secrets.guest_token(unique("intruder")))
    for ref in (name, vm):
        for call in (
            lambda: intruder.StopVm(hypervisor_pb2.VmRef(vm=ref), timeout=10),  # noqa: B023
            lambda: intruder.ResumeVm(hypervisor_pb2.VmRef(vm=ref), timeout=10),  # noqa: B023
            lambda: intruder.DestroyVm(hypervisor_pb2.VmRef(vm=ref), timeout=10),  # noqa: B023
            lambda: intruder.WaitVm(hypervisor_pb2.WaitVmRequest(vm=ref, timeout_seconds=1), timeout=10),  # noqa: B023
            lambda: intruder.StreamConsole(hypervisor_pb2.StreamConsoleRequest(vm=ref), timeout=10),  # noqa: B023
        ):
            code, message = refusal(call)
            assert code == grpc.StatusCode.PERMISSION_DENIED, (ref, code, message)
    # Its own name it may take, but not the victim's: CreateVm under another guest's name.
    code, _ = refusal(lambda: create(intruder, name, start=False))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert vm_dump(admin, vm) == before


def test_the_victim_runs_on_to_its_own_result(secure: Secure, victim: tuple[str, str]) -> None:
    """After the attacks (this module's tests before this one), the victim resumes and ends
    exactly as its workload must: no injected byte, not powered off by anyone but itself."""
    name, _ = victim
    hv = secure.hv()
    hv.ResumeVm(hypervisor_pb2.VmRef(vm=name), timeout=10)
    result = wait(hv, name)
    assert b"INJECTED" not in result.console
    assert WORKLOADS["compute"].check_output(result.console, dict(LONG)), result.console[-200:]
    assert (
        secure.hv().DescribeVm(hypervisor_pb2.VmRef(vm=name), timeout=10).status
        == hypervisor_pb2.VM_STATUS_POWEROFF
    )
