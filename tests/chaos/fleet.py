"""The VMs a chaos trial runs: every technique the services accept, short workloads, created
straight through the hypervisor's API (images built once per process)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ringlab.guestos.build import build_image
from ringlab.rpc import open_channel
from ringlab.rpc.convert import KERNELS, TECHNIQUES
from ringlab.v1 import hypervisor_pb2, hypervisor_pb2_grpc
from ringlab.vmm import default_kernel


@dataclass(frozen=True)
class Spec:
    technique: str
    workload: str
    nested_paging: bool = False
    defines: tuple[tuple[str, int], ...] = ()

    @property
    def label(self) -> str:
        return self.technique + ("+np" if self.nested_paging else "")


FEW = (("ITERATIONS", 200),)
FLEET = (
    Spec("native", "compute", defines=(("ROUNDS", 8),)),
    Spec("native", "io", defines=(("ITERATIONS", 10),)),
    Spec("trap-emulate", "hello"),
    Spec("trap-emulate", "syscall", defines=FEW),
    Spec("bt", "syscall", defines=FEW),
    Spec("bt", "divzero", defines=(("ITERATIONS", 10),)),
    Spec("pv", "io", defines=(("ITERATIONS", 10),)),
    Spec("pv", "hello"),
    Spec("hw", "spawnwait", defines=(("ITERATIONS", 4),)),
    Spec("hw", "compute", defines=(("ROUNDS", 8),)),
    Spec("hw", "hello", nested_paging=True),
    Spec("hw", "syscall", nested_paging=True, defines=FEW),
)
"""Twelve VMs: two of every technique, hw with nested paging included, each a short run (a
second or two of a pCPU through the services)."""


VICTIMS_PROPERTY = "chaos_victims"
"""The user property under which a trial records the VMs its faults hit (the checker's
``victims``, each with ``lease``: the grant lease of its deployment, in seconds); the chaos
conftest's terminal summary reads it from the reports."""


def record_victims(
    record_property: Callable[[str, object], None], victims: Iterable[dict[str, Any]], lease: float
) -> None:
    """Record a trial's victims for the failover figures printed at the end of the run
    (``record_property``: the pytest fixture of that name)."""
    record_property(VICTIMS_PROPERTY, [dict(v) | {"lease": lease} for v in victims])


@functools.cache
def _image(workload: str, kernel: str, defines: tuple[tuple[str, int], ...]) -> bytes:
    return build_image(workload, kernel, dict(defines)).to_bytes()


def create(target: str, prefix: str, specs: tuple[Spec, ...] = FLEET, *, start: bool = True) -> list[str]:
    """Create (and start) one VM per spec on the hypervisor at ``target``; their names."""
    names = []
    with open_channel(target, "") as channel:
        stub = hypervisor_pb2_grpc.HypervisorStub(channel)
        for n, spec in enumerate(specs):
            kernel = default_kernel(spec.technique)
            name = f"{prefix}-{n:02d}-{spec.label}-{spec.workload}".replace("+", "-")
            stub.CreateVm(
                hypervisor_pb2.CreateVmRequest(
                    name=name,
                    technique=TECHNIQUES[spec.technique],
                    nested_paging=spec.nested_paging,
                    kernel=KERNELS[kernel],
                    workload=spec.workload,
                    image=_image(spec.workload, kernel, spec.defines),
                    defines=dict(spec.defines),
                    start=start,
                ),
                timeout=60,
            )
            names.append(name)
    return names


def start(target: str, names: list[str]) -> None:
    with open_channel(target, "") as channel:
        stub = hypervisor_pb2_grpc.HypervisorStub(channel)
        for name in names:
            stub.StartVm(hypervisor_pb2.VmRef(vm=name), timeout=30)


def destroy(target: str, names: list[str]) -> None:
    with open_channel(target, "") as channel:
        stub = hypervisor_pb2_grpc.HypervisorStub(channel)
        for name in names:
            stub.DestroyVm(hypervisor_pb2.VmRef(vm=name), timeout=30)
