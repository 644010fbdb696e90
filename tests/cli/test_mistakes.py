"""Every ordinary mistake with the in-process commands gets one clear line and status 2 (bad
usage), never a traceback; an unexpected error gets one line asking for a report and status 1,
with the traceback only under ``--debug`` or ``RINGLAB_DEBUG=1``.  One test per mistake, named
after it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ringlab.cli.exitstatus import EXIT_INTERNAL, EXIT_USAGE
from ringlab.cli.main import MAX_MEMORY, main
from tests.cli.conftest import HELLO, ringlab


def _usage_error(p: subprocess.CompletedProcess[str], *words: str) -> None:
    assert p.returncode == EXIT_USAGE, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr
    for word in words:
        assert word in p.stderr, (word, p.stderr)


# -- run: files that are not programs -------------------------------------------------------------------
def test_run_of_a_binary_file_that_is_not_an_image_is_a_usage_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)) * 4)
    _usage_error(ringlab("run", str(junk)), str(junk), "not an RL-32 image", "ringlab asm")


def test_run_of_a_file_that_is_not_utf8_is_a_usage_error(tmp_path: Path) -> None:
    prog = tmp_path / "latin1.s"
    prog.write_bytes(b"; caf\xe9\nmov eax, 1\nout 0xF4, eax\n")
    _usage_error(ringlab("run", str(prog)), str(prog), "not UTF-8", "0xe9")


def test_run_of_an_empty_file_is_a_usage_error(tmp_path: Path) -> None:
    prog = tmp_path / "empty.s"
    prog.write_bytes(b"")
    _usage_error(ringlab("run", str(prog)), str(prog), "empty")


def test_run_of_a_text_file_with_nul_bytes_is_a_usage_error(tmp_path: Path) -> None:
    prog = tmp_path / "nul.s"
    prog.write_bytes(b"mov eax, 1\n\0\0\0\0")
    _usage_error(ringlab("run", str(prog)), str(prog), "binary")


def test_run_of_a_truncated_image_is_a_usage_error_naming_the_file(tmp_path: Path) -> None:
    src = tmp_path / "p.s"
    src.write_text(HELLO)
    img = tmp_path / "p.img"
    assert ringlab("asm", str(src), "-o", str(img)).returncode == 0
    img.write_bytes(img.read_bytes()[:-3])
    _usage_error(ringlab("run", str(img)), str(img), "truncated")


def test_run_of_a_directory_is_a_usage_error(tmp_path: Path) -> None:
    _usage_error(ringlab("run", str(tmp_path)), str(tmp_path), "is not a regular file (a directory)")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_run_of_an_unreadable_file_is_a_usage_error(tmp_path: Path) -> None:
    prog = tmp_path / "secret.s"
    prog.write_text(HELLO)
    prog.chmod(0)
    _usage_error(ringlab("run", str(prog)), str(prog), "permission denied")


def test_asm_into_a_directory_that_does_not_exist_is_a_usage_error(tmp_path: Path) -> None:
    src = tmp_path / "p.s"
    src.write_text(HELLO)
    out = tmp_path / "no" / "such" / "dir" / "p.img"
    _usage_error(ringlab("asm", str(src), "-o", str(out)), str(out), "no such file")


def test_asm_of_an_image_is_a_usage_error(tmp_path: Path) -> None:
    src = tmp_path / "p.s"
    src.write_text(HELLO)
    img = tmp_path / "p.img"
    assert main(["asm", str(src), "-o", str(img)]) == 0
    _usage_error(ringlab("asm", str(img), "-o", str(tmp_path / "again.img")), "image already")


def test_disasm_of_assembly_source_is_a_usage_error_naming_the_file(tmp_path: Path) -> None:
    src = tmp_path / "p.s"
    src.write_text(HELLO)
    _usage_error(ringlab("disasm", str(src)), str(src), "not an RL-32 image")


def test_asm_of_a_file_that_is_not_utf8_names_its_line_and_column(tmp_path: Path) -> None:
    src = tmp_path / "latin1.s"
    src.write_bytes(b"mov eax, 1\n; caf\xe9\n")
    _usage_error(ringlab("asm", str(src)), f"{src}:2:6:", "not UTF-8", "0xe9")


@pytest.mark.parametrize("command", ["asm", "run", "disasm"])
def test_a_symlink_to_dev_zero_is_refused_not_read_forever(tmp_path: Path, command: str) -> None:
    link = tmp_path / "zero.s"
    link.symlink_to("/dev/zero")
    _usage_error(ringlab(command, str(link)), str(link), "not a regular file", "character device")


def test_run_of_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.s"
    os.mkfifo(fifo)
    _usage_error(ringlab("run", str(fifo)), str(fifo), "not a regular file", "FIFO")


def test_run_of_a_source_file_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    from ringlab.asm.limits import MAX_SOURCE_BYTES

    big = tmp_path / "big.s"
    big.write_bytes(b"; " + b"x" * MAX_SOURCE_BYTES + b"\n")
    _usage_error(ringlab("run", str(big)), str(big), "over the")


# -- run: options ---------------------------------------------------------------------------------------
def test_run_memory_beyond_the_maximum_is_a_usage_error(tmp_path: Path) -> None:
    prog = tmp_path / "p.s"
    prog.write_text(HELLO)
    p = ringlab("run", str(prog), "--memory", "99999999999999")
    _usage_error(p, "--memory", "1G")
    assert "MemoryError" not in p.stderr


def test_run_memory_of_exactly_the_maximum_is_accepted() -> None:
    """Parsed only: running it would take a GiB of this machine's memory."""
    from ringlab.cli.main import build_parser

    assert build_parser().parse_args(["run", "p.s", "--memory", "1G"]).memory == MAX_MEMORY == 1 << 30


def test_run_memory_one_byte_beyond_the_maximum_is_a_usage_error(tmp_path: Path) -> None:
    prog = tmp_path / "p.s"
    prog.write_text(HELLO)
    with pytest.raises(SystemExit) as exc:
        main(["run", str(prog), "--memory", str(MAX_MEMORY + 1)])
    assert exc.value.code == EXIT_USAGE


def test_run_memory_that_is_not_a_size_is_a_usage_error(tmp_path: Path) -> None:
    prog = tmp_path / "p.s"
    prog.write_text(HELLO)
    _usage_error(ringlab("run", str(prog), "--memory", "lots"), "4M")


def test_run_input_with_characters_beyond_latin_1_is_a_usage_error(tmp_path: Path) -> None:
    prog = tmp_path / "p.s"
    prog.write_text(HELLO)
    _usage_error(ringlab("run", str(prog), "--input", "5 \u20ac"), "U+20AC")


def test_run_defines_with_an_image_is_a_usage_error(tmp_path: Path) -> None:
    src = tmp_path / "p.s"
    src.write_text(HELLO)
    img = tmp_path / "p.img"
    assert main(["asm", str(src), "-o", str(img)]) == 0
    _usage_error(ringlab("run", str(img), "-D", "X=1"), "-D", "image")


# -- boot -------------------------------------------------------------------------------------------------
def test_boot_with_both_program_and_workload_is_a_usage_error(tmp_path: Path) -> None:
    prog = tmp_path / "init.s"
    prog.write_text('.include "lib.s"\nmain:\n    xor eax, eax\n    ret\n')
    _usage_error(ringlab("boot", "--program", str(prog), "--workload", "hello"), "--program", "--workload")


def test_boot_program_that_does_not_assemble_names_the_users_file(tmp_path: Path) -> None:
    prog = tmp_path / "mine.s"
    prog.write_text('.include "lib.s"\nmain:\n    mvo eax, 1\n    ret\n')
    _usage_error(ringlab("boot", "--program", str(prog)), f"{prog}:3:5:", "mvo")


def test_boot_program_that_is_not_utf8_is_a_usage_error(tmp_path: Path) -> None:
    prog = tmp_path / "mine.s"
    prog.write_bytes(b"; na\xefve\nmain:\n    ret\n")
    _usage_error(ringlab("boot", "--program", str(prog)), str(prog), "not UTF-8")


# -- bench: refused at parse time, before anything runs -----------------------------------------------
@pytest.mark.parametrize(
    "args, words",
    [
        (["--suite", "contention", "--vms", "0"], ["--vms", "from 1"]),
        (["--suite", "contention", "--vms", "-3"], ["--vms"]),
        (["--suite", "contention", "--weights", "a,b"], ["--weights", "'a'"]),
        (["--suite", "contention", "--weights", "256,-1"], ["--weights", "-1"]),
        (["--suite", "contention", "--weights", "0,256"], ["--weights", "from 1"]),
        (["--suite", "contention", "--weights", "1,,2"], ["--weights"]),
        (["--only", "nope"], ["nope", "syscall", "spawnwait"]),
        (["--techniques", "nope"], ["nope", "trap-emulate", "hw+np"]),
        (["--suite", "speed", "--rounds", "0"], ["--rounds", "from 1"]),
    ],
    ids=[
        "vms_0",
        "vms_negative",
        "weights_not_numbers",
        "weights_negative",
        "weights_zero",
        "weights_empty_item",
        "only_an_unknown_benchmark",
        "techniques_an_unknown_column",
        "rounds_0",
    ],
)
def test_bench_option_with_a_bad_value_is_a_usage_error_before_anything_runs(
    args: list[str], words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """argparse refuses it (SystemExit 2) while parsing: no suite has started."""
    with pytest.raises(SystemExit) as exc:
        main(["bench", *args])
    assert exc.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    for word in words:
        assert word in err, (word, err)


def test_bench_contention_vms_0_is_a_usage_error_from_the_command(tmp_path: Path) -> None:
    _usage_error(ringlab("bench", "--suite", "contention", "--vms", "0"), "--vms")


def test_bench_weights_not_numbers_is_a_usage_error_from_the_command() -> None:
    _usage_error(ringlab("bench", "--suite", "contention", "--weights", "a,b"), "--weights")


def test_bench_only_an_unknown_name_is_a_usage_error_listing_the_valid_ones() -> None:
    _usage_error(ringlab("bench", "--only", "nope"), "nope", "callret", "compute")


def test_bench_techniques_an_unknown_name_is_a_usage_error_listing_the_valid_ones() -> None:
    _usage_error(ringlab("bench", "--techniques", "nope"), "nope", "native", "hw+np")


def test_bench_vms_that_disagree_with_the_weights_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["bench", "--suite", "contention", "--vms", "3", "--weights", "1,2"]) == EXIT_USAGE
    assert "--weights" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--vms", "4"], "--vms"),
        (["--weights", "1,2"], "--weights"),
        (["--suite", "speed", "--only", "syscall"], "--only"),
        (["--suite", "efficiency", "--techniques", "bt"], "--techniques"),
        (["--rounds", "3"], "--rounds"),
        (["--suite", "speed", "--plot", "x.png"], "--plot"),
    ],
)
def test_bench_option_of_another_suite_is_a_usage_error_not_silently_ignored(
    args: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", *args]) == EXIT_USAGE
    assert flag in capsys.readouterr().err


# -- unexpected errors -------------------------------------------------------------------------------------
# A real failure that no input of a user can cause: a recursion limit too low for the program.
_CRASH = """
import sys
from ringlab.cli import main
sys.setrecursionlimit(50)
sys.exit(main(sys.argv[1:]))
"""


def _crash(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "RINGLAB_DEBUG"}
    return subprocess.run(
        [sys.executable, "-c", _CRASH, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**environ, **(env or {})},
    )


def test_an_unexpected_error_prints_one_line_asking_for_a_report_and_exits_1() -> None:
    p = _crash("isa")
    assert p.returncode == EXIT_INTERNAL
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("ringlab: internal error: RecursionError: ")
    assert "this is a bug; please report it with the output of 'ringlab --debug ...'" in lines[0]


def test_an_unexpected_error_under_debug_prints_the_traceback() -> None:
    p = _crash("--debug", "isa")
    assert p.returncode == EXIT_INTERNAL
    assert "Traceback (most recent call last)" in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("ringlab: internal error: RecursionError")


def test_an_unexpected_error_with_ringlab_debug_1_prints_the_traceback() -> None:
    p = _crash("isa", env={"RINGLAB_DEBUG": "1"})
    assert p.returncode == EXIT_INTERNAL
    assert "Traceback (most recent call last)" in p.stderr


def test_ringlab_debug_0_does_not_print_the_traceback() -> None:
    p = _crash("isa", env={"RINGLAB_DEBUG": "0"})
    assert p.returncode == EXIT_INTERNAL
    assert "Traceback" not in p.stderr


def test_a_usage_error_under_debug_still_exits_2_with_its_message(tmp_path: Path) -> None:
    prog = tmp_path / "empty.s"
    prog.write_bytes(b"")
    p = ringlab("--debug", "run", str(prog))
    assert p.returncode == EXIT_USAGE
    assert p.stderr.strip().splitlines()[-1].startswith(f"ringlab: {prog}: the file is empty")


def test_bench_efficiency_rounds_not_beyond_its_short_run_is_a_usage_error() -> None:
    done = ringlab("bench", "--suite", "efficiency", "--rounds", "32")
    assert done.returncode == 2
    assert "give more than 32" in done.stderr and "Traceback" not in done.stderr


def test_bench_repeats_for_a_suite_that_has_none_is_a_usage_error() -> None:
    done = ringlab("bench", "--suite", "speed", "--repeats", "2")
    assert done.returncode == 2
    assert "--repeats applies to --suite efficiency, --suite micro and --suite recorder only" in done.stderr
