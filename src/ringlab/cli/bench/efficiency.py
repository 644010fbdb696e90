"""The efficiency suite: compute-bound guest work under each technique against native.

The definition of virtualization Ringlab holds itself to: unprivileged code runs directly, so
compute-bound work runs at >= 95% of native speed.  The ``compute`` workload is run with two round counts
under every technique, interleaved and best-of-``repeats``; the time of the extra rounds is the
work's own time (the boot, which differs per technique, cancels out).  ``throughput`` is
native's time for that work divided by the technique's; ``whole_run`` divides the whole runs
(boot included), which is reported too so nothing is hidden.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ringlab.cli.bench.micro import COLUMNS, Column
from ringlab.vmm import TechniqueName

__all__ = ["REPEATS", "ROUNDS", "efficiency_runs", "efficiency_suite"]

ROUNDS = (32, 2080)
"""The two round counts of ``compute``: their difference is the work measured."""
REPEATS = 5
"""Best of this many runs of each (technique, rounds)."""


def _columns() -> list[Column]:
    return [c for c in COLUMNS if c.technique != TechniqueName.TRAP_EMULATE]  # it does not run compute right


def efficiency_runs(rounds: tuple[int, int] = ROUNDS, repeats: int = REPEATS) -> int:
    """How many guest runs ``efficiency_suite`` makes (for a progress bar)."""
    return repeats * len(_columns()) * len(rounds)


def _time(image: Any, col: Column) -> float:
    from ringlab.vmm import run_vm

    start = time.perf_counter()
    result = run_vm(image, technique=col.technique, nested_paging=col.nested_paging)
    elapsed = time.perf_counter() - start
    if result.reason != "poweroff":
        raise RuntimeError(f"compute under {col.label} ended with {result.reason}")
    return elapsed


def efficiency_suite(
    rounds: tuple[int, int] = ROUNDS,
    repeats: int = REPEATS,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """``{"rounds": [lo, hi], "techniques": {LABEL: {"throughput": x, "whole_run": y,
    "work_seconds": s, "run_seconds": t}}}`` with native as the reference (1.0).

    ``progress``, if given, is called once before each of the ``efficiency_runs()`` runs with
    what runs next."""
    from ringlab.guestos.build import build_image

    columns = _columns()
    images = {(c.kernel, n): build_image("compute", c.kernel, {"ROUNDS": n}) for c in columns for n in rounds}
    best: dict[tuple[str, int], float] = {}
    for rep in range(repeats):
        for col in columns:  # interleaved, so a slow moment of the host hits every technique alike
            for n in rounds:
                if progress:
                    progress(
                        f"efficiency: compute, {n} rounds, under {col.label} (repeat {rep + 1} of {repeats})"
                    )
                t = _time(images[(col.kernel, n)], col)
                best[(col.label, n)] = min(best.get((col.label, n), t), t)
    lo, hi = rounds
    work = {c.label: best[(c.label, hi)] - best[(c.label, lo)] for c in columns}
    run = {c.label: best[(c.label, hi)] for c in columns}
    return {
        "rounds": [lo, hi],
        "repeats": repeats,
        "techniques": {
            label: {
                "throughput": work[TechniqueName.NATIVE] / work[label],
                "whole_run": run[TechniqueName.NATIVE] / run[label],
                "work_seconds": work[label],
                "run_seconds": run[label],
            }
            for label in work
        },
    }
