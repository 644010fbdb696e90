"""A loadable RL-32 image: bytes at a base address, an entry point and the symbols.

On disk (``ringlab asm -o FILE``) an image is a small binary format, little-endian:

    offset  size  field
    0       4     magic b"RL32"
    4       4     version (1)
    8       4     base address
    12      4     entry address
    16      4     length of the data (n)
    20      4     length of the symbol table (s)
    24      n     data, loaded at the base address
    24+n    s     symbols: UTF-8 lines "name address-in-hex\\n"
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from ringlab.errors import ImageError

__all__ = ["MAGIC", "Image"]

MAGIC = b"RL32"
"""The first four bytes of every image file: how ``ringlab run`` tells an image from source."""
_MAGIC = MAGIC
_HEADER = struct.Struct("<4sIIIII")


@dataclass(frozen=True)
class Image:
    """Bytes to load at ``base``; execution starts at ``entry``."""

    base: int
    data: bytes
    entry: int
    symbols: dict[str, int] = field(default_factory=dict)

    @property
    def end(self) -> int:
        return self.base + len(self.data)

    def to_bytes(self) -> bytes:
        table = "".join(f"{name} {addr:x}\n" for name, addr in sorted(self.symbols.items())).encode()
        return _HEADER.pack(_MAGIC, 1, self.base, self.entry, len(self.data), len(table)) + self.data + table

    @classmethod
    def from_bytes(cls, blob: bytes) -> Image:
        if len(blob) < _HEADER.size or blob[:4] != _MAGIC:
            raise ImageError(
                "not an RL-32 image (it does not start with b'RL32'; make one with 'ringlab asm')"
            )
        _magic, version, base, entry, n, s = _HEADER.unpack_from(blob)
        if version != 1:
            raise ImageError(
                f"image format version {version} is not supported (this Ringlab reads version 1)"
            )
        if len(blob) != _HEADER.size + n + s:
            raise ImageError(f"image is truncated or has trailing bytes: header says {n}+{s} bytes after it")
        data = blob[_HEADER.size : _HEADER.size + n]
        symbols: dict[str, int] = {}
        try:
            for line in blob[_HEADER.size + n :].decode().splitlines():
                name, addr = line.split()
                symbols[name] = int(addr, 16)
        except ValueError as exc:
            raise ImageError(f"image symbol table is malformed: {exc}") from exc
        return cls(base, data, entry, symbols)

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.to_bytes())

    @classmethod
    def load(cls, path: str | Path) -> Image:
        return cls.from_bytes(Path(path).read_bytes())
