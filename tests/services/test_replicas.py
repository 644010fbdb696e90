"""More than one pCPU and more than one hypervisor replica schedule the same VMs safely: every
VM ends with its workload's exact output, and every pCPU did work."""

from __future__ import annotations

from ringlab.guestos.build import build_image
from ringlab.store import LocalRedis
from ringlab.v1 import common_pb2, hypervisor_pb2
from ringlab.vmm import run_vm
from tests.services.conftest import service_config, start_deployment, unique


def test_two_pcpus_and_two_hypervisor_replicas(redis_server: LocalRedis) -> None:
    from ringlab_cpu.service import serve as serve_cpu
    from ringlab_hypervisor.service import serve as serve_hypervisor

    d = start_deployment(redis_server, slice=50_000, db=8)
    url = d.redis.url.rsplit("/", 1)[0] + "/8"
    second_cpu, _ = serve_cpu(service_config("cpu", url, pcpu=unique("pcpu")))
    second_hv, _ = serve_hypervisor(service_config("hypervisor", url, slice=50_000))
    try:
        hv = d.hypervisor_stub()
        images = {w: build_image(w, "stock") for w in ("multi", "spawnwait", "syscall")}
        names = {}
        for i in range(6):
            workload = list(images)[i % 3]
            name = unique(workload)
            names[name] = workload
            hv.CreateVm(
                hypervisor_pb2.CreateVmRequest(
                    name=name,
                    technique=common_pb2.TECHNIQUE_NATIVE if i % 2 else common_pb2.TECHNIQUE_HW,
                    kernel=common_pb2.KERNEL_FLAVOUR_STOCK,
                    workload=workload,
                    image=images[workload].to_bytes(),
                    start=True,
                ),
                timeout=30,
            )
        for name, workload in names.items():
            result = hv.WaitVm(hypervisor_pb2.WaitVmRequest(vm=name, timeout_seconds=120), timeout=150)
            assert result.console == run_vm(images[workload], technique="native").console
        pcpus = hv.GetStats(hypervisor_pb2.GetStatsRequest(), timeout=10).pcpus
        assert len(pcpus) == 2 and all(p.slices > 0 for p in pcpus)
    finally:
        second_hv.stop(1)
        d.hypervisor.stop(1)
        second_cpu.stop(1)
        d.cpu.stop(1)
