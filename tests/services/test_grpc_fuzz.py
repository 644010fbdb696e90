"""The gRPC fuzzer (issue 14, item 2): random, mutated and raw-byte requests to every RPC of every
service (enumerated from the service descriptors: ``grpc_fuzz.enumerate_rpcs``), against a real
deployment whose services each run in a process of their own (Redis, cpu, hypervisor, guest).

Every answer must be a precise status: no INTERNAL and no UNKNOWN, and every INVALID_ARGUMENT
carries a ``google.rpc.BadRequest`` naming the field at fault.  No service may die, each must
still answer its health check SERVING, and each one's resident memory may not grow by more than
``RSS_GROWTH`` after the first batch (the first batch loads code, builds images, fills caches).

Counts (docs/testing.md, The fuzzers): the default run sends 3,000 requests, ``-m fuzz`` 15,000
more (indices after the default ones), ``RINGLAB_FUZZ_FULL=1 -m fuzz`` 50,000 (from index 0).
Request ``i`` is drawn from ``random.Random(f"{SEED}:{i}")``: a failure names its index, and
``grpc_fuzz.request(enumerate_rpcs(), pools, SEED, i)`` makes it again (its pools, the live VM
ids and cursors, come from the deployment at that moment).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services.grpc_fuzz import Deployment, Outcome, Pools, enumerate_rpcs, fuzz, iter_counts, setup

SEED = 14
DEFAULT = 3_000
HEAVY = 15_000
FULL = 50_000
RSS_GROWTH = 96 << 10
"""KiB: how much each service's resident memory may grow after the first batch."""
FULL_RUN = os.environ.get("RINGLAB_FUZZ_FULL") == "1"


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, Pools]]:
    deployment = Deployment.start(Path(tmp_path_factory.mktemp("grpc-fuzz")))
    try:
        yield deployment, setup(deployment)
    finally:
        deployment.stop()


def judge(deployment: Deployment, outcome: Outcome, count: int) -> None:
    report = "\n".join(iter_counts(outcome))
    print(report)
    assert outcome.sent == count
    assert not outcome.bad, f"{len(outcome.bad)} INTERNAL/UNKNOWN answers:\n" + "\n".join(outcome.bad[:20])
    assert not outcome.no_field_violation, (
        f"{len(outcome.no_field_violation)} INVALID_ARGUMENT without a field violation:\n"
        + "\n".join(outcome.no_field_violation[:20])
    )
    assert {rpc.name for rpc in enumerate_rpcs()} <= set(outcome.by_rpc), report
    assert deployment.dead() == []
    assert set(deployment.serving().values()) == {"SERVING"}
    first, last = outcome.rss[0], outcome.rss[-1]
    grown = {name: last[name] - first[name] for name in first}
    assert all(kib <= RSS_GROWTH for kib in grown.values()), (
        f"RSS grew (KiB): {grown}; samples: {outcome.rss}"
    )


def test_every_rpc_of_every_service_is_enumerated() -> None:
    names = {rpc.name for rpc in enumerate_rpcs()}
    assert {
        "Cpu/RunVcpu",
        "Hypervisor/CreateVm",
        "Hypervisor/StreamEvents",
        "Guest/StreamConsole",
        "Hypervisor/GetFlightRecord",
    } <= names
    assert len(names) == 4 + 17 + 2 + 1  # Cpu, Hypervisor, Guest, Health/Check (on each process)


def test_fuzzed_requests_get_precise_statuses(fuzzed: tuple[Deployment, Pools]) -> None:
    deployment, pools = fuzzed
    judge(deployment, fuzz(deployment, pools, seed=SEED, first=0, count=DEFAULT), DEFAULT)


@pytest.mark.fuzz
def test_fuzzed_requests_get_precise_statuses_fuzz(fuzzed: tuple[Deployment, Pools]) -> None:
    deployment, pools = fuzzed
    first, count = (0, FULL) if FULL_RUN else (DEFAULT, HEAVY)
    judge(deployment, fuzz(deployment, pools, seed=SEED, first=first, count=count, batch=1000), count)
