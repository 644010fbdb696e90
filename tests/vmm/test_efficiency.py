"""Efficiency (docs/design.md): unprivileged guest code runs directly, so compute-bound work runs at
>= 95% of native speed under bt, pv and hw.

The program is the ``compute`` workload (src/ringlab/guestos/workloads/compute.s: FNV-1a
over a 4 KiB buffer, ROUNDS times) on the stock kernel (paravirt for pv).  Booting the kernel
costs each technique a fixed amount (bt translates it, pv makes hypercalls, hw takes exits); the
work itself is the difference between two ROUNDS, and that is what must run at native speed.
Its wall-clock figure is a benchmark (``ringlab bench --suite efficiency``), not a timed test;
what a test can pin is the cause: more user work brings the VMM no more events.
"""

from __future__ import annotations

import pytest

from ringlab.guestos.build import build_image
from ringlab.vmm import run_vm

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
