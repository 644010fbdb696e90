"""Stretched slices: a VM nobody else waits for runs on for about ``LONE_SLICE_SECONDS`` per slice
(at most ``STRETCH`` slices), so it crosses to the hypervisor, commits and is granted a few times
a second instead of once per slice.  A VM that arrives meanwhile still gets the pCPU, and none of
this may change what the guest computes."""

from __future__ import annotations

import time

from ringlab.guestos.build import build_image
from ringlab.image import Image
from ringlab.store import LocalRedis
from ringlab.v1 import common_pb2, hypervisor_pb2, hypervisor_pb2_grpc
from ringlab.vmm import run_vm
from tests.services.conftest import Deployment, start_deployment, unique

SLICE = 20_000


def _create(hv: hypervisor_pb2_grpc.HypervisorStub, workload: str, image: bytes) -> str:
    name = unique(workload)
    hv.CreateVm(
        hypervisor_pb2.CreateVmRequest(
            name=name,
            technique=common_pb2.TECHNIQUE_NATIVE,
            kernel=common_pb2.KERNEL_FLAVOUR_STOCK,
            workload=workload,
            image=image,
            start=True,
        ),
        timeout=30,
    )
    return name


def _wait(hv: hypervisor_pb2_grpc.HypervisorStub, name: str) -> hypervisor_pb2.VmResult:
    return hv.WaitVm(hypervisor_pb2.WaitVmRequest(vm=name, timeout_seconds=300), timeout=330)


def _await_commits(d: Deployment, vm: str, generation: int) -> None:
    """Wait until ``vm``'s commits reach ``generation`` (it is running, past that many slices)."""
    deadline = time.monotonic() + 180  # a safety net for a busy machine, not a measure
    while d.state.generation(vm) < generation:
        assert time.monotonic() < deadline, f"VM {vm} never reached commit {generation}"
        time.sleep(0.01)


def _assert_as_in_process(result: hypervisor_pb2.VmResult, image: Image) -> None:
    want = run_vm(image, technique="native")
    assert (result.reason, result.console) == (want.reason, want.console)
    assert result.stats.retired == want.stats.retired


def _deployment(redis: LocalRedis, db: int) -> Deployment:
    return start_deployment(redis, slice=SLICE, db=db)


def test_a_lone_compute_vm_gets_stretched_slices_and_computes_the_same(
    redis_server: LocalRedis,
) -> None:
    d = _deployment(redis_server, 11)
    try:
        hv = d.hypervisor_stub()
        image = build_image("compute", "stock", {"ROUNDS": 200})
        name = _create(hv, "compute", image.to_bytes())
        result = _wait(hv, name)
        _assert_as_in_process(result, image)
        plain = result.stats.retired // SLICE  # slices of the policy's length it took in all
        assert result.vm.stats.slices * 2 < plain  # granted far fewer, longer slices
        assert d.state.generation(result.vm.id) * 2 < plain  # and committed as seldom
    finally:
        d.hypervisor.stop(1)
        d.cpu.stop(1)


def test_a_vm_that_arrives_gets_the_pcpu_from_a_lone_vm(
    redis_server: LocalRedis,
) -> None:
    """The long VM runs alone (stretched slices) when the short one is created: the pCPU goes to
    the newcomer at the end of the stretched slice, which commits - so the pCPU never reloads the
    long VM (a lost slice would make it reload from the older commit)."""
    from ringlab.v1 import cpu_pb2

    d = _deployment(redis_server, 12)
    try:
        hv = d.hypervisor_stub()
        long = _create(hv, "compute", build_image("compute", "stock", {"ROUNDS": 100_000}).to_bytes())
        vm = hv.DescribeVm(hypervisor_pb2.VmRef(vm=long), timeout=10).id
        _await_commits(d, vm, 3)  # running, on stretched slices
        short_image = build_image("hello", "stock")
        short = _create(hv, "hello", short_image.to_bytes())
        assert _wait(hv, short).console == run_vm(short_image, technique="native").console
        _await_commits(d, vm, d.state.generation(vm) + 1)  # the long VM goes on after the newcomer
        hv.StopVm(hypervisor_pb2.VmRef(vm=long), timeout=10)
        info = d.cpu_stub().DescribeCpu(cpu_pb2.DescribeCpuRequest(), timeout=10)
        assert info.cache_reloads == 2  # each VM loaded once: no progress was thrown away
    finally:
        d.hypervisor.stop(1)
        d.cpu.stop(1)


def test_pausing_a_lone_vm_loses_nothing_it_committed(redis_server: LocalRedis) -> None:
    """A pause revokes the grant: the stretched slice's commit is refused, and its work is
    re-executed after the resume, from the last commit, with the same result."""
    d = _deployment(redis_server, 13)
    try:
        hv = d.hypervisor_stub()
        image = build_image("compute", "stock", {"ROUNDS": 400})
        name = _create(hv, "compute", image.to_bytes())
        vm = hv.DescribeVm(hypervisor_pb2.VmRef(vm=name), timeout=10).id
        _await_commits(d, vm, 2)
        hv.PauseVm(hypervisor_pb2.VmRef(vm=name), timeout=10)
        paused_at = d.state.generation(vm)
        time.sleep(0.5)
        assert (
            hv.DescribeVm(hypervisor_pb2.VmRef(vm=name), timeout=10).status == hypervisor_pb2.VM_STATUS_PAUSED
        )
        assert d.state.generation(vm) == paused_at  # nothing commits under a revoked grant
        hv.ResumeVm(hypervisor_pb2.VmRef(vm=name), timeout=10)
        result = _wait(hv, name)
        _assert_as_in_process(result, image)
    finally:
        d.hypervisor.stop(1)
        d.cpu.stop(1)


def test_stopping_the_hypervisor_mid_slice_hands_the_vm_back_committed(
    redis_server: LocalRedis,
) -> None:
    """SIGTERM's path: the driver finishes the slice it runs (which commits), then hands the VM
    back; the next hypervisor's grant finds the pCPU's copy clean, so nothing is reloaded or
    re-executed, and the result is the in-process one."""
    from ringlab.rpc import open_channel
    from ringlab.v1 import cpu_pb2
    from ringlab_hypervisor.service import serve as serve_hypervisor
    from tests.services.conftest import service_config

    d = _deployment(redis_server, 14)
    replacement = None
    try:
        hv = d.hypervisor_stub()
        image = build_image("compute", "stock", {"ROUNDS": 400})
        name = _create(hv, "compute", image.to_bytes())
        vm = hv.DescribeVm(hypervisor_pb2.VmRef(vm=name), timeout=10).id
        _await_commits(d, vm, 2)
        d.hypervisor.stop(0)
        url = d.redis.url.rsplit("/", 1)[0] + "/14"
        replacement, _ = serve_hypervisor(service_config("hypervisor", url, slice=SLICE))
        stub = hypervisor_pb2_grpc.HypervisorStub(open_channel(f"127.0.0.1:{replacement.port}"))
        result = _wait(stub, name)
        _assert_as_in_process(result, image)
        info = d.cpu_stub().DescribeCpu(cpu_pb2.DescribeCpuRequest(), timeout=10)
        assert info.cache_reloads == 1  # loaded once; the second hypervisor went on from the commit
    finally:
        if replacement is not None:
            replacement.stop(1)
        d.hypervisor.stop(0)
        d.cpu.stop(1)


def test_vms_that_contend_are_not_stretched(redis_server: LocalRedis) -> None:
    """Stretching is for a VM nobody waits for: two VMs sharing the pCPU get plain slices."""
    d = _deployment(redis_server, 15)
    try:
        hv = d.hypervisor_stub()
        image = build_image("compute", "stock", {"ROUNDS": 100_000}).to_bytes()
        names = [_create(hv, "compute", image) for _ in range(2)]
        time.sleep(2.0)
        stats = {v.name: v.stats for v in hv.GetStats(hypervisor_pb2.GetStatsRequest(), timeout=10).vms}
        for name in names:
            hv.StopVm(hypervisor_pb2.VmRef(vm=name), timeout=10)
        for name in names:
            plain = stats[name].guest.retired // SLICE  # what it ran, in plain slices
            assert plain > 0 and stats[name].slices * 2 > plain
    finally:
        d.hypervisor.stop(1)
        d.cpu.stop(1)


def test_a_stretched_slice_ends_soon_after_its_time_when_the_guest_turns_slow(
    redis_server: LocalRedis,
) -> None:
    """A bare guest alternates 400k instructions without an exit (its slices get stretched) and
    3,000 exits (each a world switch). The stretched slice it is in when it turns slow must end at
    the first exit after its time (a few hundred exits), not run STRETCH slices' worth of
    instructions (the whole slow phase, seconds)."""
    from ringlab.asm import assemble

    program = assemble(
        "outer:\n    mov ecx, 200000\n"
        "spin:\n    dec ecx\n    jnz spin\n"  # fast: no exit
        "    mov ecx, 3000\n"
        "slow:\n    out 0x99, eax\n    dec ecx\n    jnz slow\n"  # slow: an exit every 3 instructions
        "    jmp outer\n"
    )
    d = start_deployment(redis_server, slice=2_000, db=11)
    try:
        hv = d.hypervisor_stub()
        name = _create(hv, "exits", program.to_bytes())

        def io_exits_per_slice() -> list[int]:
            events = hv.StreamEvents(hypervisor_pb2.StreamEventsRequest(vm=name), timeout=10)
            return [int(e.detail.split(" x")[1]) for e in events if e.kind == "exit" and "io_out" in e.detail]

        # Until it has gone through fast and slow phases: counted in slices, not in host seconds.
        deadline = time.monotonic() + 180  # a safety net for a busy machine, not a measure
        while len(per_slice := io_exits_per_slice()) <= 6:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        hv.StopVm(hypervisor_pb2.VmRef(vm=name), timeout=10)
        assert len(per_slice) > 6  # it went through fast and slow phases
        assert max(per_slice) < 2_000  # no slice ran through a whole slow phase
    finally:
        d.hypervisor.stop(1)
        d.cpu.stop(1)


def test_a_slice_of_exit_heavy_code_ends_well_within_its_lease(redis_server: LocalRedis) -> None:
    """A slice is counted in instructions, but half a million instructions of a guest that exits
    every few instructions take far longer than the grant's lease (10 s) on the services: the
    slice must end at an exit once a quarter of the lease has passed, or the VM would be granted
    again while it still runs."""
    from ringlab.asm import assemble

    program = assemble("top:\n    out 0x99, eax\n    jmp top\n")
    d = start_deployment(redis_server, slice=500_000, db=14)
    try:
        hv = d.hypervisor_stub()
        name = _create(hv, "exits", program.to_bytes())
        time.sleep(6.0)
        events = hv.StreamEvents(hypervisor_pb2.StreamEventsRequest(vm=name), timeout=10)
        spans = [e.detail.split()[1:3] for e in events if e.kind == "descheduled"]  # how start end charged
        held = [float(end) - float(start) for start, end in spans]
        hv.StopVm(hypervisor_pb2.VmRef(vm=name), timeout=10)
        assert held and max(held) < 10.0 / 4 + 1.0  # a quarter of the lease, and one last exit
    finally:
        d.hypervisor.stop(1)
        d.cpu.stop(1)
