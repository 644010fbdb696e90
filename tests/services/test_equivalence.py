"""Equivalence through the services: every workload under every technique prints, ends and
counts exactly what the in-process run (``run_vm``) does (docs/design.md, Equivalence).  Host
figures (wall time, block-cache hits) depend on how it ran and are left out."""

from __future__ import annotations

import json

import pytest

from ringlab.guestos.build import WORKLOADS, build_image
from ringlab.rpc.convert import KERNELS, TECHNIQUES
from ringlab.v1 import hypervisor_pb2
from ringlab.vmm import run_vm
from tests.services.conftest import Deployment, unique

FAST = ("hello", "syscall", "io", "divzero", "spawnwait")


def _kernel(technique: str) -> str:
    return "paravirt" if technique == "pv" else "stock"


def _image(workload: str, technique: str) -> object:
    return build_image(workload, _kernel(technique))


def run_through_services(
    deployment: Deployment, image: object, technique: str, workload: str
) -> dict[str, object]:
    hv = deployment.hypervisor_stub()
    name = unique(f"{technique}-{workload}")
    hv.CreateVm(
        hypervisor_pb2.CreateVmRequest(
            name=name,
            technique=TECHNIQUES[technique],
            kernel=KERNELS[_kernel(technique)],
            workload=workload,
            image=image.to_bytes(),  # type: ignore[attr-defined]
            start=True,
        )
    )
    result = hv.WaitVm(hypervisor_pb2.WaitVmRequest(vm=name, timeout_seconds=120), timeout=150)
    doc: dict[str, object] = json.loads(result.result_json)
    return doc


SLICE_DEPENDENT = ("translations", "translated_instructions", "cycles")
"""bt translates from where a slice starts, so slice boundaries add a few blocks: these counts,
and the simulated cycles that price them, depend on the scheduling slices (DESIGN: a run is a
function of its slices); nothing else does."""


def _comparable(doc: dict[str, object], technique: str) -> dict[str, object]:
    doc = dict(doc)
    stats = dict(doc.pop("stats"))  # type: ignore[call-overload]
    skip = SLICE_DEPENDENT if technique == "bt" else ()
    doc["guest"] = {k: v for k, v in stats["guest"].items() if k not in skip}
    return doc


@pytest.mark.parametrize("technique", list(TECHNIQUES))
@pytest.mark.parametrize("workload", FAST)
def test_workload_through_the_services_equals_in_process(
    deployment: Deployment, technique: str, workload: str
) -> None:
    image = _image(workload, technique)
    got = run_through_services(deployment, image, technique, workload)
    want = run_vm(image, technique=technique).to_json()  # type: ignore[arg-type]
    assert _comparable(got, technique) == _comparable(want, technique)


@pytest.mark.slow
@pytest.mark.parametrize("technique", list(TECHNIQUES))
@pytest.mark.parametrize("workload", sorted(set(WORKLOADS) - set(FAST)))
def test_every_other_workload_through_the_services(
    deployment: Deployment, technique: str, workload: str
) -> None:
    image = _image(workload, technique)
    got = run_through_services(deployment, image, technique, workload)
    want = run_vm(image, technique=technique).to_json()  # type: ignore[arg-type]
    assert _comparable(got, technique) == _comparable(want, technique)
