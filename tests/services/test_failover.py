"""Failover bounded by the lease, and resynchronisation instead of failure: a pCPU that dies or
stops answering loses its VM once its calls' deadlines (within the grant's lease) pass, the VM goes
on elsewhere from its last commit, the time lost is not charged to it, and the hypervisor's and the
pCPU's copies of a vCPU never disagree without a fault."""

from __future__ import annotations

from ringlab.guestos.build import build_image
from ringlab.store import LocalRedis
from ringlab.v1 import common_pb2, cpu_pb2, hypervisor_pb2
from ringlab.vmm import run_vm
from tests.services.conftest import start_deployment, unique


def test_slices_whose_last_exit_the_hypervisor_emulated_never_make_the_pcpu_reload(
    redis_server: LocalRedis,
) -> None:
    """Under pv every system call is a hypercall the hypervisor handles, so many slices end with
    the hypervisor's own changes, sent with the slice's final commit.  The hypervisor's copy must
    then stand where the pCPU's does: the next slice's changes apply on the pCPU's cached vCPU, and
    the pCPU loads the VM from Redis once in all (a disagreement makes it reload, and the slice is
    thrown away and re-run)."""
    d = start_deployment(redis_server, slice=2_000, db=13)
    try:
        hv = d.hypervisor_stub()
        image = build_image("syscall", "paravirt", {"ITERATIONS": 3_000})
        name = unique("pv-syscall")
        hv.CreateVm(
            hypervisor_pb2.CreateVmRequest(
                name=name,
                technique=common_pb2.TECHNIQUE_PV,
                kernel=common_pb2.KERNEL_FLAVOUR_PARAVIRT,
                workload="syscall",
                image=image.to_bytes(),
                start=True,
            ),
            timeout=30,
        )
        result = hv.WaitVm(hypervisor_pb2.WaitVmRequest(vm=name, timeout_seconds=300), timeout=330)
        want = run_vm(image, technique="pv")
        assert (result.reason, result.console) == (want.reason, want.console)
        assert result.vm.stats.slices > 10  # many slices, so many chances to disagree
        info = d.cpu_stub().DescribeCpu(cpu_pb2.DescribeCpuRequest(), timeout=10)
        assert info.cache_reloads == 1
    finally:
        d.hypervisor.stop(1)
        d.cpu.stop(1)
