"""``ringlab demo``: several VMs under every technique contending for one pCPU, through the
real services.

It starts a real Redis, one cpu service (one pCPU) and the hypervisor on loopback, creates one VM
per (technique, workload) pair of ``DEMO_VMS`` with the kernel flavour each technique needs, shows
their progress while the credit scheduler shares the pCPU among them, prints a table of what
happened, draws which VM held the pCPU over time (a bar per slice, a tick per exit, from the
hypervisor's flight recorder), and shuts everything down.
"""

from __future__ import annotations

import argparse
import json
import re
import textwrap
import time
from typing import TYPE_CHECKING, Any

from ringlab.sched.credit import TERMINAL
from ringlab.vmm import TechniqueName, default_kernel

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from rich.console import Console
    from rich.table import Table

__all__ = [
    "CHART",
    "DEMO_VMS",
    "EXIT_CLASSES",
    "chart_figure",
    "chart_slices",
    "exit_class",
    "exit_marks",
    "run_demo",
    "slice_spans",
]

DEMO_VMS: tuple[tuple[str, str], ...] = (
    (TechniqueName.NATIVE.value, "hello"),
    (TechniqueName.NATIVE.value, "compute"),
    (TechniqueName.TRAP_EMULATE.value, "hello"),
    (TechniqueName.TRAP_EMULATE.value, "syscall"),
    (TechniqueName.BT.value, "compute"),
    (TechniqueName.BT.value, "spawnwait"),
    (TechniqueName.PV.value, "hello"),
    (TechniqueName.PV.value, "compute"),
    (TechniqueName.HW.value, "syscall"),
    (TechniqueName.HW.value, "multi"),
)
"""(technique, workload): every technique, a mix of workloads."""
CHART = "ringlab-demo-pcpu.png"
SLICE_INSTRUCTIONS = 100_000
"""The demo's slice, in guest instructions: short, so that the chart shows the VMs taking turns
even though the techniques that exit often (every exit is a world switch to the hypervisor) run
slower."""

EXIT_CLASSES: tuple[tuple[str, str, re.Pattern[str]], ...] = (
    (
        "system call, interrupt or halt",
        "#111111",
        re.compile(r"^int 0x|iret|INTERRUPT|^HLT|sched_op|set_timer"),
    ),
    ("I/O", "#c2185b", re.compile(r"\((out|in)\)$|^callout (out|in)$|IO_INSTRUCTION|console_io")),
    (
        "page fault or page tables",
        "#1565c0",
        re.compile(r"#PF|traced write|mmu|invlpg|INVLPG|EPT_|CR_ACCESS"),
    ),
    ("other privileged instruction or exception", "#e65100", re.compile(r"")),
)
"""The exit classes the chart colours its ticks by: (label, colour, a pattern of the reasons in
each technique's own terms, as the flight recorder names them: ``int 0x80``, ``#GP (out)``,
``callout iret``, ``hypercall 18 (console_io)``, ``IO_INSTRUCTION (30)``, ...).  The first class
whose pattern matches wins; the last matches everything."""


def run_demo(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from ringlab.cli.deployment import vm_row
    from ringlab.cli.termout import fit_table, spinner, stdout_console
    from ringlab.guestos.build import build_image
    from ringlab.rpc import open_channel
    from ringlab.rpc.convert import KERNELS, TECHNIQUES
    from ringlab.rpc.local import LocalDeployment
    from ringlab.v1 import hypervisor_pb2, hypervisor_pb2_grpc

    console = stdout_console()
    chart = getattr(args, "chart", None) or CHART
    console.print(
        "[bold]Ringlab demo[/]: starting Redis, one pCPU (cpu service) and the hypervisor on loopback ..."
    )
    started = time.monotonic()
    with spinner("starting Redis, the cpu service and the hypervisor", delay=0.3):
        deployment = LocalDeployment.start(pcpus=1, slice=SLICE_INSTRUCTIONS)
    with deployment as d:
        hv = hypervisor_pb2_grpc.HypervisorStub(open_channel(d.hypervisor))
        skipped: list[str] = []
        names: list[str] = []
        with spinner(f"building {len(DEMO_VMS)} guest images and creating their VMs", delay=0.3):
            for technique, workload in DEMO_VMS:
                kernel = default_kernel(technique)
                try:
                    image = build_image(workload, kernel)
                except Exception as exc:  # e.g. the paravirt kernel before the pv technique lands
                    skipped.append(f"{technique}/{workload}: {exc}")
                    continue
                name = f"{technique}-{workload}"
                hv.CreateVm(
                    hypervisor_pb2.CreateVmRequest(
                        name=name,
                        technique=TECHNIQUES[technique],
                        kernel=KERNELS[kernel],
                        workload=workload,
                        image=image.to_bytes(),
                        start=False,
                    ),
                    timeout=30,
                )
                names.append(name)
        for name in names:  # start them together so they contend from the first slice
            hv.StartVm(hypervisor_pb2.VmRef(vm=name), timeout=10)
        console.print(f"{len(names)} VMs contend for pcpu0 (credit scheduler, equal weights)")
        rows = _watch(console, hv, names)
        stats = hv.GetStats(hypervisor_pb2.GetStatsRequest(), timeout=10)
        records = _flight(hv, [vm.id for vm in stats.vms])
        slices = chart_slices(_slices(hv), records)
        exits = {vm: exit_marks(r) for vm, r in records.items()}
        by_id = {vm.id: vm.name for vm in stats.vms}
        console.print(fit_table(_table([vm_row(vm) for vm in stats.vms], console)))
        for p in stats.pcpus:
            overhead = p.scheduler_seconds / p.busy_seconds * 100 if p.busy_seconds else 0.0
            console.print(
                f"{p.pcpu}: {p.slices:,} slices, {p.world_switches:,} world switches, busy {p.busy_seconds:.2f} s, "
                f"scheduler {p.scheduler_seconds * 1000:.1f} ms ({overhead:.2f}% of busy time)"
            )
        for line in skipped:
            console.print(f"[yellow]skipped[/] {escape(line)}")
        with spinner("drawing the chart", delay=0.5):
            _chart(slices, by_id, chart, exits)
        marks = sum(len(m) for m in exits.values())
        console.print(f"chart of who held the pCPU over time, with its {marks:,} recorded exits: {chart}")
        del rows
    console.print(f"everything shut down; the demo took {time.monotonic() - started:.1f} s")
    console.print("Next: 'ringlab up', then 'ringlab vm create NAME --technique bt --start', 'ringlab top'.")
    return 0


WIDE_COLUMNS = ("VM", "technique", "kernel", "workload", "result", "CPU share", "exits", "simulated cycles")
NARROW_COLUMNS = ("VM", "kernel", "result", "CPU share", "exits", "simulated\ncycles")
"""On a narrow terminal: the VM's name says its technique and workload already."""


def _table(rows: list[dict[str, Any]], console: Console) -> Table:
    """What each VM did; without the technique and workload columns when the whole table does
    not fit the console (a terminal of 80 columns)."""
    from rich import box
    from rich.table import Table

    from ringlab.cli.termout import natural_width

    def build(columns: tuple[str, ...], **style: Any) -> Table:
        table = Table(title="Ringlab demo: VMs contending for one pCPU through the services", **style)
        for col in columns:
            numeric = col in ("CPU share", "exits", "simulated cycles", "simulated\ncycles")
            table.add_column(col, justify="right" if numeric else "left")
        for r in rows:
            cells = {
                "VM": r["name"],
                "technique": r["technique"],
                "kernel": r["kernel"],
                "workload": r["workload"],
                "result": r["status"] + ("" if r["code"] is None else f" {r['code']}"),
                "CPU share": f"{r['cpu_share'] * 100:.1f}%",
                "exits": f"{r['exits']:,}",
                "simulated cycles": f"{r['simulated_cycles']:,}",
            }
            table.add_row(*(cells[col.replace("\n", " ")] for col in columns))
        return table

    wide = build(WIDE_COLUMNS)
    if natural_width(console, wide) <= console.width:
        return wide
    return build(NARROW_COLUMNS, box=box.SIMPLE_HEAD)


def _watch(console: Console, hv: Any, names: list[str]) -> list[Any]:
    """Progress bars (instructions retired, slices) until every VM has ended (or 50 s passed)."""
    from rich.progress import BarColumn, Progress, TextColumn

    from ringlab.cli.deployment import vm_row
    from ringlab.v1 import hypervisor_pb2

    deadline = time.monotonic() + 50
    rows: list[Any] = []
    with Progress(
        TextColumn("{task.description:<20}"),
        BarColumn(bar_width=16),
        TextColumn("{task.fields[status]:<10} share {task.fields[share]:>5}  exits {task.fields[exits]:>6}"),
        console=console,
        transient=False,
    ) as progress:
        tasks = {n: progress.add_task(n, total=None, status="created", share="-", exits="0") for n in names}
        while time.monotonic() < deadline:
            vms = hv.ListVms(hypervisor_pb2.ListVmsRequest(), timeout=10).vms
            rows = [vm_row(vm) for vm in vms]
            done = 0
            for r in rows:
                task = tasks.get(r["name"])
                if task is None:
                    continue
                ended = r["status"] in TERMINAL
                done += ended
                progress.update(
                    task,
                    completed=r["retired"],
                    total=r["retired"] if ended else None,
                    status=r["status"],
                    share=f"{r['cpu_share'] * 100:.0f}%",
                    exits=f"{r['exits']:,}",
                )
            if done == len(names):
                break
            time.sleep(0.2)
    return rows


def _slices(hv: Any) -> list[tuple[str, str, float, float]]:
    """(vm id, pcpu, start, end) of every slice, from the hypervisor's event stream."""
    from ringlab.v1 import hypervisor_pb2

    out = []
    for e in hv.StreamEvents(hypervisor_pb2.StreamEventsRequest(follow=False), timeout=30):
        if e.kind == "descheduled":
            _how, start, end, *_charged = e.detail.split()
            out.append((e.vm, e.pcpu, float(start), float(end)))
    return out


def exit_class(reason: str) -> str:
    """The class (``EXIT_CLASSES``' label) of an exit reason, in any technique's terms."""
    return next(label for label, _colour, pattern in EXIT_CLASSES if pattern.search(reason))


def exit_marks(records: list[dict[str, Any]]) -> list[tuple[float, str]]:
    """(host seconds since the epoch, exit class) of each exit in a VM's flight records (as
    ``Hypervisor.GetFlightRecord`` returns them: each exit's ``wall_ns`` and ``reason``)."""
    return [(r["wall_ns"] / 1e9, exit_class(str(r["reason"]))) for r in records if r.get("kind") == "exit"]


def slice_spans(records: list[dict[str, Any]]) -> list[tuple[str, float, float]]:
    """(pcpu, start, end in host seconds since the epoch) of each slice in a VM's flight records:
    the same clock as its exits' ``wall_ns``."""
    return [
        (str(r["pcpu"]), r["start_ns"] / 1e9, r["end_ns"] / 1e9)
        for r in records
        if r.get("kind") == "slice" and "end_ns" in r
    ]


def chart_slices(
    events: list[tuple[str, str, float, float]], records: dict[str, list[dict[str, Any]]]
) -> list[tuple[str, str, float, float]]:
    """The slices to draw, (vm id, pcpu, start, end): a VM's from its flight records when they hold
    every slice the event stream saw (then its exits fall inside its bars exactly: one clock), else
    from the scheduler's ``descheduled`` events (recording off, or older slices dropped)."""
    out = []
    for vm in sorted({v for v, *_ in events} | set(records), key=int):
        seen = [e for e in events if e[0] == vm]
        kept = slice_spans(records.get(vm, []))
        out += [(vm, *span) for span in kept] if kept and len(kept) >= len(seen) else seen
    return out


def _flight(hv: Any, vms: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Each VM's flight records (by VM id), from the hypervisor's flight recorder: every slice it
    kept (RINGLAB_FLIGHT_SLICES of each VM; none when recording is off) with its exits."""
    from ringlab.v1 import hypervisor_pb2

    out = {}
    for vm in vms:
        reply = hv.GetFlightRecord(hypervisor_pb2.FlightRecordRequest(vm=vm), timeout=30)
        records: list[dict[str, Any]] = json.loads(reply.records_json or "[]")
        out[vm] = records
    return out


def chart_figure(
    slices: list[tuple[str, str, float, float]],
    names: dict[str, str],
    exits: dict[str, list[tuple[float, str]]] | None = None,
    slice_instructions: int = SLICE_INSTRUCTIONS,
) -> Figure:
    """Which VM held the pCPU over time: a bar per slice (a colour per VM, a row per VM) and, over
    each VM's bars, a tick per exit it took (a colour per exit class, ``EXIT_CLASSES``); the
    subtitle says how a slice is measured. ``slices``: (vm id, pcpu, start, end) in host seconds;
    ``exits``: each VM's (host seconds, exit class) by VM id."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    exits = exits or {}
    vms = sorted({vm for vm, *_ in slices} | {vm for vm, marks in exits.items() if marks}, key=int)
    t0 = min((s for _vm, _p, s, _e in slices), default=0.0)
    fig = Figure(figsize=(12, 0.5 * len(vms) + 2.8))
    ax = fig.add_subplot()
    colours = matplotlib.colormaps["tab10"]
    colour_of = {label: colour for label, colour, _pattern in EXIT_CLASSES}
    seen: set[str] = set()
    for row, vm in enumerate(vms):
        bars = [(s - t0, e - s) for v, _p, s, e in slices if v == vm]
        ax.broken_barh(bars, (row - 0.4, 0.8), color=colours(row % 10), alpha=0.55, gid=f"slices {vm}")
        by_class: dict[str, list[float]] = {}
        for when, label in exits.get(vm, []):
            by_class.setdefault(label, []).append(when - t0)
        for label, times in by_class.items():
            # Ticks in the lower half of the VM's row, so that its bars show above them.
            ax.scatter(
                times, [row + 0.2] * len(times), marker="|", s=90, linewidths=0.7,
                color=colour_of[label], gid=f"exits {vm} {label}", zorder=3,
            )  # fmt: skip
            seen.add(label)
    ax.set_yticks(range(len(vms)), [names.get(vm, vm) for vm in vms], fontsize=11)
    ax.set_xlabel("host seconds since the first slice", fontsize=11)
    ax.set_ylim(len(vms) - 0.5, -0.5)
    ax.grid(axis="x", alpha=0.3)
    pcpus = sorted({p for _vm, p, _s, _e in slices}) or ["the pCPU"]
    fig.suptitle(
        f"Which VM held {', '.join(pcpus)} over time: a bar per slice, a tick per exit",
        x=0.01, ha="left", fontsize=14, fontweight="bold",
    )  # fmt: skip
    note = (
        f"A slice is a budget of {slice_instructions:,} guest instructions, not of time (stretched when "
        "no other VM waits): a VM whose instructions exit often (each exit a world switch to the "
        "hypervisor) takes longer in host time to use it, so bars differ in length by technique. "
        "The scheduler charges each VM the host time it held the pCPU. Exits: the hypervisor's flight "
        "recorder."
    )
    ax.set_title("\n".join(textwrap.wrap(note, 150)), loc="left", fontsize=9.5, color="#333333")
    handles: list[Any] = [Patch(color="#999999", alpha=0.55, label="a slice (colour: its VM)")]
    handles += [
        Line2D([], [], marker="|", linestyle="", markersize=11, markeredgewidth=1.5, color=colour,
               label=f"exit: {label}")
        for label, colour, _pattern in EXIT_CLASSES
        if label in seen
    ]  # fmt: skip
    if not seen:
        handles.append(Patch(color="none", label="no exit recorded"))
    columns = min(3, len(handles))
    fig.legend(handles=handles, loc="lower center", ncol=columns, frameon=False, fontsize=10)
    legend_inches = 0.1 + 0.25 * -(-len(handles) // columns)
    fig.tight_layout(rect=(0, legend_inches / fig.get_figheight(), 1, 1))
    return fig


def _chart(
    slices: list[tuple[str, str, float, float]],
    names: dict[str, str],
    path: str,
    exits: dict[str, list[tuple[float, str]]] | None = None,
) -> None:
    chart_figure(slices, names, exits).savefig(path, dpi=110)
