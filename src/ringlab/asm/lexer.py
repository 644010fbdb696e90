"""Tokens of one source line, and the stream the parsers read them from.

The assembler works line by line (docs/machine.md: one statement per line, ``;`` to the end of the line
is a comment), so the lexer turns one line into a list of tokens ending with an ``eol`` token.
Every token keeps its 1-based column: error messages point at the offending token.

Problems are raised as ``SourceProblem(column, message)``; the assembler, which knows the
file and line, turns them into ``AssemblyError``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["SourceProblem", "Token", "TokenStream", "tokenize", "MAX_U32"]

MAX_U32 = 0xFFFFFFFF

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", '"': '"', "'": "'"}
_ESCAPE_HELP = 'strings take \\n \\t \\r \\0 \\\\ \\" \\xNN'

_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r\f\v]+)
    | (?P<comment>;.*)
    | (?P<num>[0-9][A-Za-z0-9_]*)
    | (?P<ident>[A-Za-z_.][A-Za-z0-9_.]*)
    | (?P<quote>["'])
    | (?P<op><<|>>|[,\[\]()+\-*/%&|~:])
    """,
    re.VERBOSE,
)


class SourceProblem(Exception):
    """A problem at a column of the current line; the assembler adds the file and line."""

    def __init__(self, column: int, message: str) -> None:
        super().__init__(message)
        self.column = column
        self.message = message


@dataclass(frozen=True, slots=True)
class Token:
    """One token.  ``kind`` is ``num``, ``char`` (both with an int ``value``), ``str``
    (``data`` holds the bytes), ``ident``, ``op`` (punctuation, ``text`` says which) or ``eol``."""

    kind: str
    text: str
    column: int
    value: int = 0
    data: bytes = b""

    def describe(self) -> str:
        """How error messages quote the token."""
        return "end of line" if self.kind == "eol" else f"'{self.text}'"


def tokenize(line: str) -> list[Token]:
    """Split one line into tokens; the last one is always ``eol``."""
    tokens: list[Token] = []
    pos, end = 0, len(line)
    while pos < end:
        m = _TOKEN.match(line, pos)
        if m is None:
            raise SourceProblem(pos + 1, _unexpected(line[pos]))
        kind = m.lastgroup
        text = m.group()
        if kind == "comment":
            break
        if kind == "num":
            tokens.append(Token("num", text, pos + 1, parse_number(text, pos + 1)))
        elif kind == "ident":
            tokens.append(Token("ident", text, pos + 1))
        elif kind == "op":
            tokens.append(Token("op", text, pos + 1))
        elif kind == "quote":
            token, after = _quoted(line, pos)
            tokens.append(token)
            pos = after
            continue
        pos = m.end()
    tokens.append(Token("eol", "", len(line) + 1))
    return tokens


def _unexpected(ch: str) -> str:
    if ch == "\\":
        return "unexpected '\\' (\\name only stands for a parameter inside a .macro body)"
    return f"unexpected character '{ch}'"


def parse_number(text: str, column: int) -> int:
    """Decimal, ``0x`` hex or ``0b`` binary (any letter case); at most 32 bits."""
    lower = text.lower()
    base, digits = 10, lower
    if lower.startswith("0x"):
        base, digits = 16, lower[2:]
    elif lower.startswith("0b"):
        base, digits = 2, lower[2:]
    if not _DIGITS[base].fullmatch(digits):
        raise SourceProblem(column, f"bad number '{text}' (write decimal, 0x hex or 0b binary)")
    # No int() of a huge literal: it costs time (and Python refuses long decimal strings).
    significant = digits.lstrip("0") or "0"
    value = int(significant, base) if len(significant) <= _MAX_DIGITS[base] else MAX_U32 + 1
    if value > MAX_U32:
        raise SourceProblem(column, f"number {text} does not fit in 32 bits")
    return value


_DIGITS = {10: re.compile(r"[0-9]+"), 16: re.compile(r"[0-9a-f]+"), 2: re.compile(r"[01]+")}
_MAX_DIGITS = {10: 10, 16: 8, 2: 32}
"""Significant digits of the largest 32-bit number in each base."""


def _quoted(line: str, start: int) -> tuple[Token, int]:
    """Scan a string (``"..."``) or character literal (``'c'``) starting at ``start``."""
    quote = line[start]
    column = start + 1
    chars: list[str] = []
    pos = start + 1
    while True:
        if pos >= len(line):
            what = "string" if quote == '"' else "character literal"
            raise SourceProblem(column, f"unterminated {what}")
        ch = line[pos]
        if ch == quote:
            pos += 1
            break
        if ch == "\\":
            decoded, pos = _escape(line, pos)
            chars.append(decoded)
            continue
        chars.append(ch)
        pos += 1
    text = line[start:pos]
    data = _to_bytes("".join(chars), column)
    if quote == '"':
        return Token("str", text, column, data=data), pos
    if len(data) != 1:
        raise SourceProblem(column, f"character literal {text} must hold exactly one character")
    return Token("char", text, column, data[0]), pos


def _escape(line: str, pos: int) -> tuple[str, int]:
    """Decode the escape sequence whose backslash is at ``pos``; return it and where it ends."""
    if pos + 1 >= len(line):
        raise SourceProblem(pos + 1, f"a backslash ends the line ({_ESCAPE_HELP})")
    ch = line[pos + 1]
    if ch in _ESCAPES:
        return _ESCAPES[ch], pos + 2
    if ch == "x":
        digits = line[pos + 2 : pos + 4]
        if len(digits) == 2 and all(c in "0123456789abcdefABCDEF" for c in digits):
            return chr(int(digits, 16)), pos + 4
        raise SourceProblem(pos + 1, "\\x takes exactly two hex digits, as in \\x0a")
    raise SourceProblem(pos + 1, f"unknown escape '\\{ch}' ({_ESCAPE_HELP})")


def _to_bytes(text: str, column: int) -> bytes:
    """Strings are stored one byte per character (Latin-1, as the console decodes them)."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        raise SourceProblem(column, f"character {bad!r} does not fit in one byte (Latin-1)") from None


class TokenStream:
    """A cursor over one line's tokens, with the helpers every parser needs."""

    __slots__ = ("pos", "tokens")

    def __init__(self, tokens: list[Token], pos: int = 0) -> None:
        self.tokens = tokens
        self.pos = pos

    def peek(self, ahead: int = 0) -> Token:
        index = min(self.pos + ahead, len(self.tokens) - 1)
        return self.tokens[index]

    def next(self) -> Token:
        token = self.tokens[self.pos]
        if token.kind != "eol":
            self.pos += 1
        return token

    def at_op(self, text: str) -> bool:
        token = self.tokens[self.pos]
        return token.kind == "op" and token.text == text

    def at_end(self) -> bool:
        return self.tokens[self.pos].kind == "eol"

    def expect_op(self, text: str, context: str) -> Token:
        """Consume the punctuation ``text`` or explain what was expected."""
        token = self.peek()
        if token.kind != "op" or token.text != text:
            raise SourceProblem(token.column, f"expected '{text}' {context}, got {token.describe()}")
        return self.next()

    def expect_end(self, context: str) -> None:
        """Reject trailing tokens after a complete statement."""
        token = self.peek()
        if token.kind != "eol":
            raise SourceProblem(token.column, f"unexpected {token.describe()} after {context}")
