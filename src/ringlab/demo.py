"""``ringlab demo``: boot the Ringlab guest OS with each workload and show what happened.

This is the in-process demo: one machine per workload, run natively.  It prints each console,
then a table with how each run ended and what it cost.
"""

from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

__all__ = ["run_demo", "DEMO_WORKLOADS"]

DEMO_WORKLOADS = ("hello", "compute", "syscall", "divzero", "spawnwait", "multi")


def run_demo(args: argparse.Namespace) -> int:
    from ringlab.machine import run_image
    from ringlab_guest.build import build_image

    console = Console()
    rows = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("booting workloads", total=len(DEMO_WORKLOADS))
        for name in DEMO_WORKLOADS:
            progress.update(task, description=f"booting {name}")
            start = time.perf_counter()
            result = run_image(build_image(name, "stock"))
            wall = time.perf_counter() - start
            doc = result.to_json()
            console.rule(f"[bold]{name}[/] console")
            console.print(doc["console"], end="", markup=False, highlight=False)
            rows.append((name, doc, wall))
            progress.advance(task)

    table = Table(title="Ringlab demo: the stock kernel, natively (technique native)")
    for col in ("workload", "result", "instructions", "ring 0", "ring 3", "virtual time", "wall ms"):
        table.add_column(col, justify="left" if col in ("workload", "result") else "right")
    for name, doc, wall in rows:
        g = doc["stats"]["guest"]
        by_ring = g.get("retired_by_ring", {})
        ex = doc["exit"]
        table.add_row(
            name,
            f"{ex['reason']} {ex['code'] if ex['code'] is not None else ''}".strip(),
            f"{g['retired']:,}",
            f"{by_ring.get('0', 0):,}",
            f"{by_ring.get('3', 0):,}",
            f"{g['virtual_time']:,}",
            f"{wall * 1000:.0f}",
        )
    console.print(table)
    console.print("Next: 'ringlab boot --workload NAME', 'ringlab run PROGRAM.s', 'ringlab bench'.")
    return 0
