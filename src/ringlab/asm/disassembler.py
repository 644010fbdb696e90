"""The RL-32 disassembler: an ``Image`` back to source that assembles to the same image.

A linear sweep decodes with ``isa.decode``.  Whatever does not decode -- or would not encode
back to the same bytes -- is printed as ``.byte`` (long zero runs as ``.space``), so the round
trip is exact whatever the image holds.  Branch targets, the entry point and the image's
symbols become labels; a decoded instruction that would straddle one of those addresses is
printed as bytes instead, so the label can sit where it belongs (data that happens to decode
must not swallow the start of the code after it).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from ringlab import isa
from ringlab.asm.operands import is_reserved_name
from ringlab.image import Image

__all__ = ["disassemble", "format_instruction"]

_TARGET_BRANCHES = frozenset({"jmp", "call", *isa.JCC})
"""Branches whose immediate operand is a code address (shown as its label when there is one)."""
_LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")
_COMMENT_COLUMN = 32
_BYTES_PER_LINE = 8
_MIN_SPACE_RUN = 16
_MAX_SWEEPS = 16
_ZEROS = re.compile(b"\0+")


def format_instruction(insn: isa.Instruction, labels: Mapping[int, str] | None = None) -> str:
    """One instruction in assembler syntax, lower case (``mov eax, [ebx + 8]``).

    ``labels`` maps addresses to names for branch targets; other immediates print as numbers.
    """
    spec = insn.spec
    operands = iter(insn.operands)
    parts: list[str] = []
    for kind in isa.FORMS[spec.form].operands:
        if kind in ("ecx", "edx", "cs"):
            parts.append(kind)
            continue
        parts.append(_operand(kind, next(operands), spec, labels))
    return spec.mnemonic + (" " + ", ".join(parts) if parts else "")


def _operand(kind: str, value: isa.Operand, spec: isa.Spec, labels: Mapping[int, str] | None) -> str:
    if isinstance(value, isa.Mem):
        return ("byte " if kind == "m8" else "") + _memory(value)
    if kind == "r":
        return isa.REGISTERS[value]
    if kind == "cr":
        return f"cr{value}"
    if kind == "i8":
        return str(value)
    if labels is not None and spec.mnemonic in _TARGET_BRANCHES and value in labels:
        return labels[value]
    return _immediate(value)


def _magnitude(value: int) -> str:
    return str(value) if value < 256 else f"{value:#x}"


def _immediate(value: int) -> str:
    """Small numbers in decimal, big ones in hex, and -1..-256 as negatives (``add esp, -4``)."""
    if value >= 0xFFFFFF00:
        return str(value - (1 << 32))
    return _magnitude(value)


def _memory(mem: isa.Mem) -> str:
    if mem.base is None:
        return f"[{mem.disp:#x}]"
    base = isa.REGISTERS[mem.base]
    if mem.disp == 0:
        return f"[{base}]"
    if mem.disp & 0x80000000:
        return f"[{base} - {_magnitude((1 << 32) - mem.disp)}]"
    return f"[{base} + {_magnitude(mem.disp)}]"


@dataclass(frozen=True, slots=True)
class _Unit:
    """One decoded instruction, or one byte that is printed as data (``insn`` None)."""

    address: int
    insn: isa.Instruction | None
    length: int


def _sweep(data: bytes, base: int, boundaries: list[int]) -> list[_Unit]:
    """Decode linearly; an instruction never crosses a boundary (a label must start a unit)."""
    units: list[_Unit] = []
    offset = 0
    while offset < len(data):
        address = base + offset
        insn = isa.decode(data, offset)
        if insn is not None:
            following = bisect.bisect_right(boundaries, address)
            limit = boundaries[following] if following < len(boundaries) else base + len(data)
            encoded = isa.encode(insn.spec, insn.operands)
            if address + insn.length > limit or data[offset : offset + insn.length] != encoded:
                insn = None
        length = insn.length if insn is not None else 1
        units.append(_Unit(address, insn, length))
        offset += length
    return units


def _branch_target(insn: isa.Instruction | None) -> int | None:
    """The absolute target of ``jmp``/``call``/``jcc label``; None for anything else."""
    if insn is None or insn.mnemonic not in _TARGET_BRANCHES or insn.spec.form is not isa.Form.I:
        return None
    target = insn.operands[0]
    return target if isinstance(target, int) else None


def _branch_targets(units: list[_Unit], base: int, end: int) -> set[int]:
    targets = (_branch_target(unit.insn) for unit in units)
    return {t for t in targets if t is not None and base <= t <= end}


def _layout(image: Image, named: set[int]) -> tuple[list[_Unit], set[int]]:
    """Sweep until the set of label addresses stops growing; return the units and the labels."""
    base, end = image.base, image.end
    wanted = {a for a in named if base <= a <= end}
    if base <= image.entry <= end:
        wanted.add(image.entry)
    units = _sweep(image.data, base, sorted(wanted))
    for _ in range(_MAX_SWEEPS):
        grown = wanted | _branch_targets(units, base, end)
        if grown == wanted:
            break
        wanted = grown
        units = _sweep(image.data, base, sorted(wanted))
    starts = {unit.address for unit in units} | {end}
    return units, wanted & starts


def _label_names(addresses: set[int], symbols: Mapping[str, int]) -> dict[int, str]:
    """Prefer the image's own symbol names; invent ``L_xxxx`` (unique) for the rest.

    ``Image.symbols`` mixes labels and ``.equ`` constants; when several name one address,
    a name that is not ALL_CAPS (by convention a label, not a constant) wins."""
    names: dict[int, str] = {}
    for name, address in sorted(symbols.items(), key=lambda item: (item[1], item[0].isupper(), item[0])):
        if address in addresses and address not in names and _usable_label(name):
            names[address] = name
    taken = set(symbols)
    for address in sorted(addresses - set(names)):
        name = f"L_{address:04x}"
        while name in taken:
            name += "_"
        taken.add(name)
        names[address] = name
    return names


def _usable_label(name: str) -> bool:
    return _LABEL_NAME.match(name) is not None and not is_reserved_name(name)


def disassemble(image: Image) -> str:
    """Source text that assembles back to exactly ``image``'s bytes, base and entry."""
    units, label_addresses = _layout(image, set(image.symbols.values()))
    labels = _label_names(label_addresses, image.symbols)
    entry = labels.get(image.entry, f"{image.entry:#x}")
    lines = ["; disassembled by ringlab", f".org {image.base:#x}", f".entry {entry}", ""]
    lines += _body(units, labels, image)
    return "\n".join(lines) + "\n"


def _body(units: list[_Unit], labels: dict[int, str], image: Image) -> Iterator[str]:
    pending: list[_Unit] = []
    for unit in units:
        if unit.address in labels or unit.insn is not None:
            yield from _data_lines(pending, image)
            pending = []
        if unit.address in labels:
            yield f"{labels[unit.address]}:"
        if unit.insn is None:
            pending.append(unit)
        else:
            yield _line(format_instruction(unit.insn, labels), unit.address)
    yield from _data_lines(pending, image)
    if image.end in labels:
        yield f"{labels[image.end]}:"


def _line(text: str, address: int) -> str:
    return f"    {text:<{_COMMENT_COLUMN - 5}} ; {address:#06x}"


def _data_lines(units: list[_Unit], image: Image) -> Iterator[str]:
    """Bytes that are not instructions: ``.space`` for long zero runs, else ``.byte`` lines."""
    if not units:
        return
    start = units[0].address - image.base
    chunk = image.data[start : start + len(units)]
    i = 0
    while i < len(chunk):
        run = _ZEROS.match(chunk, i)
        zeros = run.end() - i if run else 0
        if zeros >= _MIN_SPACE_RUN:
            yield _line(f".space {zeros}", units[i].address)
            i += zeros
            continue
        stop = min(i + _BYTES_PER_LINE, len(chunk))
        zero_run = chunk.find(b"\0" * _MIN_SPACE_RUN, i, stop + _MIN_SPACE_RUN)
        if zero_run > i:
            stop = min(stop, zero_run)
        yield _line(".byte " + ", ".join(f"{b:#04x}" for b in chunk[i:stop]), units[i].address)
        i = stop
