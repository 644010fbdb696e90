"""The compose deployment, end to end, on a real Docker engine.

Builds every image locally (no registry here: scripts/docker-images makes a debootstrap base, a
Redis image and a wheelhouse), brings up ``docker-compose.yml`` with three guest replicas, waits for
every health check, drives the deployment from the host over the published port (as a person
would: ``examples/create_vms.py`` and the ``ringlab`` CLI add VMs under every technique, the
generated gRPC stubs read consoles), kills the ``cpu`` container with SIGKILL while VMs run, starts
it again, and checks that every VM still ends with exactly its workload's expected console output.
Then ``ringlab vm create --launcher docker`` starts guest containers through the Docker SDK.
The deployment runs with the ``metrics`` profile: a Prometheus (built locally too, from Debian's
package) scrapes every service, and its HTTP API must show every target up and a VM's exits.
Everything is torn down, whatever happens, and the phases are timed in pytest's summary.

Marked ``docker``: the default ``pytest`` run deselects it; ``.ci/run`` runs it on its own with
RINGLAB_REQUIRE_DOCKER=1, where a machine that cannot run an engine is a failure, not a skip.

The whole module runs once per compose implementation the deployment must work with: Debian's
``docker-compose`` 1.29 and ``docker compose`` v2 (scripts/docker-engine installs both).

Knobs (environment): RINGLAB_COMPOSE (one compose command to use instead of both, e.g.
``docker compose``), RINGLAB_E2E_MIX (the guest replicas' mix), RINGLAB_E2E_SLICE (the slice).
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from ringlab.guestos.build import WORKLOADS
from ringlab.v1 import hypervisor_pb2, hypervisor_pb2_grpc

from .conftest import Timings

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
REDIS_IMAGE = "ringlab-redis:bookworm"
PROMETHEUS_IMAGE = "ringlab-prometheus:bookworm"
APP_IMAGE = "ringlab:e2e"
# Replicas take these in turn (TECHNIQUE:KERNEL:WORKLOAD); the test adds one VM per technique.
GUEST_MIX = os.environ.get("RINGLAB_E2E_MIX", "pv:paravirt:compute,bt:stock:multi,hw:stock:syscall")
ADDED_VMS = {f"e2e-{t}": t for t in ("native", "trap-emulate", "bt", "pv", "hw")}
ADDED_WORKLOAD = "compute"
# The client script from examples/ (stubs, no CLI) and the techniques it creates VMs under.
EXAMPLE = REPO / "examples" / "create_vms.py"
EXAMPLE_TECHNIQUES = ("native", "trap-emulate", "bt", "hw")
# A short slice: more world switches, so the VMs are still running when the cpu is killed.
SLICE = os.environ.get("RINGLAB_E2E_SLICE", "2000")
ENDED = {"poweroff", "halted", "shutdown", "limit", "stopped"}
STATUS_NAMES = {7: "poweroff", 8: "halted", 9: "shutdown", 10: "limit", 6: "stopped"}

COMPOSE_COMMANDS = (
    [os.environ["RINGLAB_COMPOSE"]]
    if os.environ.get("RINGLAB_COMPOSE")
    else ["docker-compose", "docker compose"]
)
HEALTH_TIMEOUT = 300.0
RUN_TIMEOUT = 300.0
GUESTS = 3
# redis, cpu, hypervisor, the guests and prometheus (the one-shot secrets service aside).
LONG_RUNNING = 1 + 1 + 1 + GUESTS + 1
SCRAPE_TIMEOUT = 120.0


def _unavailable(reason: str) -> None:
    """No engine here: a skip that says why, or a failure where CI requires Docker."""
    if os.environ.get("RINGLAB_REQUIRE_DOCKER") == "1":
        pytest.fail(f"RINGLAB_REQUIRE_DOCKER=1 but {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _host_env() -> dict[str, str]:
    """The environment for Docker's command-line tools: without the project's venv, because
    Debian's docker-compose 1.29 must run on Debian's own Python packages."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    venv = os.environ.get("VIRTUAL_ENV")
    if venv:
        env["PATH"] = os.pathsep.join(
            p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(venv)
        )
    return env


def _run(cmd: list[str], *, env: dict[str, str] | None = None, timeout: float = 900) -> str:
    done = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise AssertionError(
            f"{shlex.join(cmd)} exited {done.returncode}\n--- stdout\n{done.stdout[-3000:]}"
            f"\n--- stderr\n{done.stderr[-3000:]}"
        )
    return done.stdout


class Deployment:
    """One compose project, named for this test run, and how to talk to it."""

    def __init__(self, timings: Timings, compose: str) -> None:
        self.timings = timings
        self.compose_cmd = shlex.split(compose)
        self.project = f"ringlab-e2e-{os.getpid()}-{'-'.join(self.compose_cmd)}"
        self.port = _free_port()
        self.prometheus_port = _free_port()
        self.env = _host_env() | {
            "REDIS_IMAGE": REDIS_IMAGE,
            "RINGLAB_IMAGE": APP_IMAGE,
            "PROMETHEUS_IMAGE": PROMETHEUS_IMAGE,
            # Every compose command (up, ps, logs, down) sees the profile's service.
            "COMPOSE_PROFILES": "metrics",
            # docker-compose 1.29 gives up on an engine call after 60 s; creating a container with
            # the vfs driver (a full copy of the image's root) on a busy machine can take longer.
            "COMPOSE_HTTP_TIMEOUT": "300",
            "RINGLAB_PROMETHEUS_PORT": str(self.prometheus_port),
            "RINGLAB_PORT": str(self.port),
            "RINGLAB_MIX": GUEST_MIX,
            "RINGLAB_SLICE": SLICE,
            "RINGLAB_TOKEN": "",
        }
        self.target = f"127.0.0.1:{self.port}"
        self._channel: grpc.Channel | None = None

    def compose(self, *args: str, timeout: float = 900) -> str:
        cmd = [*self.compose_cmd, "-p", self.project, "-f", str(COMPOSE_FILE), *args]
        return _run(cmd, env=self.env, timeout=timeout)

    def container_ids(self, service: str | None = None) -> list[str]:
        out = self.compose("ps", "-q", *([service] if service else []))
        return out.split()

    def health(self) -> dict[str, str]:
        """Each container's health, or its state (and exit code) when it has no health check."""
        ids = self.container_ids()
        if not ids:
            return {}
        fmt = (
            "{{.Name}} {{if .State.Health}}{{.State.Health.Status}}"
            "{{else}}{{.State.Status}} {{.State.ExitCode}}{{end}}"
        )
        out = _run(["docker", "inspect", "-f", fmt, *ids], env=self.env)
        return dict(line.split(" ", 1) for line in out.splitlines() if line.strip())

    def wait_healthy(self, expected: int) -> None:
        """``expected`` long-running containers healthy, and the one-shot ``secrets`` service
        (it writes each role's credentials, then exits) done with status 0."""
        deadline = time.monotonic() + HEALTH_TIMEOUT
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = self.health()
            one_shot = {n: s for n, s in states.items() if "secrets" in n}
            services = {n: s for n, s in states.items() if n not in one_shot}
            if list(one_shot.values()) not in ([], ["exited 0"]):
                if any(s.startswith("exited") for s in one_shot.values()):
                    break  # the secrets service failed: nothing else will start
            elif len(services) == expected and all(s == "healthy" for s in services.values()):
                return
            time.sleep(1)
        logs = self.compose("logs", "--tail", "30")
        raise AssertionError(
            f"not every container became healthy within {HEALTH_TIMEOUT:.0f}s: {states}\n{logs}"
        )

    @property
    def stub(self) -> hypervisor_pb2_grpc.HypervisorStub:
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.target)
        return hypervisor_pb2_grpc.HypervisorStub(self._channel)

    def ringlab(self, *args: str) -> str:
        """The ringlab CLI from the host, over the published port (a client as a person runs it)."""
        env = os.environ | {
            "RINGLAB_HYPERVISOR": self.target,
            "RINGLAB_COMPOSE_PROJECT": self.project,  # for --launcher docker
            "RINGLAB_IMAGE": APP_IMAGE,
        }
        return _run(["ringlab", *args], env=env, timeout=180)

    def vms(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = json.loads(self.ringlab("vm", "list", "--json"))
        return rows

    def console(self, name: str) -> bytes:
        chunks = self.stub.StreamConsole(
            hypervisor_pb2.StreamConsoleRequest(vm=name, follow=False), timeout=30
        )
        return b"".join(chunk.data for chunk in chunks)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()


@pytest.fixture(scope="module")
def engine(timings: Timings) -> None:
    """A Docker engine that answers (scripts/docker-engine installs and starts one if it can)."""
    if os.geteuid() != 0 and subprocess.run(["docker", "info"], capture_output=True, check=False).returncode:
        _unavailable("no Docker engine answers and starting one needs root")
    done = subprocess.run(
        [str(REPO / "scripts" / "docker-engine"), "start"], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        _unavailable(f"no Docker engine could be started here: {done.stderr.strip()[-2000:]}")
    timings.mark("engine")


@pytest.fixture(scope="module")
def images(engine: None, timings: Timings) -> None:
    """The base, Redis, Prometheus and Ringlab images, built locally (cached base images are
    reused)."""
    done = subprocess.run(
        [str(REPO / "scripts" / "docker-images")],
        cwd=REPO,
        env=_host_env()
        | {"REDIS_IMAGE": REDIS_IMAGE, "RINGLAB_IMAGE": APP_IMAGE, "PROMETHEUS_IMAGE": PROMETHEUS_IMAGE},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert done.returncode == 0, f"scripts/docker-images failed:\n{done.stderr[-4000:]}"
    # Its own per-phase lines ("phase debootstrap 43.8s") go into the report too.
    for line in done.stderr.splitlines():
        if " phase " in f" {line}":
            name, seconds = line.split("phase", 1)[1].split()
            timings.add(f"  {name}", float(seconds.rstrip("s")))
    timings.mark("images")


def _remove_stale_projects(d: Deployment) -> None:
    """Containers, networks and volumes of earlier runs of this test that were stopped before
    their teardown (a killed CI job): with the vfs driver each container is a full copy."""
    fmt = '{{.Label "com.docker.compose.project"}}'
    out = _run(
        ["docker", "ps", "-a", "--filter", "label=com.docker.compose.project", "--format", fmt], env=d.env
    )
    for project in sorted({p for p in out.split() if p.startswith("ringlab-e2e-") and p != d.project}):
        stale = _run(
            ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"], env=d.env
        )
        subprocess.run(["docker", "rm", "-f", *stale.split()], env=d.env, capture_output=True, check=False)
        for kind in ("network", "volume"):
            names = _run(
                ["docker", kind, "ls", "-q", "--filter", f"label=com.docker.compose.project={project}"],
                env=d.env,
            )
            if names.split():
                subprocess.run(
                    ["docker", kind, "rm", *names.split()], env=d.env, capture_output=True, check=False
                )


@pytest.fixture(scope="module", params=COMPOSE_COMMANDS)
def deployment(images: None, timings: Timings, request: pytest.FixtureRequest) -> Iterator[Deployment]:
    compose: str = request.param
    probe = subprocess.run([*shlex.split(compose), "version"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        _unavailable(
            f"{compose!r} does not run here ({probe.stderr.strip()[-200:]}): scripts/docker-engine installs it"
        )
    d = Deployment(timings, compose)
    _remove_stale_projects(d)
    try:
        d.compose("up", "-d", "--scale", f"guest={GUESTS}", timeout=900)
        timings.mark("compose-up")
        d.wait_healthy(expected=LONG_RUNNING)
        timings.mark("healthy")
        yield d
    finally:
        d.close()
        # Always: containers (launched guests too: they carry the project's labels), the network,
        # and Redis' volume. Whatever `down` missed is removed by label, then reported. (Launched
        # guests are one-off containers, as `docker compose run`'s are: v2 removes those only with
        # --remove-orphans, which 1.29 accepts too.)
        down_error = ""
        try:
            d.compose("down", "-v", "--remove-orphans", "-t", "5", timeout=300)
        except AssertionError as err:
            down_error = str(err)
        timings.mark("down")
        project_label = f"label=com.docker.compose.project={d.project}"
        left = _run(["docker", "ps", "-aq", "--filter", project_label], env=d.env).split()
        if left:
            subprocess.run(["docker", "rm", "-f", *left], env=d.env, capture_output=True, check=False)
            d.compose("down", "-v", "--remove-orphans", "-t", "5", timeout=300)
        assert not down_error, down_error
        assert not left, f"docker compose down left containers of the project behind: {left}"


def _wait_ended(d: Deployment, names: set[str]) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + RUN_TIMEOUT
    rows: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        rows = {r["name"]: r for r in d.vms() if r["name"] in names}
        if len(rows) == len(names) and all(r["status"] in ENDED for r in rows.values()):
            return rows
        time.sleep(0.5)
    raise AssertionError(
        f"VMs did not all end within {RUN_TIMEOUT:.0f}s: {rows}\n{d.compose('logs', '--tail', '40')}"
    )


def test_compose_deployment_survives_a_cpu_kill(deployment: Deployment, timings: Timings) -> None:
    d = deployment
    guests = {r["name"]: r for r in d.vms() if r["name"].startswith("guest-")}
    assert len(guests) == GUESTS, f"{GUESTS} guest replicas, {GUESTS} VMs: {guests}"

    # The client adds one VM per technique, all contending with the guests' VMs for the pCPU. The
    # cpu is stopped while they are created, so that they all start together when it comes back
    # and the kill below lands while they run.
    [cpu] = d.container_ids("cpu")
    d.compose("stop", "-t", "10", "cpu")
    for name, technique in ADDED_VMS.items():
        d.ringlab("vm", "create", name, "--technique", technique, "--workload", ADDED_WORKLOAD, "--start")
    names = set(guests) | set(ADDED_VMS)
    workloads = {name: ADDED_WORKLOAD for name in ADDED_VMS} | {n: r["workload"] for n, r in guests.items()}
    # And the teacher's example client, as written for the classroom: it creates a VM under each
    # technique with the generated stubs and waits for them all (through the kill below).
    example = subprocess.Popen(
        [sys.executable, str(EXAMPLE), d.target], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not {f"example-{t}" for t in EXAMPLE_TECHNIQUES} <= {
            r["name"] for r in d.vms()
        }:
            time.sleep(0.5)
    except BaseException:
        example.kill()
        raise
    names |= {f"example-{t}" for t in EXAMPLE_TECHNIQUES}
    workloads |= {f"example-{t}": "hello" for t in EXAMPLE_TECHNIQUES}
    d.compose("start", "cpu")

    # Mid-run: one of the client's VMs has retired instructions and has not ended yet. Polled
    # through the stubs, not the CLI: a CLI start takes longer than the window.
    deadline = time.monotonic() + RUN_TIMEOUT
    mid_run: list[str] = []
    while time.monotonic() < deadline and not mid_run:
        now = [
            vm
            for vm in d.stub.ListVms(hypervisor_pb2.ListVmsRequest(), timeout=10).vms
            if vm.name in ADDED_VMS
        ]
        if any(vm.stats.guest.retired > 0 for vm in now):
            mid_run = [vm.name for vm in now if STATUS_NAMES.get(vm.status) not in ENDED]
            if not mid_run:
                break
        time.sleep(0.05)
    assert mid_run, "every VM ended before the cpu could be killed mid-run: lengthen the runs"
    _run(["docker", "kill", "--signal", "KILL", cpu], env=d.env)
    timings.mark("run-to-kill")
    time.sleep(2)
    # The restart policy may already have brought it back; `start` is a no-op then.
    d.compose("start", "cpu")

    ended = _wait_ended(d, names)
    timings.mark("run-after-kill")
    output, _ = example.communicate(timeout=120)
    assert example.returncode == 0, f"{EXAMPLE.name} failed:\n{output.decode(errors='replace')}"
    failures = []
    for name in sorted(names):
        console = d.console(name)
        if ended[name]["status"] != "poweroff" or not WORKLOADS[workloads[name]].check_output(console):
            failures.append(f"{name} ({workloads[name]}): {ended[name]['status']} console={console!r}")
    assert not failures, "VMs that did not finish as expected after the cpu kill (mid-run: " + (
        ", ".join(mid_run) + "):\n" + "\n".join(failures)
    )
    # The cpu came back and says so.
    d.wait_healthy(expected=LONG_RUNNING)


def _prometheus(d: Deployment, path: str, **params: str) -> Any:
    """A call to Prometheus' HTTP API over its published port: the ``data`` of a success."""
    import urllib.parse
    import urllib.request

    url = f"http://127.0.0.1:{d.prometheus_port}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=10) as answer:
        body = json.loads(answer.read())
    assert body["status"] == "success", body
    return body["data"]


def test_prometheus_scrapes_every_service_and_counts_a_vms_exits(
    deployment: Deployment, timings: Timings
) -> None:
    """The `metrics` profile's Prometheus (deploy/prometheus.yml) finds every service, the scaled
    guests by DNS, and scrapes them all; the exits it holds for a VM that ran are that VM's
    statistics from the API, reason by reason."""
    d = deployment
    d.ringlab(
        "vm", "create", "e2e-metrics", "--technique", "trap-emulate", "--workload", "syscall", "--start"
    )
    ended = _wait_ended(d, {"e2e-metrics"})
    assert ended["e2e-metrics"]["status"] == "poweroff", ended
    expected = {k: v for k, v in ended["e2e-metrics"]["exits_by_reason"].items() if v}
    assert expected, ended

    # Every target, by job: one hypervisor, one cpu, each guest replica, Prometheus itself; all up.
    want = {"hypervisor": 1, "cpu": 1, "guest": GUESTS, "prometheus": 1}
    deadline = time.monotonic() + SCRAPE_TIMEOUT
    jobs: dict[str, list[str]] = {}
    while time.monotonic() < deadline:
        active = _prometheus(d, "/api/v1/targets", state="active")["activeTargets"]
        jobs = {}
        for target in active:
            jobs.setdefault(target["labels"]["job"], []).append(target["health"])
        if {job: len(h) for job, h in jobs.items()} == want and all(
            h == "up" for health in jobs.values() for h in health
        ):
            break
        time.sleep(1)
    else:
        raise AssertionError(f"Prometheus' targets (job: health of each) never all up as {want}: {jobs}")

    # The VM's exits by reason, as Prometheus scraped them from the hypervisor.
    query = 'ringlab_vm_exits_total{vm="e2e-metrics"}'
    scraped: dict[str, float] = {}
    deadline = time.monotonic() + SCRAPE_TIMEOUT
    while time.monotonic() < deadline:
        result = _prometheus(d, "/api/v1/query", query=query)
        assert result["resultType"] == "vector", result
        scraped = {r["metric"]["reason"]: float(r["value"][1]) for r in result["result"]}
        if scraped == {k: float(v) for k, v in expected.items()}:
            break
        time.sleep(1)
    else:
        raise AssertionError(f"{query}: Prometheus has {scraped}, the VM's statistics say {expected}")
    assert all(value > 0 for value in scraped.values()), scraped
    assert {r["metric"]["technique"] for r in result["result"]} == {"trap-emulate"}, result
    timings.mark("prometheus")


def test_docker_launcher_starts_a_guest_container_that_down_removes(
    deployment: Deployment, timings: Timings
) -> None:
    """`ringlab vm create --launcher docker` starts a guest container through the Docker SDK that
    owns its VM; `vm destroy` removes it; one left running is removed by `docker compose down
    --remove-orphans` as a `docker compose run` container is (the deployment fixture fails if
    anything of the project is left)."""
    from ringlab.cli.launch import DockerLauncher

    d = deployment
    d.ringlab(
        "vm", "create", "e2e-launched", "--technique", "hw", "--workload", "hello", "--launcher", "docker"
    )
    launcher = DockerLauncher(image=APP_IMAGE, project=d.project)
    [launched] = launcher.running()
    assert launched.name == "e2e-launched" and launched.detail.startswith(d.project)
    ended = _wait_ended(d, {"e2e-launched"})
    assert ended["e2e-launched"]["status"] == "poweroff"
    assert WORKLOADS["hello"].check_output(d.console("e2e-launched"))

    out = d.ringlab("vm", "destroy", "e2e-launched")
    assert f"removed the guest docker {launched.detail}" in out, out
    assert launcher.running() == []
    d.ringlab("vm", "create", "e2e-left", "--workload", "hello", "--launcher", "docker")
    # An image that is not there: a message that says so and what to do, and nothing started.
    missing = subprocess.run(
        ["ringlab", "vm", "create", "e2e-noimage", "--launcher", "docker", "--image", "ringlab:missing"],
        env=os.environ | {"RINGLAB_HYPERVISOR": d.target, "RINGLAB_COMPOSE_PROJECT": d.project},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode != 0
    assert "image 'ringlab:missing' is missing: build it" in missing.stderr, missing.stderr
    assert [item.name for item in launcher.running()] == ["e2e-left"]
    timings.mark("launcher")


def test_compose_chaos_trial_loses_nothing_committed(
    deployment: Deployment, timings: Timings, tmp_path: Path
) -> None:
    """`ringlab chaos run --compose` on the compose deployment, through the Docker SDK: VMs under
    every technique run while the cpu container is killed (and started again), Redis and the
    hypervisor are paused and the cpu is cut off the network for a while; `ringlab chaos check`
    (run by `chaos run` itself) must find every VM ended as in-process, no stale commit, nothing
    gone back. One trial: the compose deployment is slow to build, not to break."""
    d = deployment
    for technique in ("native", "trap-emulate", "bt", "pv", "hw"):
        d.ringlab(
            "vm", "create", f"chaos-{technique}", "--technique", technique, "--workload", "syscall",
            "-D", "ITERATIONS=300", "--start",
        )  # fmt: skip
    history = tmp_path / "chaos.jsonl"
    env = os.environ | {"RINGLAB_HYPERVISOR": d.target, "RINGLAB_COMPOSE_PROJECT": d.project}
    schedule = "0.5:kill:cpu,2:pause:redis:2,4.5:pause:hypervisor:1.5,6.5:partition:cpu:2"
    done = subprocess.run(
        ["ringlab", "chaos", "run", "--compose", d.project, "--schedule", schedule, "--history", str(history),
         "--timeout", str(RUN_TIMEOUT), "--json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT + 300, check=False,
    )  # fmt: skip
    timings.mark("chaos")
    assert done.stdout.strip(), f"ringlab chaos printed no verdict:\n{done.stderr[-3000:]}"
    verdict = json.loads(done.stdout.strip().splitlines()[-1])
    records = [json.loads(line) for line in history.read_text().splitlines()]
    faults = [(r["action"], r["kind"]) for r in records if r["type"] == "fault"]
    assert faults == [("kill", "cpu"), ("pause", "redis"), ("pause", "hypervisor"), ("partition", "cpu")], (
        faults
    )
    failed = {p["name"]: p["failures"][:5] for p in verdict["properties"] if not p["ok"]}
    assert done.returncode == 0 and not failed, f"chaos on compose failed: {failed}\n{done.stderr[-2000:]}"
    assert {r["name"] for r in records if r["type"] == "result"} >= {f"chaos-{t}" for t in ("native", "pv")}
