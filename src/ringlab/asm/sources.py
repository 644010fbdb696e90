"""Reading source files: regular files of bounded size only, decoded as UTF-8 with errors that
name file:line:column.

``.include`` and ``assemble_file`` read through here, so a symlink to /dev/zero, a FIFO, a
directory or a huge file is refused before (or instead of) being read, and a file that is not
UTF-8 is an ``AssemblyError`` pointing at its first bad byte, never a ``UnicodeDecodeError``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ringlab.asm.limits import MAX_SOURCE_BYTES, size_text
from ringlab.errors import AssemblyError

__all__ = ["SourceRefused", "decode_source", "read_source_bytes", "file_identity"]

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


class SourceRefused(Exception):
    """The file exists but is not one the assembler reads; ``reason`` completes a sentence
    about it ("is not a regular file (a directory); ...")."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _check(info: os.stat_result, limit: int = MAX_SOURCE_BYTES) -> None:
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _KINDS if test(info.st_mode)), "a special file")
        raise SourceRefused(f"is not a regular file ({kind}); only regular files are read as source")
    if info.st_size > limit:
        raise SourceRefused(_too_big(info.st_size, limit))


def _too_big(size: int, limit: int) -> str:
    return f"is {size:,} bytes, over the {size_text(limit)} a source file may hold"


def file_identity(path: Path) -> tuple[int, int]:
    """The (device, inode) pair of the file ``path`` names (following symlinks): two names of
    one file give one identity.  Raises OSError or SourceRefused."""
    info = os.stat(path)
    _check(info)
    return (info.st_dev, info.st_ino)


def read_source_bytes(path: Path, limit: int = MAX_SOURCE_BYTES) -> bytes:
    """The bytes of the regular file at ``path``, at most ``limit`` of them (``MAX_SOURCE_BYTES``
    unless the caller reads something else, such as an image, through the same checks).

    Raises OSError (FileNotFoundError, PermissionError...) as ``open`` would, or SourceRefused.
    The file is checked before it is opened (opening a device may do something), and again once
    open and while reading, in case it was replaced or grows meanwhile; it is opened without
    blocking, so a FIFO put in its place cannot hang the assembler."""
    _check(os.stat(path), limit)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    with open(os.open(path, flags), "rb") as f:
        _check(os.fstat(f.fileno()), limit)
        data = f.read(limit + 1)
    if len(data) > limit:
        raise SourceRefused(_too_big(len(data), limit))
    return data


def decode_source(blob: bytes, filename: str) -> str:
    """``blob`` as UTF-8 text, or an AssemblyError at the line and column (in characters, as
    every assembler message counts them) of the first byte that is not UTF-8."""
    try:
        return blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        start = exc.start
    before = blob[:start].decode("utf-8")  # valid up to the first bad byte
    lines = before.splitlines(keepends=True)  # line breaks as the assembler counts them
    if not lines or lines[-1].splitlines()[0] != lines[-1]:
        line, column = len(lines) + 1, 1  # the bad byte starts a line
    else:
        line, column = len(lines), len(lines[-1]) + 1
    hint = "save the file as UTF-8"
    if blob.startswith((b"\xff\xfe", b"\xfe\xff")):
        hint = f"it starts with a UTF-16 byte order mark: {hint}"
    raise AssemblyError(
        filename, line, column, f"not UTF-8 text: byte {blob[start]:#04x} cannot be decoded ({hint})"
    )
