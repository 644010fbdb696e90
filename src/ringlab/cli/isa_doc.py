"""The instruction table rendered for people: a terminal table and the Markdown in docs/isa.md.

Both are generated from ``ringlab.isa.TABLE``; a test fails when docs/isa.md drifts from it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ringlab.isa import FORMS, JCC, TABLE, Spec

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["isa_markdown", "isa_table", "encoding_of"]

BEGIN = "<!-- BEGIN GENERATED TABLE: ringlab isa --markdown -->\n"
END = "<!-- END GENERATED TABLE -->\n"

_FIELD = {
    "r": "reg",
    "i": "imm32",
    "i8": "imm8",
    "m": "mem",
    "m8": "mem",
    "cr": "crN",
}


def encoding_of(spec: Spec) -> str:
    """The byte layout of one form, e.g. ``0x03 (reg<<4|base) disp32``."""
    form = spec.form.value
    parts = [f"{spec.opcode:#04x}"]
    kinds = [k for k in FORMS[spec.form].operands if k not in ("ecx", "edx", "cs")]
    if any(k in ("m", "m8") for k in kinds):
        parts.append("(reg<<4|base)" if "r" in kinds else "(0<<4|base)")
        parts.append("disp32")
        if "i" in kinds:
            parts.append("imm32")
    elif "cr" in kinds:
        parts.append("(reg<<4|crN)")
    elif form == "r,r":
        parts.append("(dst<<4|src)")
    else:
        if "r" in kinds:
            parts.append("reg")
        parts += [_FIELD[k] for k in kinds if k in ("i", "i8")]
    return " ".join(parts)


def _operands(spec: Spec) -> str:
    return spec.form.value.replace(",", ", ") or "-"


def _rows() -> list[tuple[str, str, str, str, str, str]]:
    aliases: dict[str, list[str]] = {}
    for alias, cond in JCC.items():
        if alias != "j" + cond:
            aliases.setdefault("j" + cond, []).append(alias)
    rows = []
    for spec in TABLE:
        name = spec.mnemonic
        if name in aliases:
            name += " (" + ", ".join(aliases[name]) + ")"
        rows.append(
            (name, _operands(spec), spec.cls.value, encoding_of(spec), str(spec.length), spec.summary)
        )
    return rows


def isa_markdown() -> str:
    """The Markdown table embedded in docs/isa.md."""
    head = ("mnemonic", "operands", "class", "encoding", "bytes", "effect")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in _rows():
        cells = [c.replace("|", "\\|") for c in row]
        lines.append("| " + " | ".join(f"`{c}`" if i < 2 else c for i, c in enumerate(cells)) + " |")
    return BEGIN + "\n".join(lines) + "\n" + END


def isa_table(console: Console | None = None) -> None:
    """Print the table to ``console`` (default: stdout; see ``ringlab.cli.termout``).  Cells are
    escaped (``[m]`` is an operand, not rich markup) and wrap to the console's width."""
    from rich.markup import escape
    from rich.table import Table

    from ringlab.cli.termout import fit_table, stdout_console

    table = Table(title="RL-32 instructions (one row per operand form)")
    for col in ("mnemonic", "operands", "class", "encoding", "bytes", "effect"):
        table.add_column(col)
    for row in _rows():
        table.add_row(*(escape(cell) for cell in row))
    (console or stdout_console()).print(fit_table(table))
