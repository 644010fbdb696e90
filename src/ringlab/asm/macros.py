"""Macros: ``.macro NAME a, b`` ... ``.endm``, expanded by textual substitution.

Inside the body ``\\a`` is replaced by the argument text, ``\\@`` by a counter unique to each
expansion (GNU as style: write ``.loop\\@:`` for a label that each expansion gets afresh), and
``\\()`` by nothing, to end a parameter name in the middle of a word (``\\reg\\()_save``).
Any other backslash is left alone so string escapes such as ``"\\n"`` survive -- unless a
parameter is itself called ``n``, which is why short parameter names are a bad idea.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ringlab.asm.lexer import SourceProblem

__all__ = ["Macro", "split_arguments", "substitute"]

_PARAMETER = re.compile(r"\\(\\|@|\(\)|[A-Za-z_][A-Za-z0-9_]*)")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True)
class Macro:
    """A macro definition and where it was written (errors in expansions point into the body)."""

    name: str
    parameters: tuple[str, ...]
    body: tuple[tuple[int, str], ...]
    """(line number in ``file``, text) of each body line."""
    file: str
    line: int


def parse_parameters(text: str, column: int) -> tuple[str, ...]:
    """Parameter names after ``.macro NAME``, separated by commas or blanks."""
    names = [n for n in re.split(r"[\s,]+", text.strip()) if n]
    for name in names:
        if not _NAME.match(name):
            raise SourceProblem(column, f"bad macro parameter name '{name}'")
    for i, name in enumerate(names):
        if name in names[:i]:
            raise SourceProblem(column, f"macro parameter '{name}' is listed twice")
    return tuple(names)


def split_arguments(text: str) -> list[str]:
    """Split an invocation's argument text at commas outside quotes, brackets and parentheses,
    stopping at a ``;`` comment."""
    args: list[str] = []
    depth = 0
    quote = ""
    current: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            current.append(ch)
            if ch == "\\" and i + 1 < len(text):
                current.append(text[i + 1])
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
            current.append(ch)
        elif ch == ";":
            break
        elif ch in "([":
            depth += 1
            current.append(ch)
        elif ch in ")]":
            depth -= 1
            current.append(ch)
        elif ch == "," and depth == 0:
            args.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
        i += 1
    last = "".join(current).strip()
    if args or last:
        args.append(last)
    return args


def substitute(line: str, values: dict[str, str], counter: int) -> str:
    """Replace ``\\param``, ``\\@`` and ``\\()`` in one body line."""
    if "\\" not in line:
        return line

    def replace(m: re.Match[str]) -> str:
        word = m.group(1)
        if word == "@":
            return str(counter)
        if word == "()":
            return ""
        if word in values:
            return values[word]
        return m.group(0)

    return _PARAMETER.sub(replace, line)
