"""``ringlab boot``: the kernel flavour follows the technique unless named; a stock kernel
refused under pv says which flag to use; ``--program FILE.s`` runs your own user program as init."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ringlab.cli import main

HELLO_OUTPUT = "Hello from ring 3! I am pid 1.\n"

USER_PROGRAM = """\
.include "lib.s"                    ; the guest OS's user runtime: _start calls main, then exit

main:
    mov ebx, greeting               ; write(buf, len) through the kernel (int 0x80)
    mov ecx, greeting_end - greeting
    call sys_write
    call sys_getpid
    call print_dec                  ; lib.s's line-buffered printing
    mov ebx, newline
    call print
    xor eax, eax
    ret

greeting:     .ascii "my own init, pid "
greeting_end:
newline:      .asciz "\\n"
"""


def test_boot_under_pv_without_a_kernel_boots_the_paravirt_kernel(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["boot", "--workload", "hello", "--technique", "pv", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["exit"]["reason"] == "poweroff"
    assert doc["console"] == HELLO_OUTPUT


def test_boot_under_pv_with_the_stock_kernel_is_refused_advising_kernel_paravirt(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["boot", "--workload", "hello", "--technique", "pv", "--kernel", "stock"]) == 0
    err = capsys.readouterr().err
    assert "exit refused" in err
    assert "ringlab boot --kernel paravirt --technique pv" in err


def test_boot_without_a_kernel_under_another_technique_boots_the_stock_kernel(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The paravirt kernel does not get far outside pv (its first hypercall, int 0x82, has no
    handler: a triple fault), so hello printing its greeting under bt shows the stock kernel ran."""
    assert main(["boot", "--workload", "hello", "--technique", "bt", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["console"] == HELLO_OUTPUT
    assert main(["boot", "--workload", "hello", "--technique", "bt", "--kernel", "paravirt", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["exit"]["reason"] == "shutdown"


def test_boot_program_runs_your_user_program_as_init(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prog = tmp_path / "mine.s"
    prog.write_text(USER_PROGRAM)
    assert main(["boot", "--program", str(prog)]) == 0
    out = capsys.readouterr()
    assert out.out == "my own init, pid 1\n"
    assert "exit poweroff code 0" in out.err


@pytest.mark.parametrize("technique", ["hw", "pv"])
def test_boot_program_under_a_technique_prints_the_same(
    technique: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prog = tmp_path / "mine.s"
    prog.write_text(USER_PROGRAM)
    assert main(["boot", "--program", str(prog), "--technique", technique, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["console"] == "my own init, pid 1\n"
    assert doc["exit"]["reason"] == "poweroff"


def test_boot_program_takes_defines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prog = tmp_path / "count.s"
    prog.write_text(
        '.include "lib.s"\nmain:\n    mov eax, COUNT\n    call print_dec\n    xor eax, eax\n    ret\n'
    )
    assert main(["boot", "--program", str(prog), "-D", "COUNT=42", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["console"] == "42"
