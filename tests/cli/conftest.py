"""Helpers for the command-line tests: run ``ringlab`` as a person does, in a real process, with
its output piped or on a pseudo-terminal."""

from __future__ import annotations

import errno
import os
import pty
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass

HELLO = """\
.entry start
msg:    .asciz "hi\\n"
start:  mov esi, msg
.next:  movzx eax, byte [esi]
        test eax, eax
        je .done
        out 0x3F8, eax
        inc esi
        jmp .next
.done:  out 0xF4, eax
"""
"""A bare program: prints "hi" and powers off with code 0."""


def ringlab(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 120, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``ringlab ARGS`` in a fresh process, stdout and stderr piped."""
    return subprocess.run(
        [sys.executable, "-m", "ringlab.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


@dataclass
class TerminalRun:
    returncode: int
    terminal: str
    """Everything written to the terminal (stdout and stderr, interleaved, escapes included)."""


def ringlab_on_a_terminal(
    *args: str, columns: int = 80, env: Mapping[str, str] | None = None, timeout: float = 120
) -> TerminalRun:
    """``ringlab ARGS`` with stdout and stderr on a pseudo-terminal ``columns`` wide."""
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    environ = {**os.environ, "COLUMNS": str(columns), "TERM": "xterm-256color", **(env or {})}
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        environ.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ringlab.cli", *args], stdin=slave, stdout=slave, stderr=slave, env=environ
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError as exc:  # EIO: the other side closed
            if exc.errno != errno.EIO:
                raise
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    returncode = proc.wait(timeout=timeout)
    return TerminalRun(returncode, b"".join(chunks).decode("utf-8", "replace"))


def visible_lines(terminal_text: str) -> list[str]:
    """The lines a terminal shows, less escape sequences and carriage-return redraws."""
    import re

    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07", "", terminal_text)
    lines = []
    for raw in text.replace("\r\n", "\n").split("\n"):
        lines.append(raw.rsplit("\r", 1)[-1])
    return lines
