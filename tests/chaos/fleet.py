"""The VMs a chaos trial runs: every technique the services accept, short workloads, created
straight through the hypervisor's API (images built once per process)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

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

    @property
    def label(self) -> str:
        return self.technique + ("+np" if self.nested_paging else "")


FLEET = (
    Spec("native", "compute"),
    Spec("native", "io"),
    Spec("trap-emulate", "hello"),
    Spec("trap-emulate", "syscall"),
    Spec("bt", "syscall"),
    Spec("bt", "divzero"),
    Spec("pv", "io"),
    Spec("pv", "hello"),
    Spec("hw", "spawnwait"),
    Spec("hw", "compute"),
    Spec("hw", "hello", nested_paging=True),
    Spec("hw", "syscall", nested_paging=True),
)
"""Twelve VMs: two of every technique, hw with nested paging included."""


@functools.cache
def _image(workload: str, kernel: str) -> bytes:
    return build_image(workload, kernel).to_bytes()


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
                    image=_image(spec.workload, kernel),
                    start=start,
                ),
                timeout=60,
            )
            names.append(name)
    return names
