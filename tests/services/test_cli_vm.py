"""The client commands (``vm ...``, ``top``, ``run --via``) as a person runs them: the ``ringlab``
command in a subprocess against a real deployment (Redis, the cpu and hypervisor services on
loopback), each mistake a newcomer makes answered by a clear message and the documented status."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ringlab.guestos import WORKLOADS
from ringlab.store import LocalRedis
from ringlab.store.server import free_port
from tests.services.conftest import Deployment, start_deployment, unique, usage_error

TOKEN = "cli-s3cret"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
RUNS_FOREVER = """
.include "lib.s"
main:
.again:
    call sys_yield
    jmp .again
"""
ANSWER = """
.include "lib.s"
main:
    mov ebx, msg
    call print
    mov eax, ANSWER
    call print_dec
    mov ebx, newline
    call print
    xor eax, eax
    ret
msg:     .asciz "the answer is "
newline: .asciz "\\n"
"""


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RINGLAB_HYPERVISOR", "RINGLAB_TOKEN")}
    return {**env, **extra}


def ringlab(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ringlab.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env if env is not None else clean_env(),
        stdin=subprocess.DEVNULL,
    )


def help_text(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """``ringlab ARGS --help``, whitespace collapsed."""
    from ringlab.cli import main

    with pytest.raises(SystemExit) as stopped:
        main([*args, "--help"])
    assert stopped.value.code == 0
    return capsys.readouterr().out


def no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stderr and "_InactiveRpcError" not in done.stderr, done.stderr


@pytest.fixture(scope="module")
def target(deployment: Deployment) -> str:
    return deployment.hypervisor_target


@pytest.fixture(scope="module")
def locked(redis_server: LocalRedis) -> Iterator[Deployment]:
    """A deployment that requires TOKEN."""
    d = start_deployment(redis_server, token=TOKEN, db=12)
    yield d
    d.hypervisor.stop(1)
    d.cpu.stop(1)


def program(tmp_path: Path, text: str, name: str = "prog.s") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# -- client flags ------------------------------------------------------------------------------------
def test_vm_list_with_hypervisor_after_the_action_is_accepted(target: str) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    after = ringlab("vm", "list", "--json", "--hypervisor", target, env=clean_env(RINGLAB_HYPERVISOR=nowhere))
    before = ringlab(
        "vm", "--hypervisor", target, "list", "--json", env=clean_env(RINGLAB_HYPERVISOR=nowhere)
    )
    assert after.returncode == 0 and before.returncode == 0, after.stderr + before.stderr
    assert isinstance(json.loads(after.stdout), list)
    # given after the action, it wins over one given before it
    both = ringlab("vm", "--hypervisor", nowhere, "list", "--hypervisor", target)
    assert both.returncode == 0, both.stderr


def test_client_commands_without_a_deployment_show_no_traceback(tmp_path: Path) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    prog = program(tmp_path, "out 0xF4, eax\n")
    for args in (
        ("vm", "list"),
        ("vm", "wait", "x"),
        ("vm", "events", "-f", "x"),
        ("top",),
    ):
        done = ringlab(*args, env=clean_env(RINGLAB_HYPERVISOR=nowhere))
        assert done.returncode == 3, (args, done.stderr)
        assert "UNAVAILABLE" in done.stderr and "ringlab up" in done.stderr, done.stderr
        no_traceback(done)
    via = ringlab("run", prog, "--via", nowhere)
    assert via.returncode == 3 and "UNAVAILABLE" in via.stderr, via.stderr
    no_traceback(via)


def test_wrong_token_and_missing_token_get_different_messages(locked: Deployment, tmp_path: Path) -> None:
    target = locked.hypervisor_target
    missing = ringlab("vm", "list", "--hypervisor", target)
    wrong = ringlab("vm", "list", "--hypervisor", target, "--token", "nope")
    wrong_env = ringlab("vm", "list", "--hypervisor", target, env=clean_env(RINGLAB_TOKEN="nope"))
    for done in (missing, wrong, wrong_env):
        assert done.returncode == 3 and "UNAUTHENTICATED" in done.stderr, done.stderr
        assert "--token" in done.stderr and "RINGLAB_TOKEN" in done.stderr, done.stderr
        no_traceback(done)
    assert "no token was sent" in missing.stderr and "refused" not in missing.stderr
    assert "the token sent was refused" in wrong.stderr and "no token was sent" not in wrong.stderr
    assert "the token sent was refused" in wrong_env.stderr
    for args in (
        ("vm", "list", "--token", TOKEN),
        ("vm", "--token", TOKEN, "list"),
        ("top", "--once", "--token", TOKEN),
    ):
        done = ringlab(*args, "--hypervisor", target)
        assert done.returncode == 0, (args, done.stderr)
    assert ringlab("vm", "list", "--hypervisor", target, env=clean_env(RINGLAB_TOKEN=TOKEN)).returncode == 0
    via = ringlab("run", program(tmp_path, "out 0xF4, eax\n"), "--via", target, "--token", TOKEN)
    assert via.returncode == 0, via.stderr


# -- vm create -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("flag", "value"),
    [("--weight", "-1"), ("--weight", "0"), ("--weight", "65536"), ("--weight", str(1 << 32)),
     ("--cap", "-5"), ("--cap", "101"), ("--weight", "many")],
)  # fmt: skip
def test_vm_create_with_weight_or_cap_out_of_range_is_a_usage_error(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = usage_error(capsys, "vm", "create", "x", flag, value, "--hypervisor", f"127.0.0.1:{free_port()}")
    assert flag in err and value in err, err


def test_vm_create_help_shows_defaults_choices_and_the_docker_image(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = " ".join(help_text(capsys, "vm", "create").split())
    assert all(name in text for name in WORKLOADS)
    for expected in ("default: hello", "default: 256", "65535", "default: native", "stock", "paravirt",
                     "DOCKER_IMAGE", "the Docker image", "--program FILE.s", "-D NAME[=VALUE]",
                     "ALREADY_EXISTS", "--hypervisor HOST:PORT", "--token TOKEN", "RINGLAB_TOKEN"):  # fmt: skip
        assert expected in text, expected


def test_every_service_command_and_vm_action_has_a_one_line_description(
    capsys: pytest.CaptureFixture[str],
) -> None:
    top = help_text(capsys)
    for command in ("up", "vm", "top"):
        assert re.search(rf"^\s+{command}\s+\S", top, re.M), top
    actions = help_text(capsys, "vm")
    for action in ("create", "list", "describe", "start", "pause", "resume", "stop", "destroy", "wait",
                   "console", "events", "snapshot", "restore", "migrate"):  # fmt: skip
        assert re.search(rf"^\s+{action}\s+\S", actions, re.M), action
        text = " ".join(help_text(capsys, "vm", action).split())
        assert "--hypervisor HOST:PORT" in text and "--token TOKEN" in text, action
    for words in (("up",), ("top",), ("vm", "wait")):
        assert "default" in " ".join(help_text(capsys, *words).split()), words


def test_second_vm_create_with_another_definition_is_refused(target: str) -> None:
    name = unique("twice")
    first = ringlab("vm", "create", name, "--workload", "hello", "--hypervisor", target)
    assert first.returncode == 0, first.stderr
    same = ringlab("vm", "create", name, "--workload", "hello", "--hypervisor", target)
    assert same.returncode == 0, same.stderr  # the same definition: idempotent
    other = ringlab(
        "vm", "create", name, "--workload", "compute", "--technique", "hw", "--hypervisor", target
    )
    assert other.returncode == 3 and "ALREADY_EXISTS" in other.stderr and name in other.stderr, other.stderr
    assert "destroy" in other.stderr
    no_traceback(other)


def test_vm_create_program_links_your_program_with_the_guest_kernel(target: str, tmp_path: Path) -> None:
    name = unique("mine")
    prog = program(tmp_path, ANSWER, "answer.s")
    made = ringlab("vm", "create", name, "--program", prog, "-D", "ANSWER=7", "--start", "--json",
                   "--hypervisor", target)  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)[0]["workload"] == "answer"
    waited = ringlab("vm", "wait", name, "--json", "--hypervisor", target)
    doc = json.loads(waited.stdout)
    assert doc["console"] == "the answer is 7\n"
    assert doc["exit"]["reason"] == "poweroff" and doc["exit"]["code"] == 0
    assert ringlab("vm", "wait", name, "--guest-status", "--hypervisor", target).returncode == 0


def test_vm_create_program_that_does_not_assemble_is_a_usage_error(target: str, tmp_path: Path) -> None:
    bad = ringlab("vm", "create", unique("bad"), "--program", program(tmp_path, ".include \"lib.s\"\nmain: frob\n"),
                  "--hypervisor", target)  # fmt: skip
    assert bad.returncode == 2 and "frob" in bad.stderr, bad.stderr
    missing = ringlab(
        "vm", "create", unique("bad"), "--program", str(tmp_path / "nope.s"), "--hypervisor", target
    )
    assert missing.returncode == 2 and "nope.s" in missing.stderr, missing.stderr
    both = ringlab("vm", "create", unique("bad"), "--program", program(tmp_path, ANSWER), "--workload", "hello",
                   "--hypervisor", target)  # fmt: skip
    assert both.returncode == 2 and "--program" in both.stderr, both.stderr
    for done in (bad, missing, both):
        no_traceback(done)


def test_vm_create_with_a_launcher_and_settings_it_cannot_carry_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ringlab.cli import main

    nowhere = f"127.0.0.1:{free_port()}"
    for extra in (["--cap", "50"], ["-D", "ROUNDS=2"], ["--program", program(tmp_path, ANSWER)]):
        code = main(["vm", "create", "x", "--launcher", "process", *extra, "--hypervisor", nowhere])
        err = capsys.readouterr().err
        assert code == 2 and "--launcher" in err and extra[0] in err, err


def test_vm_create_define_reaches_the_workload(target: str) -> None:
    name = unique("rounds")
    made = ringlab("vm", "create", name, "--workload", "compute", "-D", "ROUNDS=1", "--start",
                   "--hypervisor", target)  # fmt: skip
    assert made.returncode == 0, made.stderr
    doc = json.loads(ringlab("vm", "wait", name, "--json", "--hypervisor", target).stdout)
    assert WORKLOADS["compute"].check_output(doc["console"].encode(), {"ROUNDS": 1})
    assert not WORKLOADS["compute"].check_output(doc["console"].encode())  # not the default rounds


# -- vm wait / events ------------------------------------------------------------------------------------
def test_vm_wait_on_a_vm_never_started_says_so_at_once(target: str) -> None:
    name = unique("idle")
    assert ringlab("vm", "create", name, "--hypervisor", target).returncode == 0
    done = ringlab("vm", "wait", name, "--hypervisor", target, timeout=60)  # a safety net: it answers at once
    assert done.returncode == 3 and "FAILED_PRECONDITION" in done.stderr, done.stderr
    assert "not started" in done.stderr and "vm start" in done.stderr, done.stderr


def test_vm_wait_guest_status_of_a_stopped_vm_is_254(target: str, tmp_path: Path) -> None:
    name = unique("forever")
    made = ringlab("vm", "create", name, "--program", program(tmp_path, RUNS_FOREVER), "--start",
                   "--hypervisor", target)  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert ringlab("vm", "stop", name, "--hypervisor", target).returncode == 0
    done = ringlab("vm", "wait", name, "--guest-status", "--hypervisor", target)
    assert done.returncode == 254 and "stopped" in done.stdout, done.stdout + done.stderr
    assert ringlab("vm", "wait", name, "--hypervisor", target).returncode == 0  # without the flag: 0


def test_vm_events_follow_on_a_vm_that_has_ended_returns(target: str) -> None:
    name = unique("ended")
    assert ringlab("vm", "create", name, "--start", "--hypervisor", target).returncode == 0
    assert ringlab("vm", "wait", name, "--hypervisor", target).returncode == 0
    done = ringlab("vm", "events", "-f", name, "--hypervisor", target, timeout=60)  # safety net
    assert done.returncode == 0, done.stderr
    assert " ended " in done.stdout and " created " in done.stdout, done.stdout


def test_vm_events_follow_returns_when_the_vm_ends(target: str, tmp_path: Path) -> None:
    name = unique("follow")
    made = ringlab("vm", "create", name, "--program", program(tmp_path, RUNS_FOREVER), "--start",
                   "--hypervisor", target)  # fmt: skip
    assert made.returncode == 0, made.stderr
    follow = subprocess.Popen(
        [sys.executable, "-m", "ringlab.cli", "vm", "events", "-f", name, "--hypervisor", target],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        assert follow.stdout is not None
        line = follow.stdout.readline()  # it follows: a scheduling event of the running VM
        assert line, follow.stderr.read() if follow.stderr else ""
        assert ringlab("vm", "stop", name, "--hypervisor", target).returncode == 0
        out, err = follow.communicate(timeout=60)  # a safety net: it ends with the VM
    finally:
        follow.kill()
    assert follow.returncode == 0, err
    assert " stopped " in out or " ended " in out, out


# -- top -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["-1", "0", "soon"])
def test_top_interval_minus_one_is_a_usage_error(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert "--interval" in usage_error(capsys, "top", "--interval", value)


def test_top_shows_exits_by_reason_and_piped_tables_are_not_cut(target: str) -> None:
    name = unique("x" * 50)  # a name wider than its column at 80 columns
    assert (
        ringlab("vm", "create", name, "--workload", "io", "--start", "--hypervisor", target).returncode == 0
    )
    assert ringlab("vm", "wait", name, "--hypervisor", target).returncode == 0
    top = ringlab("top", "--once", "--hypervisor", target)
    assert top.returncode == 0, top.stderr
    assert "exits by reason" in top.stdout and "io_out" in top.stdout, top.stdout
    listed = ringlab("vm", "list", "--hypervisor", target)
    for done in (top, listed):
        assert name in done.stdout and "…" not in done.stdout, done.stdout


def _pty_run(
    args: list[str], when: str, then: Callable[[int], object], timeout: float = 60
) -> tuple[int, str]:
    """Run ringlab on an 80-column pseudo-terminal; once its output shows ``when``, call ``then``
    with the terminal's master side (to type on it); return the status and what it showed."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 200, 80, 0, 0))
    env = clean_env(TERM="xterm", COLUMNS="80", LINES="200")
    process = subprocess.Popen(
        [sys.executable, "-m", "ringlab.cli", *args], stdin=slave, stdout=slave, stderr=slave, env=env
    )
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout  # a safety net only
    done = False
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            if not done and when in ANSI.sub("", out.decode("utf-8", errors="replace")):
                then(master)
                done = True
            if process.poll() is not None and not ready:
                break
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)
    return code, ANSI.sub("", out.decode("utf-8", errors="replace"))


def test_top_quits_on_q_and_fits_80_columns(target: str) -> None:
    assert ringlab("vm", "create", unique("wide-" + "y" * 40), "--hypervisor", target).returncode == 0
    code, screen = _pty_run(
        ["top", "--hypervisor", target, "--interval", "0.2"],
        "exits by reason",
        lambda tty: os.write(tty, b"q"),
    )
    assert code == 0, screen
    assert "exits by reason" in screen and "pCPUs" in screen, screen
    assert "…" not in screen
    assert all(len(line) <= 80 for line in screen.replace("\r", "\n").splitlines()), screen


def test_vm_wait_shows_the_vms_status_while_it_waits_on_a_terminal(target: str, tmp_path: Path) -> None:
    name = unique("watched")
    made = ringlab("vm", "create", name, "--program", program(tmp_path, RUNS_FOREVER), "--start",
                   "--hypervisor", target)  # fmt: skip
    assert made.returncode == 0, made.stderr
    code, screen = _pty_run(
        ["vm", "wait", name, "--hypervisor", target],
        f"waiting for VM {name}:",
        lambda tty: ringlab("vm", "stop", name, "--hypervisor", target),
    )
    assert code == 0, screen
    assert f"{name}: stopped" in screen, screen


# -- snapshots ---------------------------------------------------------------------------------------
def test_vm_snapshot_then_restore_under_a_new_name_ends_as_the_vm_itself(target: str, tmp_path: Path) -> None:
    """``ringlab vm snapshot NAME FILE`` and ``ringlab vm restore FILE --name NEW``: the copy
    ends with the console the VM itself ends with (a VM created, snapshotted before it starts;
    tests/services/test_vm_snapshot.py snapshots VMs mid-run)."""
    name, snap = unique("snapme"), tmp_path / "vm.snap"
    made = ringlab("vm", "create", name, "--program", program(tmp_path, ANSWER), "-D", "ANSWER=42",
                   "--technique", "bt", "--hypervisor", target)  # fmt: skip
    assert made.returncode == 0, made.stderr
    taken = ringlab("vm", "snapshot", name, str(snap), "--json", "--hypervisor", target)
    assert taken.returncode == 0, taken.stderr
    report = json.loads(taken.stdout)
    assert report["file"] == str(snap) and report["bytes"] == snap.stat().st_size > 0
    copy = unique("copy")
    restored = ringlab("vm", "restore", str(snap), "--name", copy, "--json", "--hypervisor", target)
    assert restored.returncode == 0, restored.stderr
    (row,) = json.loads(restored.stdout)
    assert row["name"] == copy and row["technique"] == "bt"
    for vm in (copy, name):
        if vm == name:
            assert ringlab("vm", "start", name, "--hypervisor", target).returncode == 0
        done = ringlab("vm", "wait", vm, "--hypervisor", target)
        assert done.returncode == 0, done.stderr
        console = ringlab("vm", "console", vm, "--hypervisor", target)
        assert console.stdout == "the answer is 42\n", (vm, console.stdout)


def test_vm_restore_of_a_file_that_is_not_a_snapshot_is_a_usage_error(target: str, tmp_path: Path) -> None:
    bad = tmp_path / "notes.snap"
    bad.write_text("not a snapshot")
    done = ringlab("vm", "restore", str(bad), "--hypervisor", target)
    assert done.returncode == 2 and "not a Ringlab snapshot" in done.stderr and str(bad) in done.stderr
    no_traceback(done)
    missing = ringlab("vm", "restore", str(tmp_path / "nowhere.snap"), "--hypervisor", target)
    assert missing.returncode == 2 and "nowhere.snap" in missing.stderr, missing.stderr
    no_traceback(missing)


def test_vm_snapshot_of_an_ended_vm_is_refused_with_status_3(target: str, tmp_path: Path) -> None:
    name = unique("ended")
    assert ringlab("vm", "create", name, "--start", "--hypervisor", target).returncode == 0
    assert ringlab("vm", "wait", name, "--hypervisor", target).returncode == 0
    done = ringlab("vm", "snapshot", name, str(tmp_path / "x.snap"), "--hypervisor", target)
    assert done.returncode == 3 and "FAILED_PRECONDITION" in done.stderr and "has ended" in done.stderr
    assert not (tmp_path / "x.snap").exists()
    no_traceback(done)


@pytest.fixture(scope="module")
def elsewhere(redis_server: LocalRedis) -> Iterator[Deployment]:
    """Another deployment (its own database, hypervisor and pCPU): the destination of a move."""
    d = start_deployment(redis_server, db=13)
    yield d
    d.hypervisor.stop(1)
    d.cpu.stop(1)


def test_vm_migrate_moves_a_running_vm_and_prints_its_rounds(
    target: str, elsewhere: Deployment, tmp_path: Path
) -> None:
    """``ringlab vm migrate NAME --to HOST:PORT``: the rounds table (a full copy first, the
    stop-and-copy last, a bar of pages each), the downtime line; the VM ends at the destination
    with the console it would have had here, and is gone from here."""
    name, there = unique("mover"), elsewhere.hypervisor_target
    made = ringlab("vm", "create", name, "--workload", "multi", "-D", "ITERATIONS=3", "--technique", "hw",
                   "--cap", "10", "--start", "--hypervisor", target)  # fmt: skip
    assert made.returncode == 0, made.stderr
    moved = ringlab("vm", "migrate", name, "--to", there, "--bandwidth", "16", "--hypervisor", target)
    assert moved.returncode == 0, moved.stderr
    assert "pre-copy rounds" in moved.stdout and "stop" in moved.stdout and "#" in moved.stdout
    assert f"VM {name} runs at {there}" in moved.stdout and "downtime" in moved.stdout
    gone = ringlab("vm", "describe", name, "--hypervisor", target)
    assert gone.returncode == 3 and "NOT_FOUND" in gone.stderr
    assert ringlab("vm", "wait", name, "--hypervisor", there).returncode == 0
    console = ringlab("vm", "console", name, "--hypervisor", there).stdout
    from ringlab.guestos.build import build_image
    from ringlab.vmm import run_vm

    assert (
        console == run_vm(build_image("multi", "stock", {"ITERATIONS": 3}), technique="hw").console.decode()
    )


@pytest.mark.parametrize("option", [("--bandwidth", "0"), ("--target-downtime", "-1"), ("--max-rounds", "0")])
def test_vm_migrate_with_a_setting_out_of_range_is_a_usage_error(
    option: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    message = usage_error(capsys, "vm", "migrate", "x", "--to", "127.0.0.1:1", *option)
    assert option[0] in message
