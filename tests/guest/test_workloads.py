"""Every workload boots on the stock kernel to its exact console output and powers off with 0.

The programs are src/ringlab/guestos/workloads/<file>.s (WORKLOADS[name].programs lists them; program
0 is init).  Iteration counts are small to keep the suite fast; the defaults run where cheap.
"""

from __future__ import annotations

import pytest

from ringlab.guestos.build import WORKLOADS, build_image

from .conftest import boot

SMALL: dict[str, dict[str, int]] = {
    "hello": {},
    "compute": {"ROUNDS": 2},
    "syscall": {"ITERATIONS": 50},
    "io": {"ITERATIONS": 3},
    "callret": {"ITERATIONS": 50},
    "pagefault": {"ITERATIONS": 8},
    "tlbmiss": {"PAGES": 70, "ITERATIONS": 2},
    "ptemod": {"ITERATIONS": 10},
    "divzero": {"ITERATIONS": 2},
    "spawnwait": {"ITERATIONS": 3},
    "multi": {"TIMER_PERIOD": 20_000, "WORK": 6_000, "ITERATIONS": 2},
    "bench": {"OP": 3, "ITERATIONS": 20},
    "dirty": {"PAGES": 3, "ITERATIONS": 4},
}
CHEAP_DEFAULTS = ("hello", "syscall", "io", "callret", "pagefault", "divzero", "bench")

CASES = (
    [pytest.param(name, defines, id=f"{name}-small") for name, defines in SMALL.items()]
    + [pytest.param(name, {}, id=f"{name}-defaults") for name in CHEAP_DEFAULTS]
    + [pytest.param("compute", {"ITERATIONS": 3}, id="compute-iterations")]
)


def test_every_workload_has_a_small_case() -> None:
    assert set(SMALL) == set(WORKLOADS)


@pytest.mark.parametrize(("name", "defines"), CASES)
def test_workload_boots_to_its_expected_output(name: str, defines: dict[str, int]) -> None:
    workload = WORKLOADS[name]
    result = boot(build_image(name, "stock", defines))
    programs = ", ".join(f"workloads/{p}" for p in workload.programs)
    assert workload.check_output(result.console, defines), (
        f"{programs} printed {result.console!r}, expected {workload.expected_output(defines)!r}"
    )
    assert (result.reason, result.code) == ("poweroff", 0), result.detail


@pytest.mark.parametrize("op", [0, 1, 2, 3])
def test_bench_runs_each_operation_in_the_kernel(op: int) -> None:
    """workloads/bench.s: bench(OP, 200) is one system call whose loop runs in ring 0."""
    defines = {"OP": op, "ITERATIONS": 200}
    few = boot(build_image("bench", "stock", {"OP": op, "ITERATIONS": 100}))  # same digits printed
    many = boot(build_image("bench", "stock", defines))
    assert many.console == WORKLOADS["bench"].expected_output(defines)
    ring0 = lambda r: r.to_json()["stats"]["guest"]["retired_by_ring"]["0"]  # noqa: E731
    # the operation plus dec/jnz per iteration: exactly 3 more kernel instructions each
    # (4 for the page-table write, which is a store and an invlpg)
    per_iteration = 4 if op == 3 else 3
    assert ring0(many) - ring0(few) == 100 * per_iteration


def test_bench_rejects_an_unknown_operation() -> None:
    """workloads/bench.s with OP=9: the kernel answers -EINVAL (-22)."""
    result = boot(build_image("bench", "stock", {"OP": 9, "ITERATIONS": 5}))
    assert result.console == b"bench: op 9, 5 iterations, result -22\n"
