"""``ringlab bench``: benchmark suites.  Each prints its figures as a ratio against a reference
measured in the same run, so the numbers mean the same on a slow machine and a fast one."""

from __future__ import annotations

import argparse
import json
import sys

from ringlab.bench.speed import speed_suite

__all__ = ["run_suite"]


def run_suite(args: argparse.Namespace) -> int:
    if args.suite == "speed":
        figures = speed_suite(rounds=args.rounds)
        if args.json:
            print(json.dumps(figures))
        else:
            _print_speed(figures)
        return 0
    raise AssertionError(f"unknown suite {args.suite}")  # argparse restricts the choices


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
