"""Failover bounded by the lease, and resynchronisation instead of failure: a pCPU that dies or
stops answering loses its VM once its calls' deadlines (within the grant's lease) pass, the VM goes
on elsewhere from its last commit, the time lost is not charged to it, and the hypervisor's and the
pCPU's copies of a vCPU never disagree without a fault."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from ringlab.guestos.build import build_image
from ringlab.image import Image
from ringlab.rpc import ServiceServer, open_channel
from ringlab.store import LocalRedis, SharedState
from ringlab.v1 import common_pb2, cpu_pb2, hypervisor_pb2, hypervisor_pb2_grpc
from ringlab.vmm import run_vm
from tests.services.conftest import service_config, start_deployment, unique


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


# -- a pCPU that dies or stops ---------------------------------------------------------------------
LEASE = 2.0
"""The grant lease in these tests: short, so a pCPU's failure shows within seconds."""


@dataclass
class CpuProcess:
    """A cpu service in a process of its own (so that a test can kill or stop it)."""

    process: subprocess.Popen[str]
    address: str
    pcpu: str

    @classmethod
    def start(cls, redis_url: str, pcpu: str) -> CpuProcess:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ringlab_cpu",
                "--listen",
                "127.0.0.1:0",
                "--redis",
                redis_url,
                "--pcpu",
                pcpu,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert process.stdout is not None
        ready = process.stdout.readline().split()  # READY cpu ADDRESS PCPU
        assert ready[:2] == ["READY", "cpu"], ready
        return cls(process, ready[2], ready[3])

    def signal(self, signum: int) -> None:
        os.kill(self.process.pid, signum)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
        self.process.wait(timeout=10)
        assert self.process.stdout is not None
        self.process.stdout.close()


@dataclass
class TwoPcpus:
    url: str
    state: SharedState
    hypervisor: ServiceServer
    cpus: list[CpuProcess]

    def restart_hypervisor(self, lease: float) -> None:
        """Stop the hypervisor and start a new one (which has no copy of any VM)."""
        from ringlab_hypervisor.service import serve as serve_hypervisor

        self.hypervisor.stop(1)
        self.hypervisor, _ = serve_hypervisor(
            service_config("hypervisor", self.url, slice=20_000, lease=lease)
        )

    def stub(self) -> hypervisor_pb2_grpc.HypervisorStub:
        return hypervisor_pb2_grpc.HypervisorStub(open_channel(f"127.0.0.1:{self.hypervisor.port}", ""))

    def running_on(self, vm: str) -> str:
        """The pCPU ``vm`` holds a grant of ("" when none)."""
        return str(self.state.sched_entry(vm).get("pcpu", ""))

    def cpu(self, pcpu: str) -> CpuProcess:
        return next(c for c in self.cpus if c.pcpu == pcpu)


@pytest.fixture
def two_pcpus(redis_server: LocalRedis) -> Iterator[TwoPcpus]:
    from ringlab_hypervisor.service import serve as serve_hypervisor

    url = redis_server.url.rsplit("/", 1)[0] + "/14"
    state = SharedState.from_url(url)
    state.r.flushdb()
    cpus = [CpuProcess.start(url, unique("pcpu-a")), CpuProcess.start(url, unique("pcpu-b"))]
    hypervisor, _ = serve_hypervisor(service_config("hypervisor", url, slice=20_000, lease=LEASE))
    d = TwoPcpus(url, state, hypervisor, cpus)
    try:
        yield d
    finally:
        d.hypervisor.stop(1)
        for cpu in cpus:
            cpu.stop()
        state.r.close()


def _until(what: str, condition: Callable[[], bool], seconds: float = 120.0) -> None:
    """Wait for ``condition`` (a safety net for a busy machine, not a measure)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)


def _long_vm(d: TwoPcpus) -> tuple[str, str, Image, str]:
    """A compute VM that runs for many slices: (name, id, image, the event cursor before it)."""
    image = build_image("compute", "stock", {"ROUNDS": 3000})
    name = unique("long")
    cursor = d.state.events_last_id()
    vm = (
        d.stub()
        .CreateVm(
            hypervisor_pb2.CreateVmRequest(
                name=name,
                technique=common_pb2.TECHNIQUE_HW,
                kernel=common_pb2.KERNEL_FLAVOUR_STOCK,
                workload="compute",
                image=image.to_bytes(),
                start=True,
            ),
            timeout=30,
        )
        .id
    )
    _until("the VM runs and commits", lambda: d.state.generation(vm) >= 2 and d.running_on(vm) != "")
    return name, vm, image, cursor


def _after(cursor: str, other: str) -> bool:
    """Whether the event stream position ``cursor`` comes after ``other``."""
    return tuple(map(int, cursor.split("-"))) > tuple(map(int, other.split("-")))


def _finishes_as_in_process(d: TwoPcpus, name: str, image: Image) -> hypervisor_pb2.VmResult:
    result = d.stub().WaitVm(hypervisor_pb2.WaitVmRequest(vm=name, timeout_seconds=300), timeout=330)
    want = run_vm(image, technique="hw")
    assert (result.reason, result.detail, result.console) == (want.reason, want.detail, want.console)
    assert result.stats.retired == want.stats.retired
    return result


def test_a_stopped_pcpu_loses_its_vm_when_the_lease_ends_and_its_late_commit_is_refused(
    two_pcpus: TwoPcpus,
) -> None:
    """SIGSTOP stands for a partition: the pCPU neither answers nor dies.  The hypervisor's call
    to it gives up when the grant's lease ends (not after a fixed minute), the VM goes on on the
    other pCPU from its last commit, and when the stopped pCPU resumes, whatever it then tries to
    commit carries a stale fencing token and is refused: the VM ends exactly as in-process."""
    d = two_pcpus
    name, vm, image, _ = _long_vm(d)
    victim = d.cpu(d.running_on(vm))
    cursor = d.state.events_last_id()
    victim.signal(signal.SIGSTOP)
    try:
        stopped_at = d.state.generation(vm)
        _until(
            "the VM goes on on the other pCPU while this one is stopped",
            lambda: d.state.generation(vm) >= stopped_at + 3 and d.running_on(vm) not in ("", victim.pcpu),
            seconds=45,  # less than the minute a world switch could wait before: the lease decides
        )
        _until(
            "the hypervisor gives up the stopped pCPU's slice while it is still stopped",
            lambda: any(
                e.get("kind") == "descheduled" and e["pcpu"] == victim.pcpu and e["detail"].startswith("lost")
                for e in d.state.events_read(cursor)
            ),
            seconds=45,
        )
    finally:
        victim.signal(signal.SIGCONT)
    _finishes_as_in_process(d, name, image)


def test_a_killed_pcpu_is_not_given_the_vm_again_and_the_lost_time_is_not_charged(
    two_pcpus: TwoPcpus,
) -> None:
    """After SIGKILL, the hypervisor finds the pCPU gone at its next world switch: that slice is
    lost (and not charged to the VM), and the dead pCPU is not granted a VM again until it answers;
    the VM finishes on the other pCPU exactly as in-process."""
    d = two_pcpus
    name, vm, image, created = _long_vm(d)
    victim = d.cpu(d.running_on(vm))
    killed = d.state.events_last_id()
    victim.signal(signal.SIGKILL)
    _finishes_as_in_process(d, name, image)

    def slices() -> list[dict[str, str]]:
        events = d.state.events_read(created, count=1_000_000)
        return [e for e in events if e.get("kind") == "descheduled" and e["vm"] == vm]

    # The slice the VM ended in is accounted by its pCPU's next grant, after the end.
    _until("the last slice is accounted", lambda: slices()[-1]["detail"].startswith("ended"))
    accounted = slices()
    lost = [e for e in accounted if _after(e["cursor"], killed) and e["detail"].startswith("lost")]
    assert [e["pcpu"] for e in lost] == [victim.pcpu]  # one lost slice, on the dead pCPU
    # The VM is charged exactly the slices that counted: its CPU time is their sum.
    spans = [float(e["detail"].split()[2]) - float(e["detail"].split()[1]) for e in accounted]
    kept = [span for e, span in zip(accounted, spans) if not e["detail"].startswith("lost")]
    cpu_seconds = d.stub().DescribeVm(hypervisor_pb2.VmRef(vm=vm), timeout=10).stats.cpu_seconds
    assert cpu_seconds == pytest.approx(sum(kept), abs=1e-5 * len(accounted))
    assert sum(spans) > sum(kept)  # the lost slice took time, which was not charged


@pytest.mark.slow  # ~150 s of a replay outlasting the lease: .ci/run's slow stage runs it
def test_a_vm_whose_replay_outlasts_the_lease_goes_on_from_its_copy(two_pcpus: TwoPcpus) -> None:
    """A hypervisor without a copy of a VM (here: a new one) replays it to its last commit before
    running it.  When the replay takes longer than the grant's lease (a long-running VM, a short
    lease, a busy machine), that slice ends without a world switch, and the replayed copy is kept:
    the next slice runs it (thrown away, every slice would replay again and none would run)."""
    d = two_pcpus
    name, vm, image, _ = _long_vm(d)
    _until("the VM is well on", lambda: int(d.state.vm_vcpu_summary(vm)[1]["retired"]) >= 50_000_000)
    d.restart_hypervisor(lease=1.0)
    _finishes_as_in_process(d, name, image)
