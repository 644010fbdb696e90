"""`ringlab run` as docs/machine.md "Running a program" describes it (native technique)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROGRAM = """\
    mov eax, 'A'
    out 0x3F8, eax
    in ebx, 0x3F8           ; the first --input byte
    out 0x3F8, ebx
    mov ecx, esp            ; top of RAM (--memory)
    out 0xF4, ebx
"""


def ringlab(*args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from ringlab.cli import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_run_json_prints_one_object_with_console_exit_registers_stats(tmp_path: Path):
    prog = tmp_path / "p.s"
    prog.write_text(PROGRAM)
    p = ringlab("run", str(prog), "--json", "--input", "Q", "--memory", str(0x80000))
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["console"] == "AQ"
    assert out["exit"]["reason"] == "poweroff"
    assert out["exit"]["code"] == ord("Q")
    assert out["registers"]["ecx"] == 0x80000
    assert set(out["stats"]) >= {"guest", "host"}


def test_run_without_json_prints_the_console(tmp_path: Path):
    prog = tmp_path / "p.s"
    prog.write_text(PROGRAM)
    p = ringlab("run", str(prog), "--input", "z")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("Az")


def test_run_max_instructions_exit_limit_and_process_exit_0(tmp_path: Path):
    prog = tmp_path / "spin.s"
    prog.write_text("spin: jmp spin\n")
    p = ringlab("run", str(prog), "--json", "--max-instructions", "100")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["exit"]["reason"] == "limit"


def test_run_define_passes_a_value_to_the_program(tmp_path: Path):
    prog = tmp_path / "d.s"
    prog.write_text("mov eax, VALUE\nout 0xF4, eax\n")
    p = ringlab("run", str(prog), "-D", "VALUE=77", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["exit"]["code"] == 77


def test_run_program_that_does_not_assemble_exits_2_with_file_line_column(tmp_path: Path):
    prog = tmp_path / "bad.s"
    prog.write_text("nop\n    mov eax,\n")
    p = ringlab("run", str(prog))
    assert p.returncode == 2
    assert f"{prog}:2:" in p.stderr


def test_run_guest_triple_fault_is_still_process_exit_0(tmp_path: Path):
    prog = tmp_path / "tf.s"
    prog.write_text("vmcall\n")
    p = ringlab("run", str(prog), "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["exit"]["reason"] == "shutdown"
