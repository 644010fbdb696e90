"""The ``ringlab`` command beyond ``run`` (which tests/isa/test_cli_run.py pins): boot, asm,
disasm, bench, isa, and the exit statuses a script relies on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ringlab.cli import main
from ringlab.guestos.reference import fnv1a_reference
from tests.cli.conftest import HELLO


def test_boot_prints_the_workload_console(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["boot", "--kernel", "stock", "--workload", "hello"]) == 0
    out = capsys.readouterr()
    assert out.out == "Hello from ring 3! I am pid 1.\n"
    assert "exit poweroff code 0" in out.err


def test_boot_json_has_the_run_contract_shape(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["boot", "--workload", "syscall", "-D", "ITERATIONS=5", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["console"] == "syscall: 5 getpid calls, pid 1\n"
    assert doc["exit"] == {"reason": "poweroff", "code": 0, "detail": doc["exit"]["detail"]}
    assert set(doc) >= {"console", "exit", "registers", "stats"}
    assert doc["stats"]["guest"]["retired_by_ring"]["3"] > 0


def test_boot_unknown_workload_is_bad_usage_naming_the_valid_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["boot", "--workload", "nope"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "hello" in err


def test_unknown_technique_is_refused_by_argparse_with_status_2() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["boot", "--technique", "magic"])
    assert exc.value.code == 2


def test_nested_paging_without_hw_is_bad_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prog = tmp_path / "p.s"
    prog.write_text(HELLO)
    assert main(["run", str(prog), "--nested-paging"]) == 2
    assert "--nested-paging" in capsys.readouterr().err


def test_asm_then_disasm_gives_source_that_assembles_to_the_same_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ringlab.asm import assemble
    from ringlab.image import Image

    src = tmp_path / "hello.s"
    src.write_text(HELLO)
    img = tmp_path / "hello.img"
    assert main(["asm", str(src), "-o", str(img)]) == 0
    capsys.readouterr()
    assert main(["disasm", str(img)]) == 0
    text = capsys.readouterr().out
    again = assemble(text)
    original = Image.load(img)
    assert (again.base, again.entry, again.data) == (original.base, original.entry, original.data)


def test_asm_error_names_file_line_column_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "bad.s"
    src.write_text("start:\n    mvo eax, 1\n")
    assert main(["asm", str(src)]) == 2
    assert f"{src}:2:5:" in capsys.readouterr().err


def test_disasm_of_a_file_that_is_not_an_image_is_bad_usage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"not an image")
    assert main(["disasm", str(junk)]) == 2
    assert "not an RL-32 image" in capsys.readouterr().err


def test_missing_program_file_is_bad_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "/nonexistent/prog.s"]) == 2
    assert "/nonexistent/prog.s" in capsys.readouterr().err


def test_bench_speed_json_reports_the_ratio_of_python_to_guest_time(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["bench", "--suite", "speed", "--rounds", "2", "--json"]) == 0
    f = json.loads(capsys.readouterr().out)
    assert set(f) >= {"guest_mips", "python_seconds", "guest_seconds", "ratio"}
    assert f["ratio"] == pytest.approx(f["python_seconds"] / f["guest_seconds"])
    assert f["guest_mips"] == pytest.approx(f["guest_instructions"] / f["guest_seconds"] / 1e6)


def test_the_python_reference_is_the_workloads_algorithm() -> None:
    from ringlab.guestos.build import WORKLOADS

    assert WORKLOADS["compute"].expected_output({"ROUNDS": 3}) == f"fnv1a={fnv1a_reference(3):08x}\n".encode()


def test_isa_markdown_prints_the_generated_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["isa", "--markdown"]) == 0
    assert "| `vmcall` | `-` | virtualization |" in capsys.readouterr().out
