"""The demo's chart: a bar per slice and a tick per exit, the exits taken from the hypervisor's
flight recorder of a real run (Redis, the cpu and hypervisor services on loopback), and a subtitle
that says slices are measured in guest instructions. Nothing here depends on how fast it ran."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ringlab.cli.demo import (
    EXIT_CLASSES,
    _chart,
    _flight,
    _slices,
    chart_figure,
    chart_slices,
    exit_class,
    exit_marks,
)
from ringlab.rpc.convert import TECHNIQUES
from ringlab.store import LocalRedis
from ringlab.v1 import hypervisor_pb2
from tests.services.conftest import Deployment, start_deployment

RUNS = {
    "te-hello": ("trap-emulate", "hello"),
    "hw-syscall": ("hw", "syscall"),
    "native-hello": ("native", "hello"),
}


@pytest.fixture(scope="module")
def ran() -> Iterator[tuple[Deployment, dict[str, dict[str, int]]]]:
    """A deployment where three VMs ran to their end, and the exits each VM's statistics counted
    (``stats.guest.exits``: reason -> count, in its technique's terms) by VM name."""
    redis = LocalRedis.start()
    d = start_deployment(redis, slice=20_000)
    try:
        hv = d.hypervisor_stub()
        for name, (technique, workload) in RUNS.items():
            hv.CreateVm(
                hypervisor_pb2.CreateVmRequest(
                    name=name, technique=TECHNIQUES[technique], workload=workload, start=True
                ),
                timeout=60,
            )
        counted = {}
        for name in RUNS:
            done = hv.WaitVm(hypervisor_pb2.WaitVmRequest(vm=name, timeout_seconds=240), timeout=300)
            result = json.loads(done.result_json)
            assert result["exit"]["reason"] == "poweroff", result["exit"]
            counted[name] = result["stats"]["guest"]["exits"]
        yield d, counted
    finally:
        d.hypervisor.stop(1)
        d.cpu.stop(1)
        redis.stop()


def test_exit_marks_are_the_runs_exits_and_the_chart_draws_each_inside_its_vms_slices(
    ran: tuple[Deployment, dict[str, dict[str, int]]], tmp_path: Path
) -> None:
    d, counted = ran
    hv = d.hypervisor_stub()
    ids = {vm.name: vm.id for vm in hv.ListVms(hypervisor_pb2.ListVmsRequest(), timeout=10).vms}
    records = _flight(hv, list(ids.values()))
    events = _slices(hv)
    slices = chart_slices(events, records)
    exits = {vm: exit_marks(r) for vm, r in records.items()}
    # Every slice the scheduler reported is drawn, each VM's as many as it ran.
    for vm in ids.values():
        assert sum(1 for v, *_ in slices if v == vm) == sum(1 for v, *_ in events if v == vm) > 0
    # Every exit the statistics counted has its mark, of its reason's class (the flight recorder
    # kept every slice here).
    for name, vm in ids.items():
        want = sorted(exit_class(reason) for reason, n in counted[name].items() for _ in range(n))
        assert sorted(label for _t, label in exits[vm]) == want, name
    assert exits[ids["te-hello"]] and exits[ids["hw-syscall"]] and not exits[ids["native-hello"]]
    # trap-and-emulate's hello prints with `out`, which traps: I/O exits.
    assert "I/O" in {label for _t, label in exits[ids["te-hello"]]}

    fig = chart_figure(slices, {v: n for n, v in ids.items()}, exits)
    drawn: dict[str, int] = {}
    for collection in fig.axes[0].collections:
        gid = collection.get_gid() or ""
        if gid.startswith("exits "):
            vm = gid.split()[1]
            drawn[vm] = drawn.get(vm, 0) + len(np.asarray(collection.get_offsets()))
    assert drawn == {vm: len(marks) for vm, marks in exits.items() if marks}
    # Each tick lies inside one of its own VM's slices (the x axis: seconds since the first slice).
    t0 = min(s for _vm, _p, s, _e in slices)
    for vm, marks in exits.items():
        spans = [(s - t0, e - t0) for v, _p, s, e in slices if v == vm]
        outside = [t - t0 for t, _label in marks if not any(a <= t - t0 <= b for a, b in spans)]
        assert not outside, f"VM {vm}: exits outside its slices at {outside[:5]} (slices {spans[:5]})"
    # The subtitle says what a slice is; the legend names the exit classes drawn.
    ax = fig.axes[0]
    texts = " ".join([fig.get_suptitle(), ax.get_title(loc="left"), ax.get_title()])
    assert "guest instructions" in texts and "a tick per exit" in texts, texts
    legend = {t.get_text() for t in fig.legends[0].get_texts()}
    assert {f"exit: {label}" for ms in exits.values() for _t, label in ms} <= legend, legend
    out = tmp_path / "chart.png"
    _chart(slices, {v: n for n, v in ids.items()}, str(out), exits)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_exit_marks_keep_only_exits_and_class_every_reason() -> None:
    records = [
        {"kind": "slice", "slice": 1, "start_ns": 1_000_000_000},
        {"kind": "exit", "wall_ns": 1_500_000_000, "reason": "#GP (out)"},
        {"kind": "exit", "wall_ns": 2_000_000_000, "reason": "hypercall 1 (mmu_update)"},
    ]
    assert exit_marks(records) == [(1.5, "I/O"), (2.0, "page fault or page tables")]
    labels = [label for label, _colour, _pattern in EXIT_CLASSES]
    for reason, label in {
        "int 0x80": 0, "callout iret": 0, "HLT (12)": 0, "IO_INSTRUCTION (30)": 1, "callout out": 1,
        "hypercall 18 (console_io)": 1, "#PF": 2, "traced write": 2, "callout invlpg": 2, "#GP (cli)": 3,
        "callout int3": 3,
    }.items():  # fmt: skip
        assert exit_class(reason) == labels[label], reason


def test_a_chart_with_no_exit_recorded_says_so(tmp_path: Path) -> None:
    fig = chart_figure([("1", "pcpu0", 10.0, 10.5)], {"1": "native-hello"}, {"1": []})
    assert "no exit recorded" in {t.get_text() for t in fig.legends[0].get_texts()}
