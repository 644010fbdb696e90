"""Crash consistency (a pCPU dies mid-run: the VM finishes elsewhere from its last commit with
byte-identical output) and contention (shares follow weights under the credit scheduler)."""

from __future__ import annotations

import time

import pytest

from ringlab.guestos.build import build_image
from ringlab.image import Image
from ringlab.rpc.convert import TECHNIQUES
from ringlab.store import LocalRedis
from ringlab.v1 import common_pb2, hypervisor_pb2
from ringlab.vmm import run_vm
from tests.services.conftest import Deployment, service_config, start_deployment, unique


def _start_and_await_commits(d: Deployment, image: Image, technique: str, prefix: str) -> str:
    """Create and start a VM running ``image``; return its name once a few commits have landed
    (the crash tests kill a service between the first commit and the VM's end)."""
    hv = d.hypervisor_stub()
    name = unique(prefix)
    hv.CreateVm(
        hypervisor_pb2.CreateVmRequest(
            name=name,
            technique=TECHNIQUES[technique],
            kernel=common_pb2.KERNEL_FLAVOUR_STOCK,
            workload="multi",
            image=image.to_bytes(),
            start=True,
        ),
        timeout=30,
    )
    vm = hv.DescribeVm(hypervisor_pb2.VmRef(vm=name), timeout=10).id
    deadline = time.monotonic() + 180  # a safety net for a busy machine, not a measure
    while d.state.generation(vm) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return name


CRASH_DB = {"native": 5, "bt": 6, "trap-emulate": 10}


@pytest.mark.parametrize("technique", list(CRASH_DB))
def test_killing_the_pcpu_mid_run_loses_nothing_committed(redis_server: LocalRedis, technique: str) -> None:
    from ringlab_cpu.service import serve as serve_cpu

    d = start_deployment(redis_server, slice=20_000, db=CRASH_DB[technique])
    spare = None
    try:
        hv = d.hypervisor_stub()
        image = build_image("multi", "stock")
        name = _start_and_await_commits(d, image, technique, "crash")
        d.cpu.stop(0)  # the pCPU dies between the first commit and the VM's end
        url = d.redis.url.rsplit("/", 1)[0] + f"/{CRASH_DB[technique]}"
        spare, _ = serve_cpu(service_config("cpu", url, pcpu=unique("spare")))
        result = hv.WaitVm(hypervisor_pb2.WaitVmRequest(vm=name, timeout_seconds=300), timeout=330)
        want = run_vm(image, technique=technique)
        assert result.console == want.console
        assert result.reason == want.reason
    finally:
        d.hypervisor.stop(1)
        d.cpu.stop(0)
        if spare is not None:
            spare.stop(1)


def test_weighted_shares_on_one_pcpu(redis_server: LocalRedis) -> None:
    d = start_deployment(redis_server, slice=100_000, db=7)
    try:
        hv = d.hypervisor_stub()
        image = build_image("compute", "stock", {"ROUNDS": 100_000}).to_bytes()
        weights = {unique("w1"): 256, unique("w3"): 768}
        for name, weight in weights.items():
            hv.CreateVm(
                hypervisor_pb2.CreateVmRequest(
                    name=name,
                    technique=common_pb2.TECHNIQUE_NATIVE,
                    kernel=common_pb2.KERNEL_FLAVOUR_STOCK,
                    workload="compute",
                    image=image,
                    weight=weight,
                ),
                timeout=30,
            )
        for name in weights:
            hv.StartVm(hypervisor_pb2.VmRef(vm=name), timeout=10)

        def retired() -> dict[str, int]:
            return {
                v.name: v.stats.guest.retired
                for v in hv.ListVms(hypervisor_pb2.ListVmsRequest(), timeout=10).vms
            }

        # Measured in instructions over a window counted in slices (100,000 instructions each), so
        # a slow or busy host stretches the window instead of shrinking the sample.
        window = 200 * 100_000
        deadline = time.monotonic() + 600  # a safety net, not a measure
        start = retired()
        while sum(retired().values()) - sum(start.values()) < window // 10:  # warm-up
            assert time.monotonic() < deadline
            time.sleep(0.2)
        before = retired()
        while sum(retired().values()) - sum(before.values()) < window:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        after = retired()
        delta = {n: after[n] - before[n] for n in weights}
        share = delta[list(weights)[1]] / sum(delta.values())
        assert 0.6 <= share <= 0.9  # target 0.75; the credit scheduler charges host time
        for name in weights:
            hv.StopVm(hypervisor_pb2.VmRef(vm=name), timeout=10)
    finally:
        d.hypervisor.stop(1)
        d.cpu.stop(1)


def test_restarting_the_hypervisor_mid_run_loses_nothing(redis_server: LocalRedis) -> None:
    from ringlab_hypervisor.service import serve as serve_hypervisor

    d = start_deployment(redis_server, slice=20_000, db=9)
    replacement = None
    try:
        image = build_image("multi", "stock")
        name = _start_and_await_commits(d, image, "hw", "hvcrash")
        d.hypervisor.stop(0)  # SIGTERM's path: finish the slice, hand the VM back, stop
        url = d.redis.url.rsplit("/", 1)[0] + "/9"
        replacement, _ = serve_hypervisor(service_config("hypervisor", url, slice=20_000))
        from ringlab.rpc import open_channel
        from ringlab.v1 import hypervisor_pb2_grpc

        stub = hypervisor_pb2_grpc.HypervisorStub(open_channel(f"127.0.0.1:{replacement.port}"))
        result = stub.WaitVm(hypervisor_pb2.WaitVmRequest(vm=name, timeout_seconds=300), timeout=330)
        assert result.console == run_vm(image, technique="hw").console, (result.reason, result.detail)
    finally:
        if replacement is not None:
            replacement.stop(1)
        d.hypervisor.stop(0)
        d.cpu.stop(1)
