"""The microbenchmark suite: Adams & Agesen's nanobenchmarks on the Ringlab guest OS, under
every technique, and ``tlbmiss`` for Bhargava et al.'s two-dimensional page walks.

Each benchmark is a guest workload run twice, with a small and a larger iteration count; the
difference divided by the difference in iterations is the cost of one iteration, with the boot
and the kernel's set-up cancelled out.  Simulated cycles come from the cost model
(``stats.guest.cycles``, each event priced in ``ringlab.vmm.costs`` under the chosen profile);
they are deterministic.  The host's time is CPU time (``time.process_time``, so a busy machine's
waiting is not counted): each run is repeated, the fastest of each count is taken, and the
per-iteration figure is given only when it exceeds the spread of the repeats (else None: the
noise would be the figure).  The timer stays on, as docs/design.md asks of every benchmark.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ringlab.guestos import KernelFlavour
from ringlab.machine.tlb import TlbGeometry
from ringlab.vmm import TechniqueName, default_kernel
from ringlab.vmm.costs import DEFAULT_PROFILE, cycles, profile

__all__ = ["BENCHMARKS", "COLUMNS", "REPEATS", "Benchmark", "Column", "micro_suite"]

REPEATS = 3
"""Runs of each count whose fastest CPU time is taken (``--repeats``)."""


@dataclass(frozen=True)
class Benchmark:
    name: str
    workload: str
    counts: tuple[int, int]
    """The two iteration counts whose difference is measured.  Both have as many digits: the
    workloads print their count, and natively every character is a device access the cost
    model prices (``device_io``), so one more digit would leak into the per-iteration figure."""
    knob: str = "ITERATIONS"
    fixed: Mapping[str, int] | None = None
    what: str = ""


@dataclass(frozen=True)
class Column:
    label: str
    technique: str
    nested_paging: bool = False
    kernel: str = KernelFlavour.STOCK.value


# BENCH_* operation numbers: src/ringlab/guestos/kernel/abi.s
BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("syscall", "syscall", (100, 300), what="getpid through int 0x80"),
    Benchmark(
        "in", "bench", (100, 300), fixed={"OP": 0}, what="in from the console's line status, in the kernel"
    ),
    Benchmark("cr8wr", "bench", (100, 300), fixed={"OP": 2}, what="mov cr8, r in the kernel"),
    Benchmark(
        "callret", "bench", (1000, 3000), fixed={"OP": 4}, what="call and ret of a leaf, in the kernel"
    ),
    Benchmark("pagefault", "pagefault", (10, 40), what="touch a fresh demand-zero page"),
    Benchmark(
        "tlbmiss",
        "tlbmiss",
        (10, 40),
        fixed={"PAGES": 128},
        what="a load from each of 128 pages, twice what the TLB holds: 128 walks",
    ),
    Benchmark("divzero", "divzero", (100, 300), what="divide by zero, caught by a user handler"),
    Benchmark("ptemod", "bench", (100, 300), fixed={"OP": 3}, what="a PTE write and invlpg, in the kernel"),
    Benchmark("spawnwait", "spawnwait", (2, 8), what="spawn a child and wait for it"),
    Benchmark("compute", "compute", (1, 3), knob="ROUNDS", what="FNV-1a over 4 KiB, one round"),
)

COLUMNS: tuple[Column, ...] = (
    *(Column(t.value, t.value, kernel=default_kernel(t)) for t in TechniqueName),
    Column("hw+np", TechniqueName.HW.value, nested_paging=True, kernel=default_kernel(TechniqueName.HW)),
)
"""Every technique under its default kernel (``vmm.default_kernel``), and hw with nested paging."""

Runner = Callable[..., Any]


def _default_runner() -> Runner:
    """``ringlab.vmm.run_vm`` where the techniques are built, else native only."""
    try:
        from ringlab.vmm import run_vm
    except ImportError:
        from ringlab.machine import run_image

        def native_only(image: Any, *, technique: str, nested_paging: bool = False, **kw: Any) -> Any:
            if technique != TechniqueName.NATIVE:
                raise NotImplementedError(technique)
            return run_image(image, **kw)

        return native_only
    return run_vm


@dataclass(frozen=True)
class Setup:
    """How every cell is run: the cost profile, the TLB's size and the CPU-time repeats."""

    profile: str = DEFAULT_PROFILE
    tlb: TlbGeometry | None = None
    """None: the core's default (``machine.tlb``)."""
    repeats: int = REPEATS


def _measure(
    bench: Benchmark, col: Column, n: int, runner: Runner, setup: Setup
) -> tuple[dict[str, Any], list[float]]:
    """The run's counts (``stats.guest``, its cycles under ``setup.profile``, and the page walks)
    and the CPU seconds of each of ``setup.repeats`` runs."""
    from ringlab.guestos.build import WORKLOADS, build_image

    defines = dict(bench.fixed or {})
    defines[bench.knob] = n
    image = build_image(bench.workload, col.kernel, defines)
    kw: dict[str, Any] = {"tlb": setup.tlb} if setup.tlb is not None else {}
    times = []
    result: Any = None
    for _ in range(max(1, setup.repeats)):
        start = time.process_time()
        result = runner(image, technique=col.technique, nested_paging=col.nested_paging, **kw)
        times.append(time.process_time() - start)
    doc: dict[str, Any] = result.to_json()
    if doc["exit"]["reason"] != "poweroff" or not WORKLOADS[bench.workload].check_output(
        result.console, defines
    ):
        raise _Incomplete(f"{doc['exit']['reason']}: {doc['exit']['detail']}")
    counts = dict(doc["stats"]["guest"])
    if hasattr(result, "counters"):  # a VM's result: price it under the chosen profile
        counts["cycles"] = cycles(result.technique, result.stats, result.counters, setup.profile)
    host = doc["stats"]["host"]
    counts.update({k: host[k] for k in ("tlb_misses", "walk_references") if k in host})
    return counts, times


class _Incomplete(Exception):
    """The workload did not finish with its expected output under this technique."""


def _flatten(prefix: str, value: Any, out: dict[str, float]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        out[prefix] = float(value)


def _per_iteration(lo: Mapping[str, Any], hi: Mapping[str, Any], dn: int) -> dict[str, float]:
    a: dict[str, float] = {}
    b: dict[str, float] = {}
    _flatten("", lo, a)
    _flatten("", hi, b)
    return {k: (b[k] - a.get(k, 0.0)) / dn for k in b if b[k] != a.get(k, 0.0)}


def cpu_per_iteration(lo: Sequence[float], hi: Sequence[float], dn: int) -> tuple[float | None, float]:
    """(microseconds of CPU per iteration, or None when the repeats' spread is as large; the
    spread per iteration): the fastest run of each count, whose difference is the figure."""
    figure = (min(hi) - min(lo)) / dn * 1e6
    spread = ((max(hi) - min(hi)) + (max(lo) - min(lo))) / dn * 1e6
    if figure <= 0 or (len(lo) > 1 and figure <= spread):
        return None, spread
    return figure, spread


def run_one(bench: Benchmark, col: Column, runner: Runner, setup: Setup | None = None) -> dict[str, Any]:
    """One cell of the table: per-iteration cycles, CPU time and event counts."""
    setup = setup or Setup()
    n1, n2 = bench.counts
    lo, times1 = _measure(bench, col, n1, runner, setup)
    hi, times2 = _measure(bench, col, n2, runner, setup)
    events = _per_iteration(lo, hi, n2 - n1)
    simulated = events.pop("cycles", events.get("retired", 0.0))
    cpu, spread = cpu_per_iteration(times1, times2, n2 - n1)
    return {
        "iterations": n2 - n1,
        "cycles_per_iter": simulated,
        "cpu_us_per_iter": None if cpu is None else round(cpu, 3),
        "cpu_spread_us_per_iter": round(spread, 3),
        "events": {k: round(v, 3) for k, v in sorted(events.items()) if k != "virtual_time"},
    }


def micro_suite(
    benchmarks: Sequence[Benchmark] = BENCHMARKS,
    columns: Sequence[Column] = COLUMNS,
    runner: Runner | None = None,
    progress: Callable[[str], None] | None = None,
    setup: Setup | None = None,
    paper: bool = False,
) -> dict[str, Any]:
    """``{"profile": ..., "tlb": ..., "cpu_time": ..., "benchmarks": {NAME: {TECHNIQUE: cell}},
    "skipped": {NAME: {TECHNIQUE: why}}}``, and with ``paper`` a ``paper`` object per benchmark
    the papers measured (``paper.py``: the published figures, the source, the software/hardware
    ratio in the paper and in Ringlab).  A technique under which a workload does not complete
    (trap-emulate, typically) is left out of ``benchmarks`` and says why under ``skipped``."""
    setup = setup or Setup()
    profile(setup.profile)  # an unknown name fails before anything runs
    run = runner or _default_runner()
    table: dict[str, dict[str, Any]] = {}
    skipped: dict[str, dict[str, str]] = {}
    for bench in benchmarks:
        for col in columns:
            if progress:
                progress(f"{bench.name} under {col.label}")
            try:
                table.setdefault(bench.name, {})[col.label] = run_one(bench, col, run, setup)
            except (_Incomplete, NotImplementedError) as exc:
                skipped.setdefault(bench.name, {})[col.label] = str(exc) or "not available"
    out: dict[str, Any] = {
        "profile": setup.profile,
        "tlb": str(setup.tlb or TlbGeometry()),
        "cpu_time": {
            "repeats": setup.repeats,
            "how": "time.process_time, fastest of the repeats per count; None where the repeats' "
            "spread is as large as the figure",
        },
        "benchmarks": table,
        "skipped": skipped,
    }
    if paper:
        out["paper"] = paper_comparison(table)
    return out


def paper_comparison(table: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Per benchmark with published figures: them, and the same ratio in Ringlab's cells."""
    from ringlab.cli.bench.paper import PAPER, Published

    out: dict[str, Any] = {}
    for name, row in table.items():
        published = PAPER.get(name)
        if published is None:
            continue
        doc = published.to_json()
        if isinstance(published, Published):
            sw, hw = (row.get(published.columns[k]) for k in (1, 2))
            if sw is not None and hw is not None and hw["cycles_per_iter"] > 0:
                doc["ringlab_sw_hw_ratio"] = round(sw["cycles_per_iter"] / hw["cycles_per_iter"], 4)
        else:
            shadow, nested = row.get("hw"), row.get("hw+np")
            if shadow is not None and nested is not None:
                walks = (
                    nested["events"].get("walk_references", 0.0),
                    shadow["events"].get("walk_references", 0.0),
                )
                if walks[1] > 0:
                    doc["ringlab_nested_over_shadow_walk_references"] = round(walks[0] / walks[1], 4)
                if shadow["cycles_per_iter"] > 0:
                    doc["ringlab_nested_over_shadow_cycles"] = round(
                        nested["cycles_per_iter"] / shadow["cycles_per_iter"], 4
                    )
        out[name] = doc
    return out


def dominant_events(cell: Mapping[str, Any], n: int = 2) -> str:
    """The costliest-looking events of a cell, for the table."""
    skip = ("retired", "retired_by_ring", "virtual_time")
    events = {k: v for k, v in cell["events"].items() if not k.startswith(skip) and v > 0}
    top = sorted(events.items(), key=lambda kv: -kv[1])[:n]
    return ", ".join(f"{_event_label(k)} {v:g}" for k, v in top)


def _event_label(key: str) -> str:
    """``exceptions.14`` -> ``vector 14``; ``vm_exits.HLT (12)`` -> ``HLT (12)``; ``traps.in`` ->
    ``traps in``."""
    group, _, name = key.rpartition(".")
    if group == "exceptions":
        return f"vector {name}"
    if group in ("vm_exits", "hypercalls"):
        return name
    return f"{group} {name}" if group else name


def plot(figures: Mapping[str, Any], path: str) -> None:
    """A grouped bar chart (log scale) of cycles per iteration: one group per benchmark."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = figures["benchmarks"]
    names = list(table)
    labels = [c.label for c in COLUMNS if any(c.label in table[b] for b in names)]
    width = 0.8 / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(11, 5))
    for i, label in enumerate(labels):
        xs = [j + i * width for j, b in enumerate(names) if label in table[b]]
        ys = [max(table[b][label]["cycles_per_iter"], 1.0) for b in names if label in table[b]]
        ax.bar(xs, ys, width, label=label)
    ax.set_xticks([j + width * (len(labels) - 1) / 2 for j in range(len(names))], names)
    ax.set_yscale("log")
    ax.set_ylabel("simulated cycles per iteration (log)")
    ax.set_title("Ringlab: what each virtualization technique costs (cost model: ASPLOS 2006, SOSP 2003)")
    ax.legend(ncols=len(labels), fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
