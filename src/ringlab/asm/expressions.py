"""Constant expressions: parsing into a small tree, and evaluation with 32-bit wrap.

Expressions are parsed once, in pass 1, and evaluated when their symbols are known (pass 2 for
instruction operands and data, at once for ``.org .space .align .if``).  Symbol names are
qualified while parsing (``.loop`` becomes ``main.loop``) because the scope of a local label is
the non-local label *before the reference*, which only pass 1 knows.

Semantics (docs/machine.md, Precise rules > Assembler): C precedence -- unary ``- ~`` (and ``+``), then
``* / %``, ``+ -``, ``<< >>``, ``&``, ``|``; every result wraps to 32 bits; ``/`` and ``%``
are signed and truncate toward zero (as in C); ``>>`` is logical; shifting by 32 or more gives 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ringlab.asm.lexer import MAX_U32, SourceProblem, TokenStream

__all__ = ["Expr", "Num", "Sym", "Unary", "Binary", "parse_expression", "evaluate", "symbols_of"]


@dataclass(frozen=True, slots=True)
class Num:
    value: int
    column: int


@dataclass(frozen=True, slots=True)
class Sym:
    name: str
    """The qualified name (local labels carry their scope)."""
    text: str
    """The name as written, for error messages."""
    column: int


@dataclass(frozen=True, slots=True)
class Unary:
    op: str
    operand: Expr
    column: int


@dataclass(frozen=True, slots=True)
class Binary:
    op: str
    left: Expr
    right: Expr
    column: int


Expr = Num | Sym | Unary | Binary

_PRECEDENCE = {"|": 1, "&": 2, "<<": 3, ">>": 3, "+": 4, "-": 4, "*": 5, "/": 5, "%": 5}
_UNARY = ("-", "~", "+")

Qualify = Callable[[str, int], str]
"""Turns a name as written (and its column) into the symbol it means; raises for registers."""

Lookup = Callable[[Sym], int]
"""Returns a symbol's value or raises SourceProblem (undefined, not yet defined...)."""


def parse_expression(stream: TokenStream, qualify: Qualify) -> Expr:
    """Parse the longest expression at the stream's cursor."""
    return _binary(stream, qualify, 1)


def _binary(stream: TokenStream, qualify: Qualify, min_level: int) -> Expr:
    """Precedence climbing: every operator is left-associative."""
    left = _unary(stream, qualify)
    while True:
        token = stream.peek()
        level = _PRECEDENCE.get(token.text, 0) if token.kind == "op" else 0
        if level < min_level or level == 0:
            return left
        stream.next()
        right = _binary(stream, qualify, level + 1)
        left = Binary(token.text, left, right, token.column)


def _unary(stream: TokenStream, qualify: Qualify) -> Expr:
    token = stream.peek()
    if token.kind == "op" and token.text in _UNARY:
        stream.next()
        return Unary(token.text, _unary(stream, qualify), token.column)
    return _primary(stream, qualify)


def _primary(stream: TokenStream, qualify: Qualify) -> Expr:
    token = stream.next()
    if token.kind in ("num", "char"):
        return Num(token.value, token.column)
    if token.kind == "ident":
        return Sym(qualify(token.text, token.column), token.text, token.column)
    if token.kind == "op" and token.text == "(":
        inner = _binary(stream, qualify, 1)
        stream.expect_op(")", "to close '('")
        return inner
    if token.kind == "str":
        raise SourceProblem(token.column, f"a string {token.text} cannot be used as a number here")
    raise SourceProblem(token.column, f"expected an expression, got {token.describe()}")


def evaluate(expr: Expr, lookup: Lookup) -> int:
    """The value of ``expr`` as an unsigned 32-bit number."""
    if isinstance(expr, Num):
        return expr.value
    if isinstance(expr, Sym):
        return lookup(expr) & MAX_U32
    if isinstance(expr, Unary):
        value = evaluate(expr.operand, lookup)
        if expr.op == "-":
            return -value & MAX_U32
        if expr.op == "~":
            return ~value & MAX_U32
        return value
    return _apply(expr, evaluate(expr.left, lookup), evaluate(expr.right, lookup))


def _signed(value: int) -> int:
    return value - (1 << 32) if value & 0x80000000 else value


def _apply(expr: Binary, a: int, b: int) -> int:
    op = expr.op
    if op == "+":
        return (a + b) & MAX_U32
    if op == "-":
        return (a - b) & MAX_U32
    if op == "*":
        return (a * b) & MAX_U32
    if op in ("/", "%"):
        if b == 0:
            raise SourceProblem(expr.column, f"division by zero ('{op}' by 0)")
        sa, sb = _signed(a), _signed(b)
        quotient = abs(sa) // abs(sb) * (1 if (sa < 0) == (sb < 0) else -1)
        return (quotient if op == "/" else sa - quotient * sb) & MAX_U32
    if op == "<<":
        return (a << b) & MAX_U32 if b < 32 else 0
    if op == ">>":
        return a >> b if b < 32 else 0
    if op == "&":
        return a & b
    return a | b


def symbols_of(expr: Expr) -> list[Sym]:
    """Every symbol the expression mentions, left to right."""
    if isinstance(expr, Sym):
        return [expr]
    if isinstance(expr, Unary):
        return symbols_of(expr.operand)
    if isinstance(expr, Binary):
        return symbols_of(expr.left) + symbols_of(expr.right)
    return []
