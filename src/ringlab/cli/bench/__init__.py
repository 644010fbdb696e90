"""``ringlab bench``: benchmark suites.  Each prints its figures as a ratio against a reference
measured in the same run, or per iteration with the boot cancelled out, so the numbers mean the
same on a slow machine and a fast one.

- ``micro`` (default): the nanobenchmarks under every technique (``micro.py``)
- ``speed``: the simulated hardware's speed against plain Python (``speed.py``)
- ``efficiency``: compute-bound work under each technique against native (``efficiency.py``)
- ``contention``: CPU shares of N VMs on one pCPU through the services (``services.py``)
- ``services``: the cost of the service boundary against an echo and in-process (``services.py``)
- ``recorder``: the flight recorder's overhead, on against off, in-process and through the services
  (``recorder.py``)
- ``migration``: live migration's rounds and downtime against the VM's dirty rate, between two
  local deployments (``migration.py``)

Every suite shows its progress on stderr when stderr is a terminal (not under ``--json``), and
prints its table to fit the terminal, or whole when stdout is not a terminal (``ringlab.cli.termout``).
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

__all__ = ["run_suite"]

DEFAULT_VMS = 16
"""``--suite contention`` without ``--vms`` or ``--weights``."""


def run_suite(args: argparse.Namespace) -> int:
    from ringlab.cli.termout import progress, spinner

    show = not args.json
    if args.suite in ("contention", "services"):
        return _run_services(args)
    if args.suite == "recorder":
        from ringlab.cli.bench.recorder import DEFAULT_REPEATS, recorder_suite

        with progress("recorder", 1.0, enabled=show) as step:
            rec = recorder_suite(args.repeats or DEFAULT_REPEATS, progress=step)
        if args.json:
            print(json.dumps(rec))
        else:
            _print_recorder(rec)
        return 0
    if args.suite == "migration":
        from ringlab.cli.bench.migration import DEFAULT_BANDWIDTH_MBIT, migration_suite

        with progress("migration", 1.0, enabled=show) as step:
            mig = migration_suite(bandwidth_mbit=args.bandwidth or DEFAULT_BANDWIDTH_MBIT, progress=step)
        if args.json:
            print(json.dumps(mig))
        else:
            _print_migration(mig)
        return 0
    if args.suite == "speed":
        from ringlab.cli.bench.speed import speed_suite

        with spinner("speed: the compute workload as a guest and in plain Python", enabled=show, delay=0.5):
            figures = speed_suite(rounds=args.rounds)
        if args.json:
            print(json.dumps(figures))
        else:
            _print_speed(figures)
        return 0
    if args.suite == "efficiency":
        from ringlab.cli.bench.efficiency import REPEATS, ROUNDS, efficiency_runs, efficiency_suite

        rounds = (ROUNDS[0], args.rounds or ROUNDS[1])
        repeats = args.repeats or REPEATS
        with progress("efficiency", efficiency_runs(rounds, repeats), enabled=show) as step:
            eff = efficiency_suite(rounds, repeats, progress=step)
        if args.json:
            print(json.dumps(eff))
        else:
            _print_efficiency(eff)
        return 0
    return _run_micro(args)


def _print_migration(mig: dict[str, Any], console: Console | None = None) -> None:
    """Downtime against dirty rate, a row per working set, with a bar of the stop-and-copy's pages."""
    from ringlab.cli.termout import compact_table, fit_table, stdout_console

    console = console or stdout_console()
    table = compact_table(
        f"live migration ({mig['technique']}): downtime against dirty rate, link "
        f"{mig['bandwidth_bytes_per_second'] * 8 / 1e6:g} Mbit/s = {mig['link_pages_per_second']:,.0f} pages/s",
        [("pages/tick", "right"), ("dirty pages/s", "right"), ("re-dirtied", "right"), ("rounds", "right"),
         ("converged", "left"),
         ("sent", "right"), ("stop pages", "right"), ("downtime link", "right"), ("x smallest", "right"),
         ("wall", "right"), ("cpu x", "right"), ("stop-and-copy", "left")],
    )  # fmt: skip
    most = max((r["stop_and_copy_pages"] for r in mig["runs"]), default=0) or 1
    for r in mig["runs"]:
        again = "-" if r["redirtied_pages_per_round"] is None else f"{r['redirtied_pages_per_round']:,}"
        table.add_row(
            str(r["pages_per_tick"]), f"{r['dirty_pages_per_second']:,.0f}", again, str(r["rounds"]),
            "yes" if r["converged"] else "NO",
            f"{r['pages_sent']:,}", f"{r['stop_and_copy_pages']:,}", f"{r['downtime_link_ms']:.1f} ms",
            _x(r["downtime_vs_smallest"]), f"{r['wall_seconds']:.2f} s", _x(r["cpu_vs_smallest"]),
            "#" * max(1, round(24 * r["stop_and_copy_pages"] / most)),
        )  # fmt: skip
    console.print(fit_table(table))
    limit = mig["first_not_converged"]
    console.print(
        "pre-copy converged for every working set"
        if limit is None
        else f"pre-copy stops converging from {limit} pages a tick: the VM dirties pages faster than "
        "the link carries them, and the round limit ends pre-copy"
    )


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def _print_recorder(rec: dict[str, Any], console: Console | None = None) -> None:
    from rich.table import Table

    from ringlab.cli.termout import fit_table, stdout_console

    console = console or stdout_console()
    table = Table(
        title=f"flight recorder: on against off, syscall workload, best of {rec['repeats']} "
        "(overhead = on / off - 1; target under 5%)"
    )
    for col in ("run", "exits recorded", "CPU s off", "CPU s on", "CPU overhead", "wall overhead"):
        table.add_column(col, justify="left" if col == "run" else "right")

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:+.1f}%"

    for technique, f in rec["in_process"].items():
        table.add_row(
            f"in-process {technique}",
            f"{f['exits']:,}",
            f"{f['off_cpu_seconds']:.3f}",
            f"{f['on_cpu_seconds']:.3f}",
            pct(f["cpu_overhead"]),
            pct(f["wall_overhead"]),
        )
    svc = rec.get("services")
    if svc:
        table.add_row(
            f"services: {svc['vms']} pv VMs (hypervisor + cpu)",
            f"{svc['exits_recorded_per_vm']:,} per VM",
            "-" if svc["off_cpu_seconds"] is None else f"{svc['off_cpu_seconds']:.3f}",
            "-" if svc["on_cpu_seconds"] is None else f"{svc['on_cpu_seconds']:.3f}",
            pct(svc["cpu_overhead"]),
            pct(svc["wall_overhead"]),
        )
    console.print(fit_table(table))


def _print_efficiency(eff: dict[str, Any], console: Console | None = None) -> None:
    from rich.table import Table

    from ringlab.cli.termout import fit_table, stdout_console

    lo, hi = eff["rounds"]
    table = Table(
        title=f"efficiency: compute ({hi - lo} FNV-1a rounds of work) against native, best of {eff['repeats']}"
    )
    for col in ("technique", "throughput vs native (target >= 0.95)", "whole run vs native (boot included)"):
        table.add_column(col, justify="left" if col == "technique" else "right")
    for label, f in eff["techniques"].items():
        table.add_row(label, f"{f['throughput']:.3f}", f"{f['whole_run']:.3f}")
    (console or stdout_console()).print(fit_table(table))


def _run_micro(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ringlab.cli.bench.micro import BENCHMARKS, COLUMNS, REPEATS, Setup, micro_suite, plot
    from ringlab.cli.termout import progress
    from ringlab.vmm.costs import DEFAULT_PROFILE

    benches = [b for b in BENCHMARKS if not args.only or b.name in args.only]
    columns = [c for c in COLUMNS if not args.techniques or c.label in args.techniques]
    setup = Setup(
        profile=args.profile or DEFAULT_PROFILE,
        tlb=args.tlb,
        repeats=args.repeats or REPEATS,
    )
    with progress("benchmarks", len(benches) * len(columns), enabled=not args.json) as step:
        figures = micro_suite(benches, columns, progress=step, setup=setup, paper=bool(args.paper))
    if args.plot:
        plot(figures, args.plot)
        Console(stderr=True).print(f"chart written to {args.plot}", highlight=False, markup=False)
    if args.json:
        print(json.dumps(figures))
    elif args.paper:
        _print_paper(figures, [c.label for c in columns])
    else:
        _print_micro(figures, [c.label for c in columns])
    return 0


def _title(figures: dict[str, Any], what: str) -> str:
    return f"{what} (cost profile {figures['profile']}, TLB {figures['tlb']})"


def _paper_table(figures: dict[str, Any], labels: list[str]) -> Table:
    """Ringlab's cycles per iteration with the published figure in brackets, and the ratio of
    the software VMM's cost to the hardware VMM's in Ringlab and in the paper."""
    from rich import box
    from rich.table import Table

    from ringlab.cli.bench.paper import PAPER, Published

    table = Table(title=_title(figures, "simulated cycles per iteration [the paper's]"), box=box.SIMPLE_HEAD)
    table.add_column("benchmark")
    for label in labels:
        table.add_column(label, justify="right")
    table.add_column("sw/hw Ringlab [paper]", justify="right")
    for name, row in figures["benchmarks"].items():
        published = PAPER.get(name)
        cells = []
        for label in labels:
            cell = row.get(label)
            text = "[dim]-[/]" if cell is None else f"{cell['cycles_per_iter']:,.0f}"
            if isinstance(published, Published) and label in published.columns:
                which = ("native", "software", "hardware")[published.columns.index(label)]
                text += f" [dim]\\[{getattr(published, which):,}][/]"
            cells.append(text)
        ratio = ""
        doc = figures.get("paper", {}).get(name, {})
        if isinstance(published, Published):
            ours = doc.get("ringlab_sw_hw_ratio")
            ratio = f"{ours:.3g}" if ours is not None else "-"
            ratio += f" [dim]\\[{published.sw_hw:.3g}][/]"
        elif published is not None:  # tlbmiss: nested against shadow paging's walk references
            ours = doc.get("ringlab_nested_over_shadow_walk_references")
            ratio = "np/shadow walks " + (f"{ours:.3g}" if ours is not None else "-")
            ratio += f" [dim]\\[{published.nested}/{published.native} for x86-64][/]"
        table.add_row(name, *cells, ratio)
    return table


def _print_paper(figures: dict[str, Any], labels: list[str], console: Console | None = None) -> None:
    from ringlab.cli.bench.paper import AA06, BSSM08
    from ringlab.cli.termout import fit_table, stdout_console

    console = console or stdout_console()
    console.print(fit_table(_paper_table(figures, labels)))
    console.print(
        f"[dim]\\[brackets]: {AA06}, native / software VMM (bt) / hardware VMM (hw); tlbmiss: "
        f"{BSSM08}, memory references per TLB miss.  sw/hw: bt's cycles over hw's.[/]"
    )


def _micro_table(figures: dict[str, Any], labels: list[str], *, events: bool) -> Table:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from ringlab.cli.bench.micro import dominant_events

    if events:
        table = Table(title=_title(figures, "simulated cycles per iteration (dominant events per iteration)"))
    else:
        table = Table(title=_title(figures, "simulated cycles per iteration"), box=box.SIMPLE_HEAD)
    table.add_column("benchmark")
    for label in labels:
        table.add_column(label, justify="right")
    for name, row in figures["benchmarks"].items():
        cells = []
        for label in labels:
            cell = row.get(label)
            if cell is None:
                why = escape(figures["skipped"].get(name, {}).get(label, ""))
                cells.append(f"[dim]did not complete[/]\n[dim]{why}[/]" if events else "[dim]-[/]")
            elif events:
                cells.append(f"{cell['cycles_per_iter']:,.0f}\n[dim]{escape(dominant_events(cell))}[/]")
            else:
                cells.append(f"{cell['cycles_per_iter']:,.0f}")
        table.add_row(name, *cells)
    for name in figures["skipped"]:
        if name not in figures["benchmarks"]:  # under no technique at all
            table.add_row(name, *(["[dim]-[/]"] * len(labels)))
    return table


def _events_table(figures: dict[str, Any], labels: list[str]) -> Table:
    """One row per cell: what dominated it (the narrow layout's second table)."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from ringlab.cli.bench.micro import dominant_events

    table = Table(title="dominant events per iteration", box=box.SIMPLE_HEAD)
    for col in ("benchmark", "technique", "events (or why it did not complete)"):
        table.add_column(col)
    for name in list(figures["benchmarks"]) + [
        n for n in figures["skipped"] if n not in figures["benchmarks"]
    ]:
        row = figures["benchmarks"].get(name, {})
        first = True
        for label in labels:
            cell = row.get(label)
            if cell is not None:
                what = escape(dominant_events(cell))
            else:
                what = (
                    "[dim]did not complete: "
                    + escape(figures["skipped"].get(name, {}).get(label, ""))
                    + "[/]"
                )
            table.add_row(name if first else "", label, what)
            first = False
    return table


def _print_micro(figures: dict[str, Any], labels: list[str], console: Console | None = None) -> None:
    """The table with every cell's dominant events when it fits the console; otherwise (a
    terminal of 80 columns) the cycles alone, then the events cell by cell."""
    from ringlab.cli.termout import fit_table, natural_width, stdout_console

    console = console or stdout_console()
    wide = _micro_table(figures, labels, events=True)
    if natural_width(console, wide) <= console.width:
        console.print(wide)
        return
    console.print(fit_table(_micro_table(figures, labels, events=False)))
    console.print(fit_table(_events_table(figures, labels)))


def _print_speed(f: dict[str, float], console: Console | None = None) -> None:
    from rich.table import Table

    from ringlab.cli.termout import fit_table, stdout_console

    table = Table(title="speed: the compute workload (FNV-1a) as a guest vs plain Python")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("guest seconds (native, in-process, paging and timer on)", f"{f['guest_seconds']:.3f}")
    table.add_row("plain Python seconds (same algorithm, same data)", f"{f['python_seconds']:.3f}")
    table.add_row("guest MIPS", f"{f['guest_mips']:.2f}")
    table.add_row("ratio python_seconds / guest_seconds (target >= 0.2)", f"{f['ratio']:.3f}")
    (console or stdout_console()).print(fit_table(table))


def _run_services(args: argparse.Namespace) -> int:
    from rich.markup import escape
    from rich.table import Table

    from ringlab.cli.bench.services import contention_suite, services_suite
    from ringlab.cli.termout import fit_table, progress, stdout_console

    with progress(args.suite, 1.0, enabled=not args.json) as step:
        if args.suite == "contention":
            weights = args.weights
            vms = len(weights) if weights else (args.vms or DEFAULT_VMS)
            figures = contention_suite(vms, weights, progress=step)
            targets = "Jain >= 0.99 (equal weights), each share within 5% of its target, overhead < 5%"
        else:
            figures = services_suite(progress=step)
            targets = "exit <= 1.5x echo, <= 2 Redis round trips per world switch, compute >= 0.9x in-process"
    if args.json:
        print(json.dumps(figures))
        return 0
    table = Table(title=f"{args.suite} (targets: {targets})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in figures.items():
        table.add_row(key, escape(str(value)))
    stdout_console().print(fit_table(table))
    return 0
