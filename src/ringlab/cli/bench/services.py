"""Benchmarks through the real services (a LocalDeployment: Redis, cpu, hypervisor processes).

``contention``: N compute-bound VMs share one pCPU; after a warm-up, each VM's share of the host
time the pCPU spent running VMs (exits included) over a measured window, against its weight.

``services``: what crossing the service boundary costs, measured against references taken in
the same run: an exit round trip (RunVcpu until the next ``out``) against a plain gRPC echo on
the same channel; Redis round trips per world switch while VMs run; and ``compute`` through the
services against the same image in-process.  Like the efficiency suite, compute runs with two
round counts each way and the work is the difference (creating, scheduling and booting the VM
cancel out; what every slice costs - the world switches, the commit, the grant - does not).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from ringlab.guestos import KernelFlavour
from ringlab.sched import jain_index
from ringlab.vmm import TechniqueName

__all__ = ["Progress", "contention_suite", "services_suite"]

Progress = Callable[..., None]
"""``progress(what, completed=fraction)``: what the suite is doing and how far it is (0 to 1)."""


def _report(progress: Progress | None, what: str, fraction: float) -> None:
    if progress:
        progress(what, completed=fraction)


def _sleep(seconds: float, progress: Progress | None, what: str, start: float, end: float) -> None:
    """Sleep ``seconds``, moving the progress from ``start`` to ``end`` as time passes."""
    began = time.monotonic()
    while (elapsed := time.monotonic() - began) < seconds:
        _report(
            progress, f"{what} ({seconds - elapsed:.0f} s left)", start + (end - start) * elapsed / seconds
        )
        time.sleep(min(0.25, seconds - elapsed))
    _report(progress, what, end)


_LONG_COMPUTE = {"ROUNDS": 100_000}
"""Long enough that no VM finishes inside the measured window."""
COMPUTE_RUNS = 5
"""The services suite times compute this many times each way and keeps the best of each."""
COMPUTE_ROUNDS = (32, 1000)


def _create(
    hv: Any, name: str, image: bytes, *, weight: int = 256, start: bool = True, workload: str = "compute"
) -> None:
    from ringlab.v1 import common_pb2, hypervisor_pb2

    hv.CreateVm(
        hypervisor_pb2.CreateVmRequest(
            name=name,
            technique=common_pb2.TECHNIQUE_NATIVE,
            kernel=common_pb2.KERNEL_FLAVOUR_STOCK,
            workload=workload,
            image=image,
            weight=weight,
            start=start,
        ),
        timeout=30,
    )


def _snapshot(hv: Any) -> tuple[dict[str, float], float, float]:
    """(cpu seconds per VM name, pCPU busy seconds, pCPU scheduler seconds)."""
    from ringlab.v1 import hypervisor_pb2

    stats = hv.GetStats(hypervisor_pb2.GetStatsRequest(), timeout=30)
    cpu = {vm.name: vm.stats.cpu_seconds for vm in stats.vms}
    busy = sum(p.busy_seconds for p in stats.pcpus)
    sched = sum(p.scheduler_seconds for p in stats.pcpus)
    return cpu, busy, sched


def contention_suite(
    vms: int,
    weights: list[int] | None = None,
    *,
    window: float = 12.0,
    warmup: float = 2.0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    from ringlab.errors import UsageError
    from ringlab.guestos.build import build_image
    from ringlab.rpc import open_channel
    from ringlab.rpc.local import LocalDeployment
    from ringlab.v1 import hypervisor_pb2, hypervisor_pb2_grpc

    if vms < 1:
        raise UsageError(f"contention needs at least one VM, not {vms}")
    weights = list(weights or [256] * vms)
    if len(weights) != vms:
        raise UsageError(f"{len(weights)} weights for {vms} VMs: give one weight per VM")
    if any(w < 1 for w in weights):
        raise UsageError(f"every weight must be at least 1: {weights}")
    image = build_image("compute", KernelFlavour.STOCK, _LONG_COMPUTE).to_bytes()
    _report(progress, "contention: starting Redis, one pCPU and the hypervisor", 0.0)
    with LocalDeployment.start(pcpus=1) as d:
        hv = hypervisor_pb2_grpc.HypervisorStub(open_channel(d.hypervisor))
        names = [f"contend-{i}" for i in range(vms)]
        _report(progress, f"contention: creating {vms} VMs", 0.05)
        for name, weight in zip(names, weights):
            _create(hv, name, image, weight=weight, start=False)
        for name in names:
            hv.StartVm(hypervisor_pb2.VmRef(vm=name), timeout=10)
        _sleep(warmup, progress, "contention: warming up", 0.1, 0.2)
        cpu0, busy0, sched0 = _snapshot(hv)
        _sleep(window, progress, f"contention: measuring {vms} VMs on one pCPU", 0.2, 0.95)
        cpu1, busy1, sched1 = _snapshot(hv)
        _report(progress, "contention: stopping the VMs and the deployment", 0.95)
        for name in names:
            hv.StopVm(hypervisor_pb2.VmRef(vm=name), timeout=10)
    used = [cpu1[n] - cpu0[n] for n in names]
    total = sum(used) or 1.0
    shares = [u / total for u in used]
    targets = [w / sum(weights) for w in weights]
    busy, sched = busy1 - busy0, sched1 - sched0
    return {
        "vms": vms,
        "weights": weights,
        "shares": [round(s, 5) for s in shares],
        "targets": [round(t, 5) for t in targets],
        "max_share_error": round(max(abs(s - t) / t for s, t in zip(shares, targets)), 5),
        # Jain's index of each VM's share relative to its entitlement (1 = exactly as weighted).
        "jain": round(jain_index([s / t for s, t in zip(shares, targets)]), 5),
        "scheduler_overhead": round(sched / (busy + sched), 5) if busy + sched else 0.0,
        "window_seconds": window,
    }


def services_suite(calls: int = 2000, progress: Progress | None = None) -> dict[str, Any]:
    from ringlab.asm import assemble
    from ringlab.guestos.build import build_image
    from ringlab.rpc import open_channel
    from ringlab.rpc.local import LocalDeployment
    from ringlab.v1 import cpu_pb2, cpu_pb2_grpc, hypervisor_pb2, hypervisor_pb2_grpc
    from ringlab.vmm import run_vm

    # A bare guest that does nothing but exit: each `out` to an unmodelled port crosses to the VMM.
    exits_forever = assemble("top:\n    out 0x99, eax\n    jmp top\n")
    computes = {n: build_image("compute", KernelFlavour.STOCK, {"ROUNDS": n}) for n in COMPUTE_ROUNDS}
    _report(progress, "services: starting Redis, one pCPU and the hypervisor", 0.0)
    with LocalDeployment.start(pcpus=1) as d:
        hv = hypervisor_pb2_grpc.HypervisorStub(open_channel(d.hypervisor))
        cpu = cpu_pb2_grpc.CpuStub(open_channel(d.cpus[0]))
        # 1. exit round trip vs echo (the VM is created but never started, so no scheduler runs it;
        #    RunVcpu without a commit needs no grant).
        _create(hv, "exit-loop", exits_forever.to_bytes(), start=False, workload="exits")
        vm = hv.DescribeVm(hypervisor_pb2.VmRef(vm="exit-loop"), timeout=10).id
        run = cpu_pb2.RunVcpuRequest(vm=vm, lease_token=1, generation=0, budget=1000)
        echo = cpu_pb2.EchoRequest(payload=b"x" * 64)
        cpu.RunVcpu(run, timeout=10)
        cpu.Echo(echo, timeout=10)
        exit_times, echo_times = [], []
        _report(progress, f"services: {calls} exits against {calls} echoes", 0.05)
        for _ in range(calls):  # interleaved, so both see the same machine state
            t = time.perf_counter()
            cpu.Echo(echo, timeout=10)
            echo_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            cpu.RunVcpu(run, timeout=10)
            exit_times.append(time.perf_counter() - t)
        exit_p50, echo_p50 = statistics.median(exit_times), statistics.median(echo_times)
        hv.DestroyVm(hypervisor_pb2.VmRef(vm="exit-loop"), timeout=10)

        # 2. Redis round trips per world switch while VMs with many exits run.
        _report(progress, "services: Redis round trips per world switch (4 io VMs)", 0.25)
        io = build_image("io", KernelFlavour.STOCK).to_bytes()
        before = hv.GetStats(hypervisor_pb2.GetStatsRequest(), timeout=10).pcpus[0]
        cpu_trips0 = cpu.DescribeCpu(cpu_pb2.DescribeCpuRequest(), timeout=10).redis_round_trips
        for i in range(4):
            _create(hv, f"io-{i}", io, workload="io")
        for i in range(4):
            hv.WaitVm(hypervisor_pb2.WaitVmRequest(vm=f"io-{i}", timeout_seconds=120), timeout=150)
        after = hv.GetStats(hypervisor_pb2.GetStatsRequest(), timeout=10).pcpus[0]
        cpu_trips1 = cpu.DescribeCpu(cpu_pb2.DescribeCpuRequest(), timeout=10).redis_round_trips
        switches = after.world_switches - before.world_switches
        trips = (after.redis_round_trips - before.redis_round_trips) + (cpu_trips1 - cpu_trips0)

        # 3. compute through the services vs in-process (same images, same technique), best of
        #    ``COMPUTE_RUNS`` each, interleaved so both see the same load on the machine.
        local_best: dict[int, float] = {}
        remote_best: dict[int, float] = {}
        retired: dict[int, int] = {}
        for i in range(COMPUTE_RUNS):
            for n, image in computes.items():
                _report(
                    progress,
                    f"services: compute, {n} rounds, in-process and through the services "
                    f"(run {i + 1} of {COMPUTE_RUNS})",
                    0.4 + 0.6 * i / COMPUTE_RUNS,
                )
                t = time.perf_counter()
                local = run_vm(image, technique=TechniqueName.NATIVE)
                local_best[n] = min(local_best.get(n, float("inf")), time.perf_counter() - t)
                retired[n] = local.stats.retired
                t = time.perf_counter()
                _create(hv, f"compute-{n}-{i}", image.to_bytes())
                remote = hv.WaitVm(
                    hypervisor_pb2.WaitVmRequest(vm=f"compute-{n}-{i}", timeout_seconds=300), timeout=330
                )
                remote_best[n] = min(remote_best.get(n, float("inf")), time.perf_counter() - t)
                assert remote.console == local.console, "compute printed something else through the services"
        lo, hi = COMPUTE_ROUNDS
        in_process = local_best[hi] - local_best[lo]
        through = remote_best[hi] - remote_best[lo]
        _report(progress, "services: shutting the deployment down", 1.0)
    return {
        "exit_round_trip_us": round(exit_p50 * 1e6, 1),
        "echo_round_trip_us": round(echo_p50 * 1e6, 1),
        "exit_vs_echo": round(exit_p50 / echo_p50, 3),
        "world_switches": switches,
        "redis_round_trips": trips,
        "redis_round_trips_per_world_switch": round(trips / switches, 4) if switches else None,
        "compute_instructions": retired[hi] - retired[lo],
        "compute_in_process_seconds": round(in_process, 4),
        "compute_services_seconds": round(through, 4),
        "compute_services_vs_in_process": round(in_process / through, 4),
        "compute_whole_run_vs_in_process": round(local_best[hi] / remote_best[hi], 4),
    }
