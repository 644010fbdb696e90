"""``--guest-status`` (run, boot): the process status says how the guest ended, as QEMU's
isa-debug-exit lets a guest choose it; without it the contract is unchanged (0 when the run
itself worked).  The table is ``ringlab.cli.exitstatus``."""

from __future__ import annotations

from pathlib import Path

import pytest

from ringlab.cli import exitstatus, main
from ringlab.cli.exitstatus import (
    GUEST_HALT,
    GUEST_LIMIT,
    GUEST_REFUSED,
    GUEST_SHUTDOWN,
    GUEST_STOPPED,
    guest_status,
)
from tests.cli.conftest import ringlab

PROGRAMS = {
    "poweroff_3": "mov eax, 3\nout 0xF4, eax\n",
    "poweroff_0x103": "mov eax, 0x103\nout 0xF4, eax\n",  # the device keeps the low byte
    "halt": "cli\nhlt\n",
    "triple_fault": "vmcall\n",
    "spin": "spin: jmp spin\n",
}


def _program(tmp_path: Path, name: str) -> str:
    path = tmp_path / f"{name}.s"
    path.write_text(PROGRAMS[name])
    return str(path)


def test_the_documented_statuses() -> None:
    assert (exitstatus.EXIT_OK, exitstatus.EXIT_INTERNAL, exitstatus.EXIT_USAGE) == (0, 1, 2)
    assert (exitstatus.EXIT_DEPLOYMENT, exitstatus.EXIT_INTERRUPTED) == (3, 130)
    assert (GUEST_HALT, GUEST_SHUTDOWN, GUEST_LIMIT, GUEST_REFUSED, GUEST_STOPPED) == (
        250,
        251,
        252,
        253,
        254,
    )
    doc = exitstatus.__doc__ or ""
    for status in ("250", "251", "252", "253", "254", "130"):
        assert status in doc


def test_guest_status_of_every_end() -> None:
    assert guest_status("poweroff", 0) == 0
    assert guest_status("poweroff", 3) == 3
    assert guest_status("poweroff", 255) == 255
    assert guest_status("poweroff", None) == 0
    assert guest_status("halt", None) == GUEST_HALT
    assert guest_status("halted", None) == GUEST_HALT
    assert guest_status("shutdown", None) == GUEST_SHUTDOWN
    assert guest_status("limit", None) == GUEST_LIMIT
    assert guest_status("refused", None) == GUEST_REFUSED
    assert guest_status("stopped", None) == GUEST_STOPPED


def test_guest_status_of_a_vm_still_running_is_an_error() -> None:
    with pytest.raises(ValueError, match="running"):
        guest_status("running", None)


def test_run_guest_status_is_the_power_off_code_3(tmp_path: Path) -> None:
    p = ringlab("run", _program(tmp_path, "poweroff_3"), "--guest-status")
    assert p.returncode == 3, p.stderr
    assert "exit poweroff code 3" in p.stderr


def test_run_without_guest_status_is_0_whatever_the_guest_did(tmp_path: Path) -> None:
    for name in PROGRAMS:
        args = ["run", _program(tmp_path, name), "--max-instructions", "1000"]
        assert ringlab(*args).returncode == 0, name


def test_run_guest_status_keeps_the_low_byte_of_the_code(tmp_path: Path) -> None:
    assert ringlab("run", _program(tmp_path, "poweroff_0x103"), "--guest-status").returncode == 3


def test_run_guest_status_of_a_halted_guest(tmp_path: Path) -> None:
    p = ringlab("run", _program(tmp_path, "halt"), "--guest-status")
    assert p.returncode == GUEST_HALT, p.stderr
    assert "exit halt" in p.stderr


def test_run_guest_status_of_a_triple_fault(tmp_path: Path) -> None:
    p = ringlab("run", _program(tmp_path, "triple_fault"), "--guest-status", "--json")
    assert p.returncode == GUEST_SHUTDOWN, p.stderr
    assert '"reason": "shutdown"' in p.stdout


def test_run_guest_status_of_the_instruction_limit(tmp_path: Path) -> None:
    p = ringlab("run", _program(tmp_path, "spin"), "--guest-status", "--max-instructions", "100")
    assert p.returncode == GUEST_LIMIT, p.stderr
    assert "exit limit" in p.stderr


def test_boot_guest_status_of_a_stock_kernel_refused_under_pv() -> None:
    p = ringlab("boot", "--workload", "hello", "--technique", "pv", "--kernel", "stock", "--guest-status")
    assert p.returncode == GUEST_REFUSED, p.stderr
    assert "exit refused" in p.stderr


def test_boot_guest_status_of_a_clean_power_off_is_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["boot", "--workload", "hello", "--guest-status"]) == 0
    assert "exit poweroff code 0" in capsys.readouterr().err


def test_boot_guest_status_of_the_instruction_limit(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["boot", "--workload", "hello", "--guest-status", "--max-instructions", "500"]) == GUEST_LIMIT


def test_usage_errors_keep_status_2_under_guest_status(tmp_path: Path) -> None:
    bad = tmp_path / "bad.s"
    bad.write_text("mvo eax, 1\n")
    assert ringlab("run", str(bad), "--guest-status").returncode == 2
