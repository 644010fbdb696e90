"""Traces across the services (issue 15, part 2): with ``RINGLAB_TRACING`` a world switch is one
OpenTelemetry trace from the hypervisor's slice through ``Cpu.RunVcpu`` on the pCPU to the commit
in Redis, the W3C trace context carried in the gRPC metadata; ``ringlab trace vm --spans`` puts the
spans in the flight recorder's Perfetto file.  Real processes (``LocalDeployment``: a real Redis,
the cpu and hypervisor services on loopback), nothing mocked.  Off by default: then no span file,
no interceptor, not even an import of OpenTelemetry."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ringlab.guestos.build import build_image
from ringlab.rpc import open_channel
from ringlab.rpc.convert import KERNELS, TECHNIQUES
from ringlab.rpc.local import LocalDeployment
from ringlab.v1 import hypervisor_pb2, hypervisor_pb2_grpc
from tests.services.conftest import unique

WAIT_FOR_SPANS = 60.0
"""How long a test waits for the services' batch threads to write the spans it looks for (they
write every 50 ms here: OTEL_BSP_SCHEDULE_DELAY)."""


@pytest.fixture
def traced_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """The services' environment for a traced deployment: spans exported every 50 ms, and no
    metrics port (two deployments of a test must not fight over one)."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.setenv("RINGLAB_METRICS_PORT", "off")
    for name in ("OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_TRACES_SAMPLER"):
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch


def run_vm(target: str, technique: str = "hw", workload: str = "hello") -> tuple[str, dict[str, Any]]:
    hv = hypervisor_pb2_grpc.HypervisorStub(open_channel(target, ""))
    kernel = "paravirt" if technique == "pv" else "stock"
    name = unique(f"otel-{technique}")
    hv.CreateVm(
        hypervisor_pb2.CreateVmRequest(
            name=name,
            technique=TECHNIQUES[technique],
            kernel=KERNELS[kernel],
            workload=workload,
            image=build_image(workload, kernel).to_bytes(),
            start=True,
        )
    )
    result = hv.WaitVm(hypervisor_pb2.WaitVmRequest(vm=name, timeout_seconds=120), timeout=150)
    return name, json.loads(result.result_json)


def spans_in(folder: Path) -> list[dict[str, Any]]:
    spans = []
    for path in folder.glob("*.jsonl"):
        text = path.read_text()
        complete = text[: text.rfind("\n") + 1]  # a line being written is read next time
        for line in complete.splitlines():
            if line.strip():
                spans.append(json.loads(line))
    return spans


def _whole_chain(spans: list[dict[str, Any]]) -> bool:
    """Whether the ``commit`` span of a VM's end (status poweroff) is written, and every span
    above it up to the slice: each process exports its spans in batches, on its own clock."""
    by_id = {s["span_id"]: s for s in spans}
    for s in spans:
        if s["name"] == "commit" and s["attributes"].get("ringlab.commit.status") == "poweroff":
            while s["parent_id"] is not None:
                if s["parent_id"] not in by_id:
                    return False
                s = by_id[s["parent_id"]]
            return True
    return False


def wait_for_commit_span(folder: Path) -> list[dict[str, Any]]:
    """The spans once the pCPU's ``commit`` span of a VM's end and its whole chain of parents,
    from the pCPU's and the hypervisor's span files, are written."""
    deadline = time.monotonic() + WAIT_FOR_SPANS
    while True:
        spans = spans_in(folder)
        if _whole_chain(spans):
            return spans
        assert time.monotonic() < deadline, (
            f"no whole commit chain in {sorted(p.name for p in folder.iterdir())}"
        )
        time.sleep(0.1)


def test_a_world_switch_is_one_trace_from_the_slice_to_the_commit_and_trace_vm_draws_it(
    traced_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    folder = tmp_path / "spans"
    traced_env.setenv("RINGLAB_TRACING", f"file:{folder}")
    with LocalDeployment.start(slice=50_000) as d:
        name, result = run_vm(d.hypervisor)
        assert result["exit"]["reason"] == "poweroff"
        spans = wait_for_commit_span(folder)
        out = tmp_path / "trace.json"
        p = subprocess.run(
            [sys.executable, "-m", "ringlab.cli", "trace", "vm", name, "--target", d.hypervisor,
             "--spans", str(folder), "-o", str(out), "--json"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert p.returncode == 0, p.stderr
        pids = {s.process.pid for s in d.services if s.kind in ("cpu", "hypervisor")}
    # One span file per service process.
    files = {p.name for p in folder.glob("*.jsonl")}
    assert files == {f"{s}-{pid}.jsonl" for s, pid in _service_pids(spans)} and len(files) == 2
    assert {pid for _s, pid in _service_pids(spans)} == pids

    # In the files: the VM's last slice, whose last world switch committed, is one trace.
    by_id = {s["span_id"]: s for s in spans}
    commit = next(
        s for s in spans if s["name"] == "commit" and s["attributes"]["ringlab.commit.status"] == "poweroff"
    )
    chain = [commit]
    while chain[-1]["parent_id"] is not None:
        chain.append(by_id[chain[-1]["parent_id"]])
    assert [(s["service"], s["name"], s["kind"]) for s in chain] == [
        ("cpu", "commit", "INTERNAL"),
        ("cpu", "/ringlab.v1.Cpu/RunVcpu", "SERVER"),
        ("hypervisor", "/ringlab.v1.Cpu/RunVcpu", "CLIENT"),
        ("hypervisor", "world switch", "INTERNAL"),
        ("hypervisor", "slice", "INTERNAL"),
    ]
    assert len({s["trace_id"] for s in chain}) == 1
    commit_attrs, slice_attrs = commit["attributes"], chain[-1]["attributes"]
    assert commit_attrs["ringlab.commit.outcome"] == "applied"
    assert (
        commit_attrs["ringlab.vm.id"]
        == slice_attrs["ringlab.vm.id"]
        == chain[3]["attributes"]["ringlab.vm.id"]
    )
    assert slice_attrs["ringlab.vm.name"] == name
    assert slice_attrs["ringlab.technique"] == "hw"
    assert slice_attrs["ringlab.slice.ended"] == "ended"
    assert slice_attrs["ringlab.slice.number"] >= 1
    assert chain[3]["attributes"]["ringlab.switch.commits"] is True
    # Every world switch of the slice is its child, and each made one RunVcpu call to the pCPU.
    trace = [s for s in spans if s["trace_id"] == commit["trace_id"]]
    switches = [s for s in trace if s["name"] == "world switch"]
    assert len(switches) == slice_attrs["ringlab.slice.world_switches"]
    assert all(s["parent_id"] == chain[-1]["span_id"] for s in switches)
    servers = [s for s in trace if s["kind"] == "SERVER"]
    assert len(servers) == len(switches)
    assert {by_id[by_id[s["parent_id"]]["parent_id"]]["name"] for s in servers} == {"world switch"}
    runs = [s for s in trace if s["name"] == "core run"]
    assert sum(s["attributes"]["ringlab.retired"] for s in runs) == sum(
        s["attributes"]["ringlab.retired"] for s in switches
    )
    # (the slice's instructions are more: those its exits' handlers emulated on the hypervisor)
    assert (
        sum(s["attributes"]["ringlab.retired"] for s in switches) <= slice_attrs["ringlab.slice.instructions"]
    )
    reasons = [s["attributes"]["ringlab.exit.reason"] for s in switches]
    assert len([r for r in reasons if r != "budget"]) == slice_attrs["ringlab.slice.exits"] > 0

    # In the Perfetto file: the same spans, a track per service process, the links kept.
    doc = json.loads(p.stdout)
    assert doc["spans"] > 0
    events = json.loads(out.read_text())["traceEvents"]
    tracks = {e["pid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    drawn = [e for e in events if e.get("cat") == "span" and e["ph"] == "X"]
    assert len(drawn) == doc["spans"]
    in_file = {e["args"]["span_id"]: e for e in drawn}
    assert {s["span_id"] for s in chain} <= set(in_file)
    for span in chain:
        event = in_file[span["span_id"]]
        assert event["name"] == span["name"]
        assert event["args"]["trace_id"] == commit["trace_id"]
        assert event["args"]["parent_id"] == span["parent_id"]
        assert tracks[event["pid"]].startswith(f"{span['service']} ")
        assert tracks[event["pid"]].endswith(f"(pid {span['pid']})")
    client, server = in_file[chain[2]["span_id"]], in_file[chain[1]["span_id"]]
    assert server["args"]["parent_id"] == client["args"]["span_id"]
    assert client["pid"] != server["pid"]
    assert {tracks[e["pid"]] for e in drawn} == {
        tracks[in_file[chain[0]["span_id"]]["pid"]],
        tracks[in_file[chain[-1]["span_id"]]["pid"]],
    }
    flows = [e for e in events if e.get("cat") == "span" and e["ph"] in ("s", "f")]
    assert {(e["ph"], e["pid"]) for e in flows} >= {("s", client["pid"]), ("f", server["pid"])}
    # The flight recorder's tracks are there too.
    assert f"VM {name}" in tracks.values()


def _service_pids(spans: list[dict[str, Any]]) -> set[tuple[str, int]]:
    return {(s["service"], s["pid"]) for s in spans}


def test_with_tracing_off_no_span_file_is_written(traced_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Off (the default, and ``off``): a deployment that runs a VM writes no span anywhere, and
    ``ringlab trace vm`` adds none."""
    traced_env.delenv("RINGLAB_TRACING", raising=False)
    traced_env.chdir(tmp_path)
    with LocalDeployment.start(slice=50_000, state_dir=tmp_path / "state") as d:
        name, result = run_vm(d.hypervisor)
        assert result["exit"]["reason"] == "poweroff"
        p = subprocess.run(
            [sys.executable, "-m", "ringlab.cli", "trace", "vm", name, "--target", d.hypervisor,
             "-o", str(tmp_path / "trace.json"), "--json"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert p.returncode == 0, p.stderr
        assert "spans" not in json.loads(p.stdout)
    assert not list(tmp_path.rglob("*.jsonl"))
    events = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    assert not [e for e in events if e.get("cat") == "span"]


def test_a_flag_off_wins_over_the_environment_and_off_imports_nothing_of_opentelemetry(
    tmp_path: Path,
) -> None:
    """``--tracing off`` (a service's flag) wins over ``RINGLAB_TRACING``, and a service with
    tracing off has no tracer provider and has not imported the tracing SDK or the gRPC
    instrumentation (redis-py imports OpenTelemetry's API for its own opt-in metrics)."""
    code = (
        "import sys, argparse\n"
        "import ringlab_cpu.service, ringlab_hypervisor.service, ringlab_guest.service\n"
        "from ringlab.rpc.tracing import add_tracing_flag, configure_tracing\n"
        "p = argparse.ArgumentParser(); add_tracing_flag(p)\n"
        "TRACING = {'opentelemetry.sdk.trace', 'opentelemetry.instrumentation.grpc'}\n"
        "for argv in ([], ['--tracing', 'off']):\n"
        "    t = configure_tracing('cpu', p.parse_args(argv).tracing)\n"
        "    print(t.enabled, t.provider is None, sorted({m for m in sys.modules} & TRACING))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RINGLAB_TRACING"}
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["False True []", "False True []"]
    env["RINGLAB_TRACING"] = f"file:{tmp_path / 'spans'}"
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert p.returncode == 0, p.stderr
    first, second = p.stdout.splitlines()
    assert first == "True False ['opentelemetry.sdk.trace']"
    assert second.startswith("False True")  # the flag, off, over the environment
    assert len(list((tmp_path / "spans").iterdir())) == 1  # the first one's (empty) file, no other


@pytest.mark.parametrize("service", ["ringlab_cpu", "ringlab_hypervisor", "ringlab_guest"])
@pytest.mark.parametrize("how", ["flag", "env"])
def test_a_bad_tracing_setting_stops_a_service_at_start_in_one_line(service: str, how: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RINGLAB_TRACING"}
    args = [sys.executable, "-m", service, "--listen", "127.0.0.1:0"]
    if how == "flag":
        args += ["--tracing", "bogus"]
    else:
        env["RINGLAB_TRACING"] = "bogus"
    p = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    assert "RINGLAB_TRACING / --tracing 'bogus': expected off, otlp" in p.stderr
    assert "file:DIR" in p.stderr


def test_every_service_says_the_tracing_default_in_its_help() -> None:
    for service in ("ringlab_cpu", "ringlab_hypervisor", "ringlab_guest"):
        p = subprocess.run(
            [sys.executable, "-m", service, "--help"], capture_output=True, text=True, timeout=60, check=False
        )
        assert p.returncode == 0, p.stderr
        text = " ".join(p.stdout.split())
        assert "--tracing off|otlp|file:DIR" in text
        assert "(default: RINGLAB_TRACING, else off)" in text


def test_otlp_with_no_collector_listening_breaks_nothing_and_logs_no_traceback(
    traced_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``otlp`` with nothing at the endpoint: VMs run as ever; each service says at most once a
    minute that it cannot export, never with a traceback."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    traced_env.setenv("RINGLAB_TRACING", "otlp")
    traced_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    d = LocalDeployment.start(slice=50_000, state_dir=tmp_path / "state")
    try:
        for technique in ("hw", "bt"):
            _name, result = run_vm(d.hypervisor, technique)
            assert result["exit"]["reason"] == "poweroff"
        logs = dict(d.logs)
    finally:
        d.stop()
    assert {"cpu0", "hypervisor"} <= set(logs)
    for name in ("cpu0", "hypervisor"):
        text = logs[name].read_text()
        assert "tracing: spans of the" in text and "go to OTLP" in text
        assert "Traceback" not in text, text[-3000:]
        complaints = [line for line in text.splitlines() if "at most once a minute" in line]
        assert len(complaints) <= 1, complaints
