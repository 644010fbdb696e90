"""Terminal output: ``ringlab isa`` keeps its ``[m]`` operands; tables fit a terminal of 80
columns (wrapped, never cut with "…") and print whole when piped; progress shows on a terminal's
stderr and nowhere else."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from ringlab.cli import main
from tests.cli.conftest import ringlab, ringlab_on_a_terminal, visible_lines

ELLIPSIS = "\u2026"
ALL_COLUMNS = ["native", "trap-emulate", "bt", "pv", "hw", "hw+np"]


def _fits(lines: list[str], width: int = 80) -> None:
    too_long = [line for line in lines if len(line.rstrip()) > width]
    assert not too_long, too_long[:3]


# -- isa ---------------------------------------------------------------------------------------------------
def test_isa_shows_the_memory_operand_m_instead_of_eating_it_as_markup(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["isa"]) == 0
    out = capsys.readouterr().out
    assert "r = address of [m]" in out
    assert out.count("[m]") >= 16


def test_isa_on_a_terminal_of_80_columns_fits_without_cutting_anything() -> None:
    run = ringlab_on_a_terminal("isa", columns=80)
    assert run.returncode == 0
    assert ELLIPSIS not in run.terminal
    lines = visible_lines(run.terminal)
    _fits(lines)
    assert any("vmcall" in line for line in lines)


def test_isa_piped_prints_every_row_whole_even_with_columns_80() -> None:
    p = ringlab("isa", env={"COLUMNS": "80"})
    assert p.returncode == 0
    assert ELLIPSIS not in p.stdout
    # One row per line: the lea row has its encoding and its effect on the same line.
    assert any(
        "0x08 (reg<<4|base) disp32" in line and "r = address of [m]" in line for line in p.stdout.splitlines()
    )


def test_isa_table_in_a_console_of_80_columns_fits() -> None:
    from ringlab.cli.isa_doc import isa_table

    buffer = io.StringIO()
    isa_table(Console(file=buffer, width=80))
    text = buffer.getvalue()
    assert ELLIPSIS not in text
    _fits(text.splitlines())
    assert "[m]" in text


# -- bench ---------------------------------------------------------------------------------------------------
def test_bench_table_on_a_terminal_of_80_columns_fits_and_shows_progress_on_stderr() -> None:
    run = ringlab_on_a_terminal("bench", "--only", "callret", "--techniques", *ALL_COLUMNS, columns=80)
    assert run.returncode == 0, run.terminal
    assert ELLIPSIS not in run.terminal
    lines = visible_lines(run.terminal)
    _fits(lines)
    header = next(line for line in lines if "benchmark" in line and "native" in line)
    for label in ALL_COLUMNS:
        assert label in header  # no column header cut or folded
    assert any(line.split()[:1] == ["callret"] for line in lines)
    assert "callret under hw+np" in run.terminal  # the progress display, on the terminal's stderr


def test_bench_piped_prints_the_whole_table_and_no_progress() -> None:
    p = ringlab("bench", "--only", "cr8wr", "--techniques", *ALL_COLUMNS, env={"COLUMNS": "80"})
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    assert ELLIPSIS not in p.stdout
    # Piped, the table is as wide as it needs: every cell with its dominant events, unwrapped.
    assert max(len(line) for line in p.stdout.splitlines()) > 80
    assert "dominant events per iteration" in p.stdout


def test_bench_json_on_a_terminal_shows_no_progress() -> None:
    run = ringlab_on_a_terminal("bench", "--only", "callret", "--techniques", "native", "--json")
    assert run.returncode == 0
    assert "under native" not in run.terminal
    doc = json.loads(run.terminal.strip())
    assert "native" in doc["benchmarks"]["callret"]


def test_efficiency_tells_its_progress_once_per_run_and_its_table_fits_80_columns() -> None:
    from ringlab.cli.bench import _print_efficiency
    from ringlab.cli.bench.efficiency import efficiency_runs, efficiency_suite

    steps: list[str] = []
    eff = efficiency_suite(rounds=(1, 2), repeats=1, progress=steps.append)
    assert len(steps) == efficiency_runs((1, 2), 1) > 0
    assert all(step.startswith("efficiency: compute") for step in steps)
    assert any("under hw+np" in step for step in steps)
    buffer = io.StringIO()
    _print_efficiency(eff, Console(file=buffer, width=80))
    text = buffer.getvalue()
    assert ELLIPSIS not in text
    _fits(text.splitlines())
    assert "hw+np" in text


def test_speed_table_fits_80_columns() -> None:
    from ringlab.cli.bench import _print_speed
    from ringlab.cli.bench.speed import speed_suite

    buffer = io.StringIO()
    _print_speed(speed_suite(rounds=1), Console(file=buffer, width=80))
    text = buffer.getvalue()
    assert ELLIPSIS not in text
    _fits(text.splitlines())
    assert "guest MIPS" in text


def test_bench_speed_piped_shows_no_progress() -> None:
    p = ringlab("bench", "--suite", "speed", "--rounds", "1")
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    assert "guest MIPS" in p.stdout


# -- demo ------------------------------------------------------------------------------------------------------
DEMO_ROWS = [
    {
        "name": f"{technique}-{workload}",
        "technique": technique,
        "kernel": "paravirt" if technique == "pv" else "stock",
        "workload": workload,
        "status": "poweroff",
        "code": 0,
        "cpu_share": 0.47,
        "exits": 2096,
        "simulated_cycles": 1_732_782,
    }
    for technique, workload in [("trap-emulate", "syscall"), ("pv", "compute"), ("hw", "multi")]
]
"""Rows as ``cli.deployment.vm_row`` gives them for the demo's VMs."""


def _demo_table(width: int) -> str:
    from ringlab.cli.demo import _table
    from ringlab.cli.termout import fit_table

    buffer = io.StringIO()
    console = Console(file=buffer, width=width)
    console.print(fit_table(_table(DEMO_ROWS, console)))
    return buffer.getvalue()


def test_demo_table_in_80_columns_fits_with_every_figure_whole() -> None:
    text = _demo_table(80)
    assert ELLIPSIS not in text
    _fits(text.splitlines())
    assert "trap-emulate-syscall" in text and "1,732,782" in text and "47.0%" in text and "paravirt" in text


def test_demo_table_when_wide_enough_has_the_technique_and_workload_columns() -> None:
    text = _demo_table(200)
    assert any(
        "technique" in line and "workload" in line and "simulated cycles" in line
        for line in text.splitlines()
    )
