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

__all__ = ["ExpansionTooLarge", "Macro", "parse_parameters", "split_arguments", "substitute"]

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


class ExpansionTooLarge(Exception):
    """A substituted line would be longer than the text the assembler still allows."""


_SPECIAL = re.compile(r"[\"'()\[\],;]")
_QUOTE_END = {'"': re.compile(r'["\\]'), "'": re.compile(r"['\\]")}


def split_arguments(text: str) -> list[str]:
    """Split an invocation's argument text at commas outside quotes, brackets and parentheses,
    stopping at a ``;`` comment.  (It jumps from one special character to the next, so a long
    argument costs no Python loop per character.)"""
    args: list[str] = []
    depth = 0
    start = 0
    end = len(text)
    pos = 0
    while True:
        m = _SPECIAL.search(text, pos)
        if m is None:
            break
        ch, at = m.group(), m.start()
        pos = at + 1
        if ch in "\"'":
            pos = _after_quote(text, ch, pos)
        elif ch == ";":
            end = at
            break
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif depth == 0:  # a comma
            args.append(text[start:at].strip())
            start = pos
    last = text[start:end].strip()
    if args or last:
        args.append(last)
    return args


def _after_quote(text: str, quote: str, pos: int) -> int:
    """Where a quoted string or character whose text starts at ``pos`` ends (after the closing
    quote; a backslash escapes the next character); the end of the text if it does not close."""
    pattern = _QUOTE_END[quote]
    while True:
        m = pattern.search(text, pos)
        if m is None:
            return len(text)
        if m.group() == quote:
            return m.end()
        pos = m.end() + 1


def substitute(line: str, values: dict[str, str], counter: int, limit: int) -> str:
    """Replace ``\\param``, ``\\@`` and ``\\()`` in one body line.  Raises ExpansionTooLarge,
    before building it, if the result would be longer than ``limit`` characters."""
    if "\\" not in line:
        if len(line) > limit:
            raise ExpansionTooLarge
        return line
    size = len(line)

    def replace(m: re.Match[str]) -> str:
        nonlocal size
        word = m.group(1)
        if word == "@":
            text = str(counter)
        elif word == "()":
            text = ""
        else:
            text = values.get(word, m.group(0))
        size += len(text) - len(m.group(0))
        if size > limit:
            raise ExpansionTooLarge
        return text

    return _PARAMETER.sub(replace, line)
