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

from ringlab.asm.lexer import MAX_U32, SourceProblem, Token, TokenStream
from ringlab.asm.limits import MAX_EXPRESSION_DEPTH

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
    """Parse the longest expression at the stream's cursor.

    Operator precedence with explicit stacks, so that no input recurses: a chain of binary
    operators of any length reduces as it goes (every operator is left-associative), and
    parentheses and unary operators may nest ``MAX_EXPRESSION_DEPTH`` deep."""
    operands: list[Expr] = []
    pending: list[_Pending] = []
    depth = 0
    while True:
        token = stream.next()
        # An operand: any unary operators and open parentheses, then a number or a name.
        while token.kind == "op" and (token.text in _UNARY or token.text == "("):
            depth += 1
            if depth > MAX_EXPRESSION_DEPTH:
                raise SourceProblem(
                    token.column,
                    f"expression nested deeper than {MAX_EXPRESSION_DEPTH} levels of parentheses and"
                    " unary operators (give a part a name with .equ)",
                )
            pending.append(_Pending(token.text, token.column, 0 if token.text == "(" else _UNARY_LEVEL))
            token = stream.next()
        operands.append(_primary(token, qualify))
        # Then binary operators and closing parentheses, until one that belongs to the caller.
        while True:
            token = stream.peek()
            level = _PRECEDENCE.get(token.text, 0) if token.kind == "op" else 0
            if level:
                depth -= _reduce(operands, pending, level)
                stream.next()
                pending.append(_Pending(token.text, token.column, level))
                break
            depth -= _reduce(operands, pending, 1)
            if pending and token.kind == "op" and token.text == ")":
                pending.pop()  # its '('
                depth -= 1
                stream.next()
                continue
            if pending:
                raise SourceProblem(token.column, f"expected ')' to close '(', got {token.describe()}")
            return operands[0]


@dataclass(frozen=True, slots=True)
class _Pending:
    """An operator waiting for its right operand, or an open parenthesis (``level`` 0)."""

    op: str
    column: int
    level: int


_UNARY_LEVEL = 6
"""Tighter than every binary operator."""


def _reduce(operands: list[Expr], pending: list[_Pending], level: int) -> int:
    """Apply the waiting operators that bind at least as tightly as ``level`` (stopping at an
    open parenthesis); return how many unary operators were applied."""
    unary = 0
    while pending and pending[-1].level >= level:
        waiting = pending.pop()
        right = operands.pop()
        if waiting.level == _UNARY_LEVEL:
            operands.append(Unary(waiting.op, right, waiting.column))
            unary += 1
        else:
            operands.append(Binary(waiting.op, operands.pop(), right, waiting.column))
    return unary


def _primary(token: Token, qualify: Qualify) -> Expr:
    if token.kind in ("num", "char"):
        return Num(token.value, token.column)
    if token.kind == "ident":
        return Sym(qualify(token.text, token.column), token.text, token.column)
    if token.kind == "str":
        raise SourceProblem(token.column, f"a string {token.text} cannot be used as a number here")
    raise SourceProblem(token.column, f"expected an expression, got {token.describe()}")


@dataclass(frozen=True, slots=True)
class _Apply:
    """In ``evaluate``'s work list: apply ``node`` to the values of its operands."""

    node: Unary | Binary


def evaluate(expr: Expr, lookup: Lookup) -> int:
    """The value of ``expr`` as an unsigned 32-bit number (operands left to right; no recursion,
    whatever the tree's shape)."""
    if isinstance(expr, Num):
        return expr.value
    if isinstance(expr, Sym):
        return lookup(expr) & MAX_U32
    work: list[Expr | _Apply] = [expr]
    values: list[int] = []
    while work:
        item = work.pop()
        if isinstance(item, Num):
            values.append(item.value)
        elif isinstance(item, Sym):
            values.append(lookup(item) & MAX_U32)
        elif isinstance(item, Unary):
            work += (_Apply(item), item.operand)
        elif isinstance(item, Binary):
            work += (_Apply(item), item.right, item.left)
        elif isinstance(item.node, Unary):
            values.append(_unary(item.node.op, values.pop()))
        else:
            right = values.pop()
            values.append(_apply(item.node, values.pop(), right))
    return values[0]


def _unary(op: str, value: int) -> int:
    if op == "-":
        return -value & MAX_U32
    if op == "~":
        return ~value & MAX_U32
    return value


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
    found: list[Sym] = []
    work: list[Expr] = [expr]
    while work:
        item = work.pop()
        if isinstance(item, Sym):
            found.append(item)
        elif isinstance(item, Unary):
            work.append(item.operand)
        elif isinstance(item, Binary):
            work += (item.right, item.left)
    return found
