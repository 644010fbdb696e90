"""Equivalence (docs/design.md): every guest workload gives native's console output, exit, final
guest-visible registers and virtual time under bt, hw and hw with nested paging; the paravirt
kernel under pv prints what the stock kernel prints natively.

The programs are the guest OS workloads (src/ringlab/guestos/workloads/<name>.s) on
the stock kernel, with the small defines below.
"""

from __future__ import annotations

import pytest

from ringlab.guestos.build import build_image
from tests.vmm.conftest import native, observable, vm

WORKLOADS: dict[str, dict[str, int]] = {
    "hello": {},
    "compute": {"ROUNDS": 2},
    "syscall": {"ITERATIONS": 30},
    "io": {"ITERATIONS": 3},
    "callret": {"ITERATIONS": 30},
    "pagefault": {"ITERATIONS": 4},
    "ptemod": {"ITERATIONS": 4},
    "divzero": {"ITERATIONS": 2},
    "spawnwait": {"ITERATIONS": 3},
    "multi": {"WORKERS": 2, "ITERATIONS": 2, "WORK": 20000, "TIMER_PERIOD": 20000},
    "bench": {"OP": 2, "ITERATIONS": 20},
}


@pytest.mark.parametrize("technique", ["bt", "hw", "hw+np"])
@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_stock_kernel_workload_equals_native(workload: str, technique: str) -> None:
    image = build_image(workload, "stock", WORKLOADS[workload])
    expected = native(image)
    assert expected["exit"]["reason"] == "poweroff"
    assert observable(vm(image, technique)) == observable(expected)


@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_paravirt_kernel_under_pv_prints_what_stock_prints_natively(workload: str) -> None:
    defines = WORKLOADS[workload]
    expected = native(build_image(workload, "stock", defines))
    result = vm(build_image(workload, "paravirt", defines), "pv")
    assert result["exit"] == expected["exit"]
    assert result["console"] == expected["console"]
    # a paravirt kernel never traps: no #GP, every sensitive operation was a hypercall
    assert "13" not in result["stats"]["guest"]["exceptions"]
    assert result["stats"]["guest"]["hypercalls"]["set_trap_table"] == 1


def test_pv_batches_page_table_updates_in_lazy_mmu_mode() -> None:
    """Boot writes ~1,000 identity-map PTEs between PV_LAZY_MMU_BEGIN/END: a few mmu_updates."""
    result = vm(build_image("hello", "paravirt"), "pv")
    assert result["stats"]["guest"]["hypercalls"]["mmu_update"] < 20
