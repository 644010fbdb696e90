"""``ringlab bench``: benchmark suites.  Each prints its figures as a ratio against a reference
measured in the same run, or per iteration with the boot cancelled out, so the numbers mean the
same on a slow machine and a fast one.

- ``micro`` (default): the nanobenchmarks under every technique (``micro.py``)
- ``speed``: the simulated hardware's speed against plain Python (``speed.py``)
- ``contention``: CPU shares of N VMs on one pCPU through the services (``services.py``)
- ``services``: the cost of the service boundary against an echo and in-process (``services.py``)
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["run_suite"]


def run_suite(args: argparse.Namespace) -> int:
    if args.suite in ("contention", "services"):
        return _run_services(args)
    if args.suite == "speed":
        from ringlab.bench.speed import speed_suite

        figures = speed_suite(rounds=args.rounds)
        if args.json:
            print(json.dumps(figures))
        else:
            _print_speed(figures)
        return 0
    if args.suite == "efficiency":
        from ringlab.bench.efficiency import efficiency_suite

        eff = efficiency_suite()
        if args.json:
            print(json.dumps(eff))
        else:
            _print_efficiency(eff)
        return 0
    return _run_micro(args)


def _print_efficiency(eff: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    lo, hi = eff["rounds"]
    table = Table(
        title=f"efficiency: compute ({hi - lo} FNV-1a rounds of work) against native, best of {eff['repeats']}"
    )
    for col in ("technique", "throughput vs native (target >= 0.95)", "whole run vs native (boot included)"):
        table.add_column(col, justify="left" if col == "technique" else "right")
    for label, f in eff["techniques"].items():
        table.add_row(label, f"{f['throughput']:.3f}", f"{f['whole_run']:.3f}")
    Console().print(table)


def _run_micro(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress

    from ringlab.bench.micro import BENCHMARKS, COLUMNS, micro_suite, plot

    benches = [b for b in BENCHMARKS if not args.only or b.name in args.only]
    columns = [c for c in COLUMNS if not args.techniques or c.label in args.techniques]
    err = Console(stderr=True)
    with Progress(console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task("benchmarks", total=len(benches) * len(columns))

        def step(what: str) -> None:
            progress.update(task, description=what, advance=1)

        figures = micro_suite(benches, columns, progress=step)
    if args.plot:
        plot(figures, args.plot)
        err.print(f"chart written to {args.plot}")
    if args.json:
        print(json.dumps(figures))
    else:
        _print_micro(figures, [c.label for c in columns])
    return 0


def _print_micro(figures: dict[str, Any], labels: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    from ringlab.bench.micro import dominant_events

    table = Table(title="simulated cycles per iteration (dominant events per iteration)")
    table.add_column("benchmark")
    for label in labels:
        table.add_column(label, justify="right")
    for name, row in figures["benchmarks"].items():
        cells = []
        for label in labels:
            cell = row.get(label)
            if cell is None:
                why = figures["skipped"].get(name, {}).get(label, "")
                cells.append(f"[dim]did not complete[/]\n[dim]{why[:40]}[/]")
            else:
                cells.append(f"{cell['cycles_per_iter']:,.0f}\n[dim]{dominant_events(cell)}[/]")
        table.add_row(name, *cells)
    Console().print(table)


def _print_speed(f: dict[str, float]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="speed: the compute workload (FNV-1a) as a guest vs plain Python")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("guest seconds (native, in-process, paging and timer on)", f"{f['guest_seconds']:.3f}")
    table.add_row("plain Python seconds (same algorithm, same data)", f"{f['python_seconds']:.3f}")
    table.add_row("guest MIPS", f"{f['guest_mips']:.2f}")
    table.add_row("ratio python_seconds / guest_seconds (target >= 0.2)", f"{f['ratio']:.3f}")
    Console(file=sys.stdout).print(table)


def _run_services(args: argparse.Namespace) -> int:
    from ringlab.bench.services import contention_suite, services_suite

    if args.suite == "contention":
        weights = [int(w) for w in args.weights.split(",")] if args.weights else None
        vms = len(weights) if weights else args.vms
        figures = contention_suite(vms, weights)
        targets = "Jain >= 0.99 (equal weights), each share within 5% of its target, overhead < 5%"
    else:
        figures = services_suite()
        targets = "exit <= 1.5x echo, <= 2 Redis round trips per world switch, compute >= 0.9x in-process"
    if args.json:
        print(json.dumps(figures))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{args.suite} (targets: {targets})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in figures.items():
        table.add_row(key, str(value))
    Console(file=sys.stdout).print(table)
    return 0
