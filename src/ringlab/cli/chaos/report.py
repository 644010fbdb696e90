"""The checker's verdict on a terminal: the properties, the faults with their victims, and the
figures, as rich tables that fit the terminal (long cells fold, never cut)."""

from __future__ import annotations

import statistics
from typing import Any

from ringlab.cli.chaos.checker import Verdict

__all__ = ["render"]

EVIDENCE = 3
"""Failures shown per property (``--json`` has them all)."""


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render(verdict: Verdict, started: float | None = None) -> Any:
    """A renderable: the verdict line, the properties, the faults, the figures."""
    from rich.console import Group
    from rich.text import Text

    from ringlab.cli.termout import compact_table

    props = compact_table(
        "properties", [("property", "left"), ("result", "left"), ("checked", "right"), ("evidence", "left")]
    )
    for p in verdict.properties:
        evidence = "; ".join(p.failures[:EVIDENCE])
        if len(p.failures) > EVIDENCE:
            evidence += f"; and {len(p.failures) - EVIDENCE} more (--json lists them)"
        props.add_row(
            p.name, "[green]ok[/]" if p.ok else "[bold red]FAIL[/]", str(p.checked), evidence or p.summary
        )
    faults = compact_table(
        "faults",
        [("#", "right"), ("at s", "right"), ("action", "left"), ("target", "left"), ("hit", "right"), ("failover s", "right"), ("lost s", "right"), ("charged s", "right")],
    )  # fmt: skip
    t0 = started if started is not None else (float(verdict.faults[0]["time"]) if verdict.faults else 0.0)
    for index, fault in enumerate(verdict.faults):
        mine = [f for f in verdict.failovers if f.fault == index]
        times = [f.seconds for f in mine if f.seconds is not None]
        never = sum(1 for f in mine if f.seconds is None)
        action = fault["action"] + (
            f" {float(fault.get('seconds') or 0):g}s" if fault["action"] in ("pause", "partition") else ""
        )
        faults.add_row(
            str(index), f"{float(fault['time']) - t0:.1f}", action, str(fault["target"]), str(len(mine)),
            (_seconds(max(times)) if times else "-") + (f" ({never} never)" if never else ""),
            _seconds(sum(f.lost for f in mine)) if mine else "-",
            _seconds(sum(f.charged for f in mine)) if mine else "-",
        )  # fmt: skip
    figures = verdict.failover_figures()
    c = verdict.commits
    summary = (
        f"{verdict.vms} VMs, {len(verdict.faults)} faults; commits: {c['applied']} applied, {c['refused']} refused "
        f"({c['refused_stale_lease']} for a stale lease); failover over {figures['victims']} hit VMs: "
        f"median {_seconds(figures['median_seconds'])} s, max {_seconds(figures['max_seconds'])} s"
        + (
            f" ({figures['victims'] - figures['recovered']} never ran again)"
            if figures["victims"] != figures["recovered"]
            else ""
        )
        + (
            f"; pCPU failovers ({figures['pcpu_victims']}), counted from when a pCPU could run the VM: "
            f"median {_seconds(figures['pcpu_median_resumed_seconds'])} s, max "
            f"{_seconds(figures['pcpu_max_resumed_seconds'])} s, {figures['pcpu_over_bound']} over their "
            "grant's lease plus one slice"
            if figures["pcpu_victims"]
            else ""
        )
        + f"; lost slices after a fault: {figures['lost_seconds']:.2f} s in all, at most "
        f"{figures['max_lost_seconds']:.2f} s to one VM, {figures['charged_seconds']:.2f} s of it charged"
    )
    failed = [p.name for p in verdict.properties if not p.ok]
    head = (
        Text("PASS: every property held", style="bold green")
        if verdict.ok
        else Text(
            "FAIL: " + ", ".join(failed) + (" (stale commit)" if "fenced" in failed else ""), style="bold red"
        )
    )
    parts: list[Any] = [head, props]
    if verdict.faults:
        parts.append(faults)
    parts.append(Text(summary))
    return Group(*parts)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None
