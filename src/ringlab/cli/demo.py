"""``ringlab demo``: several VMs under every technique contending for one pCPU, through the
real services.

It starts a real Redis, one cpu service (one pCPU) and the hypervisor on loopback, creates one VM
per (technique, workload) pair of ``DEMO_VMS`` with the kernel flavour each technique needs, shows
their progress while the credit scheduler shares the pCPU among them, prints a table of what
happened, draws which VM held the pCPU over time, and shuts everything down.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from ringlab.sched.credit import TERMINAL
from ringlab.vmm import TechniqueName, default_kernel

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

__all__ = ["CHART", "DEMO_VMS", "run_demo"]

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
    # Short slices (100,000 instructions) so the chart shows the VMs taking turns even though the
    # techniques that exit often (every exit is a world switch to the hypervisor) run slower.
    with spinner("starting Redis, the cpu service and the hypervisor", delay=0.3):
        deployment = LocalDeployment.start(pcpus=1, slice=100_000)
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
        slices = _slices(hv)
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
            _chart(slices, by_id, chart)
        console.print(f"chart of who held the pCPU over time: {chart}")
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


def _chart(slices: list[tuple[str, str, float, float]], names: dict[str, str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vms = sorted({vm for vm, *_ in slices}, key=int)
    t0 = min((s for _vm, _p, s, _e in slices), default=0.0)
    fig, ax = plt.subplots(figsize=(11, 0.45 * len(vms) + 1.5))
    colours = plt.get_cmap("tab10")
    for row, vm in enumerate(vms):
        bars = [(s - t0, e - s) for v, _p, s, e in slices if v == vm]
        ax.broken_barh(bars, (row - 0.4, 0.8), color=colours(row % 10))
    ax.set_yticks(range(len(vms)), [names.get(vm, vm) for vm in vms])
    ax.set_xlabel("host seconds since the first slice")
    ax.set_title("Which VM held pcpu0 over time (one bar per slice)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
