"""The recorder suite: what the flight recorder costs (issue 15's target: under 5% with it on).

In-process, the ``syscall`` workload (two world switches per system call under pv, one per
``int 0x80`` under trap-emulate: the most exits per instruction of the workloads) runs under
each technique with no recorder and with one attached, interleaved, best of ``repeats`` each
way, in CPU time (``time.process_time``) and wall time.  Off is the plain run: with no recorder
a world switch pays one ``None`` check (``EventCounter.world_switch``), so off is the reference.

Through the services, two local deployments run side by side, one with recording off
(``RINGLAB_FLIGHT_SLICES=0``) and one with the default ring of 256 slices per VM; the same
``syscall`` VMs (pv, many exits) run to the end on each in turn, best of ``repeats``: the wall
time to finish them and the CPU time the hypervisor and cpu processes spent (from
``/proc/PID/stat``, so Linux only; elsewhere the CPU column is left out).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ringlab.guestos import KernelFlavour

__all__ = ["DEFAULT_REPEATS", "IN_PROCESS_TECHNIQUES", "recorder_suite"]

DEFAULT_REPEATS = 5
IN_PROCESS_TECHNIQUES = ("trap-emulate", "bt", "pv", "hw", "hw+np")
SERVICE_VMS = 4
"""``syscall`` VMs per round through the services."""

Progress = Callable[..., None]


def _kernel(technique: str) -> str:
    return KernelFlavour.PARAVIRT.value if technique == "pv" else KernelFlavour.STOCK.value


def _timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def _overhead(on: float, off: float) -> float:
    return round(on / off - 1.0, 4) if off > 0 else 0.0


def in_process(repeats: int, iterations: int | None, progress: Progress | None) -> dict[str, Any]:
    from ringlab.guestos.build import build_image
    from ringlab.vmm import run_vm
    from ringlab.vmm.recorder import FlightRecorder

    defines = {} if iterations is None else {"ITERATIONS": iterations}
    out: dict[str, Any] = {}
    for k, technique in enumerate(IN_PROCESS_TECHNIQUES):
        name, _, np = technique.partition("+")
        image = build_image("syscall", _kernel(technique), defines)
        best = {"off": [float("inf"), float("inf")], "on": [float("inf"), float("inf")]}
        exits = 0
        results = {}
        run = functools.partial(run_vm, image, technique=name, nested_paging=bool(np))
        run()  # a warm-up: the first run of a process pays for building and compiling
        for i in range(repeats):
            if progress:
                progress(
                    f"recorder: {technique} in-process, run {i + 1} of {repeats}",
                    completed=0.5 * (k + i / repeats) / len(IN_PROCESS_TECHNIQUES),
                )
            for mode in ("off", "on"):
                recorder = FlightRecorder() if mode == "on" else None
                wall, cpu, result = _timed(functools.partial(run, recorder=recorder))
                best[mode] = [min(best[mode][0], wall), min(best[mode][1], cpu)]
                results[mode] = result.to_json()
                if recorder is not None:
                    exits = sum(1 for r in recorder.records if r["kind"] == "exit")
        if results["on"]["console"] != results["off"]["console"]:
            raise AssertionError(f"{technique}: the recorded run printed something else")
        out[technique] = {
            "exits": exits,
            "retired": results["off"]["stats"]["guest"]["retired"],
            "off_cpu_seconds": round(best["off"][1], 4),
            "on_cpu_seconds": round(best["on"][1], 4),
            "cpu_overhead": _overhead(best["on"][1], best["off"][1]),
            "wall_overhead": _overhead(best["on"][0], best["off"][0]),
        }
    return out


def _cpu_seconds(pids: list[int]) -> float | None:
    """User + system CPU time of ``pids`` so far (Linux ``/proc``; None elsewhere)."""
    total = 0
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / tick


@contextlib.contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def through_services(repeats: int, iterations: int | None, progress: Progress | None) -> dict[str, Any]:
    from ringlab.guestos.build import build_image
    from ringlab.rpc import open_channel
    from ringlab.rpc.local import LocalDeployment
    from ringlab.v1 import common_pb2, hypervisor_pb2, hypervisor_pb2_grpc

    defines = {} if iterations is None else {"ITERATIONS": iterations}
    image = build_image("syscall", KernelFlavour.PARAVIRT.value, defines).to_bytes()
    settings = {"off": "0", "on": "256"}
    best: dict[str, list[float]] = {m: [float("inf"), float("inf")] for m in settings}
    recorded = 0
    with contextlib.ExitStack() as stack:
        deployments = {}
        for mode, slices in settings.items():
            if progress:
                progress(f"recorder: starting the deployment with recording {mode}", completed=0.5)
            with _environ("RINGLAB_FLIGHT_SLICES", slices):
                deployments[mode] = stack.enter_context(LocalDeployment.start(pcpus=1))
        for i in range(repeats):
            for mode, d in deployments.items():
                if progress:
                    progress(
                        f"recorder: {SERVICE_VMS} pv syscall VMs through the services, recording {mode} "
                        f"(round {i + 1} of {repeats})",
                        completed=0.5 + 0.5 * i / repeats,
                    )
                hv = hypervisor_pb2_grpc.HypervisorStub(open_channel(d.hypervisor))
                pids = [s["pid"] for s in d.record()["services"] if s["kind"] in ("cpu", "hypervisor")]
                cpu0, wall0 = _cpu_seconds(pids), time.perf_counter()
                names = [f"rec-{mode}-{i}-{n}" for n in range(SERVICE_VMS)]
                for name in names:
                    hv.CreateVm(
                        hypervisor_pb2.CreateVmRequest(
                            name=name,
                            technique=common_pb2.TECHNIQUE_PV,
                            kernel=common_pb2.KERNEL_FLAVOUR_PARAVIRT,
                            workload="syscall",
                            image=image,
                            start=True,
                        ),
                        timeout=30,
                    )
                for name in names:
                    hv.WaitVm(hypervisor_pb2.WaitVmRequest(vm=name, timeout_seconds=300), timeout=330)
                wall, cpu1 = time.perf_counter() - wall0, _cpu_seconds(pids)
                cpu = float("nan") if cpu0 is None or cpu1 is None else cpu1 - cpu0
                best[mode] = [min(best[mode][0], wall), min(best[mode][1], cpu)]
                if mode == "on":
                    record = hv.GetFlightRecord(hypervisor_pb2.FlightRecordRequest(vm=names[0]), timeout=30)
                    recorded = sum(r.get("kind") == "exit" for r in json.loads(record.records_json))
                for name in names:
                    hv.DestroyVm(hypervisor_pb2.VmRef(vm=name), timeout=30)
    cpu_known = best["off"][1] == best["off"][1] and best["on"][1] == best["on"][1]  # not NaN
    return {
        "vms": SERVICE_VMS,
        "exits_recorded_per_vm": recorded,
        "off_wall_seconds": round(best["off"][0], 3),
        "on_wall_seconds": round(best["on"][0], 3),
        "wall_overhead": _overhead(best["on"][0], best["off"][0]),
        "off_cpu_seconds": round(best["off"][1], 3) if cpu_known else None,
        "on_cpu_seconds": round(best["on"][1], 3) if cpu_known else None,
        "cpu_overhead": _overhead(best["on"][1], best["off"][1]) if cpu_known else None,
    }


def recorder_suite(
    repeats: int = DEFAULT_REPEATS,
    *,
    iterations: int | None = None,
    services: bool = True,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The figures: ``in_process`` per technique and ``services``, each with its overhead as
    ``on / off - 1`` in CPU and wall time."""
    out: dict[str, Any] = {
        "repeats": repeats,
        "in_process": in_process(repeats, iterations, progress),
    }
    if services:
        out["services"] = through_services(repeats, iterations, progress)
    return out
