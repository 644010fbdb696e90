"""Efficiency (DESIGN.md): unprivileged guest code runs directly, so compute-bound work runs at
>= 95% of native speed under bt, pv and hw.

The program is the ``compute`` workload (services/guest/ringlab_guest/workloads/compute.s: FNV-1a
over a 4 KiB buffer, ROUNDS times) on the stock kernel (paravirt for pv).  Booting the kernel
costs each technique a fixed amount (bt translates it, pv makes hypercalls, hw takes exits); the
work itself is the difference between two ROUNDS, and that is what must run at native speed.
"""

from __future__ import annotations

import time

import pytest

from ringlab.machine import run_image
from ringlab.vmm import run_vm
from ringlab_guest.build import build_image

LOW, HIGH = 4, 36
CASES = [("bt", "stock", False), ("pv", "paravirt", False), ("hw", "stock", False), ("hw", "stock", True)]


def _events(technique: str, flavour: str, nested: bool, rounds: int) -> int:
    result = run_vm(
        build_image("compute", flavour, {"ROUNDS": rounds}), technique=technique, nested_paging=nested
    )
    stats = result.to_json()["stats"]["guest"]
    return int(stats["world_switches"]) - int(stats["interrupts"]) * 3


@pytest.mark.parametrize(("technique", "flavour", "nested"), CASES)
def test_more_user_work_costs_no_more_vmm_events(technique: str, flavour: str, nested: bool) -> None:
    """Eight times the user-mode work: the VMM sees only the extra timer ticks (each tick is a
    reflection, an iret and at most one more exit), nothing per user instruction."""
    assert _events(technique, flavour, nested, HIGH) <= _events(technique, flavour, nested, LOW)


def _best(run: object, image: object, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        run(image)  # type: ignore[operator]
        best = min(best, time.perf_counter() - started)
    return best


def test_compute_throughput_is_at_least_95_percent_of_native() -> None:
    """Wall time per extra round, native vs each technique, measured interleaved in one run."""
    images = {
        flavour: (
            build_image("compute", flavour, {"ROUNDS": LOW}),
            build_image("compute", flavour, {"ROUNDS": HIGH}),
        )
        for flavour in ("stock", "paravirt")
    }
    ratios: dict[str, float] = {}
    for _attempt in range(3):  # wall clocks on a shared machine are noisy: best of three tries
        lo, hi = images["stock"]
        native = _best(run_image, hi) - _best(run_image, lo)
        for technique, flavour, nested in CASES:
            name = technique + ("+np" if nested else "")

            def run(image: object, t: str = technique, n: bool = nested) -> object:
                return run_vm(image, technique=t, nested_paging=n)  # type: ignore[arg-type]

            lo, hi = images[flavour]
            ratio = native / max(_best(run, hi) - _best(run, lo), 1e-9)
            ratios[name] = max(ratios.get(name, 0.0), ratio)
        if all(r >= 0.95 for r in ratios.values()):
            break
    assert all(r >= 0.95 for r in ratios.values()), ratios
