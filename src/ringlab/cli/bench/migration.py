"""``ringlab bench --suite migration``: live migration's downtime against the VM's dirty rate, the
shape of Clark et al.'s result (NSDI 2005, Figures 8-11): a VM that dirties few pages converges in
a few pre-copy rounds and stops only for its last few pages; the more pages it dirties per second,
the more rounds and the longer the stop; once it dirties pages faster than the link carries them,
pre-copy stops converging (the round limit ends it) and the downtime is the whole writable set.

Two local deployments (``LocalDeployment``, one pCPU each) on this machine; the VMs run under hw
with nested paging, as KVM migrates them (under shadow paging every first write to a page is an
exit, and a VM writing hundreds of pages a tick runs so slowly that it hardly dirties any while a
round is copied); for each writable working set (the ``dirty`` workload's PAGES, written every tick) a VM is started on the first,
moved to the second over the modelled link (``--bandwidth``), and destroyed there.  The dirty
rate is measured, not assumed: the VM's ticks over a second of its run before it is moved, times
the pages it writes a tick.  Each pre-copy round after the first also says how many pages were
dirtied again while the round before it was copied (at most the working set).  Figures are
ratios against the smallest working set's, measured in the same run, in wall time and in the CPU
time of the deployments' processes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from ringlab.cli.bench.recorder import _cpu_seconds

__all__ = ["DEFAULT_BANDWIDTH_MBIT", "DEFAULT_SETS", "migration_suite"]

DEFAULT_SETS = (1, 4, 16, 64, 128, 256, 512)
"""Pages the VM writes each tick (the ``dirty`` workload's PAGES)."""
DEFAULT_BANDWIDTH_MBIT = 16.0
"""The modelled link (megabits per second): slow enough that the larger working sets outrun it on
a laptop, so the table shows where pre-copy stops converging."""
RATE_WINDOW = 1.0
"""Seconds over which the VM's ticks are counted before it is moved (its dirty rate)."""
TICKS = 1_000_000
"""The VM's ticks: it runs until it is destroyed at the destination."""
Progress = Callable[..., None]


def migration_suite(
    sets: tuple[int, ...] = DEFAULT_SETS,
    *,
    bandwidth_mbit: float = DEFAULT_BANDWIDTH_MBIT,
    technique: str = "hw",
    nested_paging: bool = True,
    max_rounds: int = 30,
    target_downtime_ms: float = 50.0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    from ringlab.guestos.build import build_image
    from ringlab.rpc import open_channel
    from ringlab.rpc.convert import KERNELS, TECHNIQUES
    from ringlab.rpc.local import LocalDeployment
    from ringlab.v1 import hypervisor_pb2, hypervisor_pb2_grpc
    from ringlab.vmm import default_kernel

    bandwidth = round(bandwidth_mbit * 1_000_000 / 8)
    kernel = default_kernel(technique)
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        if progress:
            progress("migration: starting two deployments", completed=0.02)
        source = stack.enter_context(LocalDeployment.start(pcpus=1))
        destination = stack.enter_context(LocalDeployment.start(pcpus=1))
        here = hypervisor_pb2_grpc.HypervisorStub(open_channel(source.hypervisor))
        there = hypervisor_pb2_grpc.HypervisorStub(open_channel(destination.hypervisor))
        pids = [
            s["pid"] for d in (source, destination) for s in d.record()["services"] if s["kind"] != "redis"
        ]
        for i, pages in enumerate(sets):
            if progress:
                progress(
                    f"migration: a VM writing {pages} pages a tick", completed=0.05 + 0.95 * i / len(sets)
                )
            name = f"dirty-{pages}-{int(time.time() * 1000) % 100_000}"
            image = build_image("dirty", kernel, {"PAGES": pages, "ITERATIONS": TICKS})
            here.CreateVm(
                hypervisor_pb2.CreateVmRequest(
                    name=name,
                    technique=TECHNIQUES[technique],
                    nested_paging=nested_paging,
                    kernel=KERNELS[kernel],
                    workload="dirty",
                    defines={"PAGES": pages, "ITERATIONS": TICKS},
                    image=image.to_bytes(),
                    start=True,
                ),
                timeout=60,
            )
            ref = hypervisor_pb2.VmRef(vm=name)
            while here.DescribeVm(ref, timeout=10).stats.guest.retired < 50_000:  # its pages faulted in
                time.sleep(0.05)
            # Its dirty rate: pages a tick times ticks a second, over a second of its run.
            before, t0 = here.DescribeVm(ref, timeout=10).stats.guest.interrupts, time.perf_counter()
            time.sleep(RATE_WINDOW)
            ticks = here.DescribeVm(ref, timeout=10).stats.guest.interrupts - before
            dirty_rate = pages * ticks / (time.perf_counter() - t0)
            cpu0, wall0 = _cpu_seconds(pids), time.perf_counter()
            report = here.MigrateVm(
                hypervisor_pb2.MigrateVmRequest(
                    vm=name,
                    to=destination.hypervisor,
                    bandwidth=bandwidth,
                    max_rounds=max_rounds,
                    target_downtime_ms=target_downtime_ms,
                ),
                timeout=900,
            )
            wall, cpu1 = time.perf_counter() - wall0, _cpu_seconds(pids)
            there.DestroyVm(hypervisor_pb2.VmRef(vm=report.destination_vm), timeout=30)
            rounds = list(report.rounds)
            again = [r.pages for r in rounds[1:] if not r.stop_and_copy]
            rows.append(
                {
                    "pages_per_tick": pages,
                    "dirty_pages_per_second": round(dirty_rate, 1),
                    "redirtied_pages_per_round": max(again) if again else None,
                    "rounds": len(rounds),
                    "converged": report.converged,
                    "pages_sent": sum(r.pages for r in rounds),
                    "bytes_sent": sum(r.bytes for r in rounds),
                    "stop_and_copy_pages": rounds[-1].pages,
                    "downtime_link_ms": round(report.downtime_link_seconds * 1000, 2),
                    "downtime_cycles": report.downtime_cycles,
                    "downtime_wall_ms": round(report.downtime_seconds * 1000, 1),
                    "rebuild_ms": round(report.rebuild_seconds * 1000, 1),
                    "total_seconds": round(report.total_seconds, 3),
                    "wall_seconds": round(wall, 3),
                    "cpu_seconds": None if cpu0 is None or cpu1 is None else round(cpu1 - cpu0, 3),
                    "pages_per_round": [r.pages for r in rounds],
                }
            )
    base = rows[0]
    for row in rows:
        row["downtime_vs_smallest"] = _ratio(row["downtime_link_ms"], base["downtime_link_ms"])
        row["wall_vs_smallest"] = _ratio(row["wall_seconds"], base["wall_seconds"])
        row["cpu_vs_smallest"] = _ratio(row["cpu_seconds"], base["cpu_seconds"])
    link_pages = bandwidth / 4096
    return {
        "technique": technique + ("+np" if nested_paging else ""),
        "bandwidth_bytes_per_second": bandwidth,
        "link_pages_per_second": round(link_pages, 1),
        "max_rounds": max_rounds,
        "target_downtime_ms": target_downtime_ms,
        "runs": rows,
        "first_not_converged": next((r["pages_per_tick"] for r in rows if not r["converged"]), None),
    }


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return round(value / reference, 2)
