"""``ringlab top --exits``: exits per second by reason, per VM, fastest first (as kvm_stat shows
them), against a real deployment (Redis, the cpu and hypervisor services on loopback). The rows are
parsed from what the command prints; no assertion depends on how fast anything ran."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from ringlab.store import LocalRedis
from tests.cli.conftest import ringlab, ringlab_on_a_terminal
from tests.services.conftest import Deployment, start_deployment, unique

SPINS = """
.include "lib.s"
main:
.again:
    call sys_yield
    jmp .again
"""
"""A guest program that never ends and makes a system call in a loop: under trap-and-emulate its
kernel's privileged instructions exit all the time."""

ROW = re.compile(
    r"^\s*(?P<rate>[\d,]+|-)\s+(?P<reason>\S+)\s+(?P<vm>\S+)\s+(?P<technique>\S+)"
    r"\s+(?P<share>\d+%|-)\s+(?P<total>\S+)\s*$"
)


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    redis = LocalRedis.start()
    # Short slices: a running VM's statistics (committed with each slice) move many times a second.
    d = start_deployment(redis, slice=5_000)
    yield d
    d.hypervisor.stop(1)
    d.cpu.stop(1)
    redis.stop()


def rows_of(out: str) -> list[dict[str, str]]:
    """The table's rows (the title, header and rule lines do not match)."""
    return [m.groupdict() for line in out.splitlines() if (m := ROW.match(line))]


def test_top_exits_shows_each_reasons_rate_per_vm_fastest_first(
    deployment: Deployment, tmp_path: Path
) -> None:
    target = deployment.hypervisor_target
    env = {"RINGLAB_HYPERVISOR": target, "RINGLAB_TOKEN": "", "COLUMNS": "200"}
    # One VM that has ended (its rates must be 0, its totals its statistics) ...
    ended = unique("ended")
    made = ringlab(
        "vm", "create", ended, "--technique", "trap-emulate", "--workload", "io", "--start", env=env
    )
    assert made.returncode == 0, made.stderr
    assert ringlab("vm", "wait", ended, env=env).returncode == 0
    # ... and one that keeps exiting.
    program = tmp_path / "spins.s"
    program.write_text(SPINS)
    spinning = unique("spins")
    made = ringlab(
        "vm", "create", spinning, "--technique", "trap-emulate", "--program", str(program), "--start", env=env
    )
    assert made.returncode == 0, made.stderr
    try:
        top = ringlab("top", "--once", "--exits", "--interval", "2", env=env)
        assert top.returncode == 0, top.stderr
        assert "exits per second by reason" in top.stdout, top.stdout
        rows = rows_of(top.stdout)
        mine = [r for r in rows if r["vm"] in (ended, spinning)]
        assert mine, top.stdout
        # Sorted by rate, fastest first, over every row.
        rates = [int(r["rate"].replace(",", "")) for r in rows]
        assert rates == sorted(rates, reverse=True), top.stdout
        # The running VM exits: at least one of its reasons has a rate above zero.
        spin_rows = [r for r in rows if r["vm"] == spinning]
        assert spin_rows and all(r["technique"] == "trap-emulate" for r in spin_rows), top.stdout
        assert max(int(r["rate"].replace(",", "")) for r in spin_rows) > 0, top.stdout
        # The ended VM: every reason it ever exited for, at rate 0, with its statistics' totals.
        [listed] = [
            v for v in json.loads(ringlab("vm", "list", "--json", env=env).stdout) if v["name"] == ended
        ]
        ended_rows = {r["reason"]: r for r in rows if r["vm"] == ended}
        assert set(ended_rows) == {k for k, v in listed["exits_by_reason"].items() if v > 0}, top.stdout
        for reason, row in ended_rows.items():
            assert row["rate"] == "0" and row["share"] == "0%", row
            count = listed["exits_by_reason"][reason]
            if count < 10_000:  # top abbreviates larger counts (12.3k)
                assert row["total"] == str(count), row
        # A live refresh on an 80-column terminal fits it (q would quit it; --once ends it here).
        small = ringlab_on_a_terminal("top", "--once", "--exits", "--interval", "0.3", columns=80, env=env)
        assert small.returncode == 0, small.terminal
        assert "exits per second" in small.terminal and "Traceback" not in small.terminal
        lines = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", small.terminal).replace("\r", "\n").splitlines()
        assert all(len(line) <= 80 for line in lines), small.terminal
    finally:
        ringlab("vm", "stop", spinning, env=env)


def test_top_exits_with_no_vm_says_so(tmp_path: Path) -> None:
    redis = LocalRedis.start()
    d = start_deployment(redis)
    try:
        top = ringlab(
            "top", "--once", "--exits", "--interval", "0.1",
            env={"RINGLAB_HYPERVISOR": d.hypervisor_target, "RINGLAB_TOKEN": ""},
        )  # fmt: skip
        assert top.returncode == 0 and "no VM has exited yet" in top.stdout, top.stdout + top.stderr
        assert rows_of(top.stdout) == []
    finally:
        d.hypervisor.stop(1)
        d.cpu.stop(1)
        redis.stop()


def test_top_exits_of_a_hypervisor_that_is_not_there_is_one_clear_line() -> None:
    from ringlab.store.server import free_port

    top = ringlab("top", "--once", "--exits", "--hypervisor", f"127.0.0.1:{free_port()}")
    assert top.returncode != 0 and "Traceback" not in top.stderr, top.stderr
    assert top.stderr.strip() and len(top.stderr.strip().splitlines()) <= 3, top.stderr
