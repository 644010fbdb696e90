"""Every service serves Prometheus metrics at /metrics (docs/metrics.md): a real deployment (Redis,
cpu, hypervisor and a guest on loopback) runs a VM, then each service's endpoint is scraped over
HTTP and parsed with prometheus_client's own parser.  What the hypervisor counts agrees with
what its API says, exit reason by exit reason."""

from __future__ import annotations

import re
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from ringlab.rpc import StreamSlots, open_channel
from ringlab.rpc.metrics import PORT_OFFSET, ServiceMetrics, metrics_port
from ringlab.rpc.server import ServiceServer
from ringlab.store import LocalRedis
from ringlab.v1 import cpu_pb2, cpu_pb2_grpc, guest_pb2, guest_pb2_grpc, hypervisor_pb2
from ringlab_guest.service import GuestConfig, GuestServicer
from ringlab_guest.service import serve as serve_guest
from tests.services.conftest import Deployment, code_of, service_config, unique

SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")
PATIENCE = 60.0
"""How long the hypervisor may take to count a VM's last slice after its end was committed (it
counts the slice once the slice's commit has returned): a bound on waiting, not a timing claim."""


@dataclass
class Scrape:
    """One scrape of one service: every sample, by sample name."""

    families: dict[str, str]
    """family name -> type."""
    samples: dict[str, list[Sample]]

    def find(self, name: str, **labels: str) -> list[Sample]:
        return [s for s in self.samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())]

    def value(self, name: str, **labels: str) -> float:
        return sum(s.value for s in self.find(name, **labels))


def scrape(port: int | None) -> Scrape:
    assert port, "the service serves no metrics"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    families: dict[str, str] = {}
    samples: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = family.type
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return Scrape(families, samples)


def eventually(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + PATIENCE
    while not check():
        assert time.monotonic() < deadline, "never became true"
        time.sleep(0.1)


def conventional(s: Scrape) -> None:
    """Prometheus conventions: ringlab_ names, counters end in _total, lowercase snake_case
    labels, no unbounded label (no guest address)."""
    ours = {name: kind for name, kind in s.families.items() if name.startswith("ringlab_")}
    assert ours
    for name, kind in ours.items():
        assert SNAKE.match(name), name
        if kind == "counter":
            assert f"{name}_total" in s.samples or not s.samples.get(name), name
    for name, samples in s.samples.items():
        if not name.startswith("ringlab_"):
            continue
        for sample in samples:
            for label in sample.labels:
                assert SNAKE.match(label), (name, label)
                assert label not in ("eip", "address") or name == "ringlab_pcpu_info", (name, label)


@pytest.fixture(scope="module")
def guest(deployment: Deployment) -> Iterator[tuple[ServiceServer, str]]:
    name = unique("metrics")
    servicer = GuestServicer(
        GuestConfig(name, "trap-emulate", "stock", "syscall", 256),
        deployment.hypervisor_target,
        "",
        StreamSlots(2),
    )
    servicer.register()  # creates and starts the VM
    server = serve_guest(service_config("guest", deployment.redis.url), servicer)
    yield server, name
    server.stop(1)


def test_every_service_serves_metrics_that_agree_with_the_api(
    deployment: Deployment, guest: tuple[ServiceServer, str]
) -> None:
    guest_server, name = guest
    hv = deployment.hypervisor_stub()
    result = hv.WaitVm(hypervisor_pb2.WaitVmRequest(vm=name, timeout_seconds=120), timeout=150)
    assert result.reason == "poweroff"
    by_reason = dict(result.vm.stats.exits_by_reason)
    total = result.vm.stats.exits
    assert sum(by_reason.values()) == total > 0
    # A few calls whose status codes must be counted: a refusal, a stream, a method nobody serves.
    assert code_of(lambda: hv.DescribeVm(hypervisor_pb2.VmRef(vm="no-such-vm"), timeout=10)) is (
        grpc.StatusCode.NOT_FOUND
    )
    assert list(hv.StreamEvents(hypervisor_pb2.StreamEventsRequest(vm=name), timeout=30))
    channel = open_channel(deployment.hypervisor_target)
    nobody = channel.unary_unary("/ringlab.v1.Nobody/Random123", lambda b: b, lambda b: b)
    assert code_of(lambda: nobody(b"", timeout=10)) is grpc.StatusCode.UNIMPLEMENTED
    guest_stub = guest_pb2_grpc.GuestStub(open_channel(f"127.0.0.1:{guest_server.port}"))
    assert guest_stub.DescribeGuest(guest_pb2.DescribeGuestRequest(), timeout=10).workload == "syscall"

    # -- the hypervisor: exits by VM, technique and reason equal the API's -----------------------
    eventually(
        lambda: scrape(deployment.hypervisor.metrics_port).value("ringlab_vm_exits_total", vm=name) == total
    )
    h = scrape(deployment.hypervisor.metrics_port)
    conventional(h)
    exits = h.find("ringlab_vm_exits_total", vm=name)
    assert {s.labels["technique"] for s in exits} == {"trap-emulate"}
    assert {s.labels["reason"]: s.value for s in exits} == by_reason
    assert set(exits[0].labels) == {"vm", "technique", "reason"}
    assert h.families["ringlab_vm_exits"] == "counter"
    switches = h.value("ringlab_world_switches_total", pcpu=deployment.pcpu, technique="trap-emulate")
    assert switches >= total  # every exit ended a world switch; slices end with a switch too
    assert h.value("ringlab_world_switch_seconds_count", pcpu=deployment.pcpu) >= total
    assert h.families["ringlab_world_switch_seconds"] == "histogram"
    for histogram in ("ringlab_slice_seconds", "ringlab_slice_instructions"):
        assert h.families[histogram] == "histogram"
        assert h.value(f"{histogram}_count", technique="trap-emulate") >= result.vm.stats.slices > 0
        assert {s.labels["ended"] for s in h.find(f"{histogram}_count", technique="trap-emulate")} <= {
            "preempted",
            "idle",
            "ended",
            "lost",
        }
    assert h.value("ringlab_slice_instructions_sum", technique="trap-emulate") >= (
        result.vm.stats.guest.retired
    )
    assert h.value("ringlab_pcpu_busy_seconds_total", pcpu=deployment.pcpu) > 0
    assert h.value("ringlab_pcpu_scheduler_seconds_total", pcpu=deployment.pcpu) > 0
    assert h.value("ringlab_scheduler_decisions_total", pcpu=deployment.pcpu, outcome="granted") >= 1
    # the deployment as Redis holds it
    assert h.value("ringlab_store_up") == 1
    (info,) = h.find("ringlab_vm_info", vm=name)
    assert (
        info.value == 1
        and info.labels["technique"] == "trap-emulate"
        and info.labels["vm_id"] == result.vm.id
    )
    assert h.find("ringlab_vm_credit_seconds", vm=name)
    assert 0 < h.value("ringlab_vm_cpu_share_ratio", vm=name) <= 1
    # charged at the grant after each slice: the VM's last slice may be charged after WaitVm answered
    later = hv.DescribeVm(hypervisor_pb2.VmRef(vm=name), timeout=10).stats.cpu_seconds
    assert 0 < result.vm.stats.cpu_seconds <= h.value("ringlab_vm_cpu_seconds_total", vm=name) <= later
    assert h.value("ringlab_vm_weight", vm=name) == 256
    assert h.value("ringlab_vms", status="poweroff") >= 1
    assert h.value("ringlab_pcpu_up", pcpu=deployment.pcpu) == 1
    # Redis round trips, gRPC calls, stream slots
    assert h.value("ringlab_redis_round_trips_total", op="grant", outcome="ok") >= result.vm.stats.slices
    assert h.value("ringlab_redis_round_trip_seconds_count", op="grant") > 0
    rpc = {"grpc_service": "ringlab.v1.Hypervisor"}
    assert h.value("ringlab_grpc_server_handled_total", **rpc, grpc_method="WaitVm", grpc_code="OK") >= 1
    assert (
        h.value("ringlab_grpc_server_handled_total", **rpc, grpc_method="DescribeVm", grpc_code="NOT_FOUND")
        >= 1
    )
    assert (
        h.value("ringlab_grpc_server_handled_total", **rpc, grpc_method="StreamEvents", grpc_code="OK") >= 1
    )
    assert (
        h.value("ringlab_grpc_server_handling_seconds_count", **rpc, grpc_method="WaitVm", grpc_code="OK")
        >= 1
    )
    assert h.value("ringlab_grpc_server_started_total", **rpc, grpc_method="WaitVm") >= 1
    assert h.value("ringlab_grpc_server_handled_total", grpc_method="unknown", grpc_code="UNIMPLEMENTED") >= 1
    methods = {s.labels["grpc_method"] for s in h.samples["ringlab_grpc_server_handled_total"]}
    assert "Random123" not in methods  # a name a client made up is no label
    assert h.value("ringlab_stream_slots") == 4  # the fixture's max_streams
    assert 0 <= h.value("ringlab_stream_slots_in_use") <= 4
    assert h.value("ringlab_stream_slots_refused_total") == 0
    assert h.find("ringlab_service_info", service="hypervisor")
    assert h.value("process_cpu_seconds_total") > 0

    # -- the cpu service ---------------------------------------------------------------------------
    c = scrape(deployment.cpu.metrics_port)
    conventional(c)
    assert c.find("ringlab_service_info", service="cpu")
    assert c.find("ringlab_pcpu_info", pcpu=deployment.pcpu)
    run_vcpu = {"grpc_service": "ringlab.v1.Cpu", "grpc_method": "RunVcpu", "grpc_code": "OK"}
    # each exit the hypervisor counted ended a RunVcpu that answered OK
    assert c.value("ringlab_grpc_server_handled_total", **run_vcpu) >= total
    assert c.value("ringlab_grpc_server_handling_seconds_count", **run_vcpu) == c.value(
        "ringlab_grpc_server_handled_total", **run_vcpu
    )
    assert c.families["ringlab_commit_seconds"] == "histogram"
    assert c.value("ringlab_commit_seconds_count", outcome="applied") >= 1
    assert c.value("ringlab_commit_pages_total") > 0
    assert c.value("ringlab_vcpu_run_seconds_count") >= total
    # the instructions the pCPU ran (those the VMM emulated were retired on the hypervisor's copy)
    assert 0 < c.value("ringlab_vcpu_retired_instructions_total") <= result.vm.stats.guest.retired
    assert c.value("ringlab_vcpu_runs_total") >= total
    assert c.value("ringlab_vcpu_cache_reloads_total") >= 1
    assert c.value("ringlab_vcpu_cached_vms") >= 1
    assert c.value("ringlab_redis_round_trips_total", op="commit", outcome="ok") >= 1
    assert c.value("ringlab_redis_round_trips_total", op="load_vcpu", outcome="ok") >= 1
    assert "ringlab_vm_exits" not in c.families  # the hypervisor's alone

    # -- the guest -----------------------------------------------------------------------------------
    g = scrape(guest_server.metrics_port)
    conventional(g)
    assert g.find("ringlab_service_info", service="guest")
    assert g.find("ringlab_guest_info", vm=name, technique="trap-emulate", workload="syscall")
    assert g.value("ringlab_guest_vm_created") == 1
    assert (
        g.value(
            "ringlab_grpc_server_handled_total",
            grpc_service="ringlab.v1.Guest",
            grpc_method="DescribeGuest",
            grpc_code="OK",
        )
        == 1
    )
    assert g.value("ringlab_stream_slots") == 2


def test_a_destroyed_vm_leaves_no_exit_series(deployment: Deployment) -> None:
    hv = deployment.hypervisor_stub()
    name = unique("gone")
    from ringlab.guestos.build import build_image
    from ringlab.rpc.convert import KERNELS, TECHNIQUES

    hv.CreateVm(
        hypervisor_pb2.CreateVmRequest(
            name=name,
            technique=TECHNIQUES["hw"],
            kernel=KERNELS["stock"],
            workload="hello",
            image=build_image("hello", "stock").to_bytes(),
            start=True,
        ),
        timeout=30,
    )
    result = hv.WaitVm(hypervisor_pb2.WaitVmRequest(vm=name, timeout_seconds=120), timeout=150)
    port = deployment.hypervisor.metrics_port
    eventually(lambda: scrape(port).value("ringlab_vm_exits_total", vm=name) == result.vm.stats.exits > 0)
    hv.DestroyVm(hypervisor_pb2.VmRef(vm=name), timeout=30)
    after = scrape(port)
    assert not after.find("ringlab_vm_exits_total", vm=name)
    assert not after.find("ringlab_vm_info", vm=name)


def test_where_metrics_are_served() -> None:
    """RINGLAB_METRICS_PORT / --metrics-port: a port, 0 (any free one) or off; by default the gRPC
    port + 1000 (any free port when the gRPC port is)."""
    assert metrics_port("", 50051) == (50051 + PORT_OFFSET, False)
    assert metrics_port("", 0) == (0, False)
    assert metrics_port("9100", 50051) == (9100, True)
    assert metrics_port("0", 50051) == (0, True)
    assert metrics_port("off", 50051) == (None, True)
    assert metrics_port("OFF", 50051) == (None, True)
    with pytest.raises(ValueError, match="off"):
        metrics_port("nine", 50051)
    with pytest.raises(ValueError):
        metrics_port("70000", 50051)


def test_a_taken_metrics_port_stops_the_service_only_when_it_was_asked_for() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit, match="cannot serve metrics"):
            ServiceMetrics("cpu").start("127.0.0.1", port, explicit=True)
        assert ServiceMetrics("cpu").start("127.0.0.1", port, explicit=False) is None  # a warning
    metrics = ServiceMetrics("cpu")
    bound = metrics.start("127.0.0.1", 0)
    try:
        assert bound and metrics.port == bound
        assert scrape(bound).find("ringlab_service_info", service="cpu")
    finally:
        metrics.stop()


def test_a_call_the_token_check_refuses_is_counted_with_its_code(redis_server: LocalRedis) -> None:
    from ringlab_cpu.service import serve as serve_cpu

    url = redis_server.url.rsplit("/", 1)[0] + "/10"  # its own database: no hypervisor sees this pCPU
    server, _servicer = serve_cpu(service_config("cpu", url, pcpu=unique("pcpu"), token="t0k"))
    try:
        stub = cpu_pb2_grpc.CpuStub(open_channel(f"127.0.0.1:{server.port}"))
        assert (
            code_of(lambda: stub.Echo(cpu_pb2.EchoRequest(), timeout=10)) is grpc.StatusCode.UNAUTHENTICATED
        )
        s = scrape(server.metrics_port)
        echo = {"grpc_service": "ringlab.v1.Cpu", "grpc_method": "Echo"}
        assert s.value("ringlab_grpc_server_handled_total", **echo, grpc_code="UNAUTHENTICATED") == 1
        assert s.value("ringlab_grpc_server_handled_total", **echo, grpc_code="OK") == 0
    finally:
        server.stop(1)
