"""Equivalence through the services: every workload's console output, final registers and guest
statistics equal the in-process run's (DESIGN.md, Equivalence)."""

from __future__ import annotations

import json

import pytest

from ringlab.machine import run_image
from ringlab.v1 import common_pb2, hypervisor_pb2
from ringlab_guest.build import WORKLOADS, build_image
from tests.services.conftest import Deployment, unique


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_workload_through_the_services_equals_in_process(deployment: Deployment, workload: str) -> None:
    hv = deployment.hypervisor_stub()
    image = build_image(workload, "stock")
    name = unique(workload)
    hv.CreateVm(
        hypervisor_pb2.CreateVmRequest(
            name=name,
            technique=common_pb2.TECHNIQUE_NATIVE,
            kernel=common_pb2.KERNEL_FLAVOUR_STOCK,
            workload=workload,
            image=image.to_bytes(),
            start=True,
        )
    )
    result = hv.WaitVm(hypervisor_pb2.WaitVmRequest(vm=name, timeout_seconds=60), timeout=90)
    got = json.loads(result.result_json)
    want = run_image(image).to_json()
    assert got["console"] == want["console"]
    assert got["exit"] == want["exit"]
    assert got["registers"] == want["registers"]
    assert got["stats"]["guest"] == want["stats"]["guest"]
