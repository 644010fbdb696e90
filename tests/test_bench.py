"""``ringlab bench``: the microbenchmark table and the efficiency figures (small sizes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ringlab.cli import main
from ringlab.cli.bench.micro import BENCHMARKS, COLUMNS, micro_suite


def _pick(names: set[str], labels: set[str]) -> tuple[list, list]:
    return [b for b in BENCHMARKS if b.name in names], [c for c in COLUMNS if c.label in labels]


def test_in_costs_a_trap_under_trap_emulate_but_not_natively() -> None:
    """The kernel's `in eax, 0x80` loop (bench op 0): ring 1 has IOPL 0, so each one traps."""
    benches, cols = _pick({"in"}, {"native", "trap-emulate"})
    table = micro_suite(benches, cols)["benchmarks"]["in"]
    native, te = table["native"], table["trap-emulate"]
    assert native["cycles_per_iter"] < 10 < te["cycles_per_iter"]
    assert te["events"]["traps.in"] == pytest.approx(1.0, abs=0.05)
    assert native["iterations"] == te["iterations"] == 200


def test_nested_paging_removes_the_exits_of_a_page_fault() -> None:
    benches, cols = _pick({"pagefault"}, {"hw", "hw+np"})
    row = micro_suite(benches, cols)["benchmarks"]["pagefault"]
    assert row["hw+np"]["cycles_per_iter"] < row["hw"]["cycles_per_iter"]
    exits_np = sum(v for k, v in row["hw+np"]["events"].items() if k.startswith("vm_exits"))
    exits = sum(v for k, v in row["hw"]["events"].items() if k.startswith("vm_exits"))
    assert exits_np < exits


def test_bench_json_and_plot_for_chosen_benchmarks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chart = tmp_path / "bench.png"
    assert (
        main(["bench", "--only", "callret", "--techniques", "native", "bt", "--json", "--plot", str(chart)])
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    cell = doc["benchmarks"]["callret"]["bt"]
    assert set(cell) == {"iterations", "cycles_per_iter", "wall_us_per_iter", "events"}
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
