"""Every shell command README.md shows runs, as a user would run it, so the README cannot drift.

The ```sh blocks are parsed (not copied here): a command added to the README is run by this test.
Commands run in order, through bash, in a scratch folder that has the repository's ``examples``
and ``scripts`` beside it. Each must exit 0, or the status its comment names (``# ... status
253``). Left out: the Docker section and Docker commands (the e2e suite runs them), ``pip
install`` and ``scripts/check`` themselves. ``ringlab up`` serves until Ctrl-C, so the test starts
it in the background on a free port, points the later commands at it (``RINGLAB_HYPERVISOR``, and
the README's ``127.0.0.1:50051`` replaced by that address) and sends it SIGTERM at the end.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ringlab.store.server import free_port

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DEFAULT_ADDRESS = "127.0.0.1:50051"


def _sh_blocks() -> list[tuple[str, int, list[str]]]:
    """(section heading, first line number, lines) of every ```sh block."""
    out: list[tuple[str, int, list[str]]] = []
    section = ""
    lines = README.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            section = line.lstrip("#").strip()
        if line.strip() == "```sh":
            body: list[str] = []
            start = i + 2
            i += 1
            while not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            out.append((section, start, body))
        i += 1
    return out


def _skipped(command: str) -> bool:
    c = command.strip()
    return (
        c.startswith(("docker", "scripts/docker-", "REDIS_IMAGE=", "scripts/check", "pip install"))
        or "--launcher docker" in c
    )


def commands() -> list[tuple[int, str]]:
    """(README line, command) in order; a heredoc is one command with its body."""
    out: list[tuple[int, str]] = []
    for section, start, body in _sh_blocks():
        if "docker" in section.lower():
            continue
        k = 0
        while k < len(body):
            line = body[k]
            number = start + k
            k += 1
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            heredoc = re.search(r"<<-?\s*'?(\w+)'?", line)
            if heredoc:
                end = heredoc.group(1)
                text = [line]
                while k < len(body):
                    text.append(body[k])
                    k += 1
                    if body[k - 1].strip() == end:
                        break
                out.append((number, "\n".join(text)))
                continue
            # `pip install -e . && ringlab demo`: the part after the install
            parts = [p.strip() for p in line.split("&&")]
            kept = [p for p in parts if not _skipped(p)]
            if kept:
                out.append((number, " && ".join(kept)))
    return out


def _expected_status(command: str) -> int:
    comment = command.partition("#")[2] if "<<" not in command else ""
    m = re.search(r"\bstatus (\d+)", comment)
    return int(m.group(1)) if m else 0


def test_the_readme_shows_the_two_first_commands() -> None:
    first = _sh_blocks()[0][2]
    assert first[0].startswith("pip install -e . && ringlab demo")
    assert first[1].startswith("scripts/check")


def test_the_parser_finds_the_commands_a_user_runs() -> None:
    found = [c for _n, c in commands()]
    assert "ringlab demo" in found[0]
    assert any(c.startswith("cat > hello.s <<'EOF'") and c.rstrip().endswith("EOF") for c in found)
    assert any(c.startswith("ringlab up") for c in found)
    assert not any(c.startswith(("docker", "pip")) for c in found)


@pytest.mark.slow
def test_every_command_of_the_readme_works(tmp_path: Path) -> None:
    for name in ("examples", "scripts"):
        (tmp_path / name).symlink_to(ROOT / name)
    address = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, COLUMNS="100", XDG_STATE_HOME=str(tmp_path / "state"), MPLBACKEND="Agg")
    env.pop("RINGLAB_TOKEN", None)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    up: subprocess.Popen[str] | None = None
    try:
        for number, command in commands():
            where = f"README.md:{number}: {command.splitlines()[0]}"
            if command.startswith("ringlab up"):
                assert up is None, f"{where}: a second 'ringlab up'"
                argv = ["ringlab", "up", "--listen", address]
                env["RINGLAB_HYPERVISOR"] = address
                log = tmp_path / "up.log"
                up = subprocess.Popen(
                    argv, cwd=tmp_path, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True
                )
                deadline = time.monotonic() + 120
                while "Serving until" not in log.read_text():
                    assert up.poll() is None and time.monotonic() < deadline, (
                        f"{where}: did not start:\n{log.read_text()}"
                    )
                    time.sleep(0.2)
                continue
            if up is not None:
                command = command.replace(DEFAULT_ADDRESS, address)
            done = subprocess.run(
                ["bash", "-e", "-o", "pipefail", "-c", command],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
            )
            expected = _expected_status(command)
            assert done.returncode == expected, (
                f"{where}: exit status {done.returncode}, the README promises {expected}\n"
                f"stdout:\n{done.stdout[-2000:]}\nstderr:\n{done.stderr[-2000:]}"
            )
    finally:
        if up is not None:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(timeout=60)
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait()
