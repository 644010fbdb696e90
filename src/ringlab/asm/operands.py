"""Operands: parsing them, choosing the instruction form they fit, and encoding.

The form is chosen from the *kinds* of the operands alone (register, immediate, memory, byte
memory, control register, ``cs``), never from an expression's value, so every instruction's
length is known in pass 1 even when its operands name labels defined later.  The forms come
from ``isa.BY_NAME``; this module lists no instruction.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ringlab import isa
from ringlab.asm.expressions import Expr, Num, Qualify, parse_expression
from ringlab.asm.lexer import SourceProblem, Token, TokenStream

__all__ = [
    "Operand",
    "RegOp",
    "CrOp",
    "CsOp",
    "ImmOp",
    "MemOp",
    "SPECS",
    "REGISTER_NUMBERS",
    "is_reserved_name",
    "parse_operands",
    "select_spec",
    "encode_instruction",
]

REGISTER_NUMBERS: dict[str, int] = {name: n for n, name in enumerate(isa.REGISTERS)}
_CR_NAME = re.compile(r"cr[0-9]+\Z")
_MEM_SYNTAX = "[reg], [reg + expr], [reg - expr], [expr] or [expr + reg]"


def _specs_by_mnemonic() -> dict[str, list[isa.Spec]]:
    table: dict[str, list[isa.Spec]] = {}
    for (mnemonic, _form), spec in isa.BY_NAME.items():
        table.setdefault(mnemonic, []).append(spec)
    return table


SPECS: dict[str, list[isa.Spec]] = _specs_by_mnemonic()
"""Mnemonic (aliases included) -> its forms, in table order."""


def is_reserved_name(text: str) -> bool:
    """Register names (any case) cannot be symbols: an operand ``eax`` is always the register."""
    lower = text.lower()
    return lower in REGISTER_NUMBERS or lower == "cs" or _CR_NAME.match(lower) is not None


@dataclass(frozen=True, slots=True)
class RegOp:
    number: int
    column: int
    text: str
    kind = "r"


@dataclass(frozen=True, slots=True)
class CrOp:
    number: int
    column: int
    text: str
    kind = "cr"


@dataclass(frozen=True, slots=True)
class CsOp:
    column: int
    text: str
    kind = "cs"


@dataclass(frozen=True, slots=True)
class ImmOp:
    expr: Expr
    column: int
    text: str
    bare_name: bool
    """The operand is one identifier: if no form takes an immediate here, it is probably a
    misspelt register, and the error says what was expected."""
    kind = "i"


@dataclass(frozen=True, slots=True)
class MemOp:
    base: int | None
    disp: Expr
    byte: bool
    column: int
    text: str

    @property
    def kind(self) -> str:
        return "m8" if self.byte else "m"


Operand = RegOp | CrOp | CsOp | ImmOp | MemOp


def parse_operands(stream: TokenStream, line: str, qualify: Qualify) -> list[Operand]:
    """Parse a comma-separated operand list up to the end of the line."""
    operands: list[Operand] = []
    if stream.at_end():
        return operands
    while True:
        start = stream.peek().column
        operand = _parse_operand(stream, qualify)
        text = line[start - 1 : stream.peek().column - 1].strip()
        operands.append(_with_text(operand, text))
        if stream.at_op(","):
            stream.next()
            continue
        token = stream.peek()
        if token.kind != "eol":
            raise SourceProblem(
                token.column, f"expected ',' or end of line after operand '{text}', got {token.describe()}"
            )
        return operands


def _with_text(operand: Operand, text: str) -> Operand:
    if isinstance(operand, RegOp):
        return RegOp(operand.number, operand.column, text)
    if isinstance(operand, CrOp):
        return CrOp(operand.number, operand.column, text)
    if isinstance(operand, CsOp):
        return CsOp(operand.column, text)
    if isinstance(operand, ImmOp):
        return ImmOp(operand.expr, operand.column, text, operand.bare_name)
    return MemOp(operand.base, operand.disp, operand.byte, operand.column, text)


def _parse_operand(stream: TokenStream, qualify: Qualify) -> Operand:
    token = stream.peek()
    lower = token.text.lower()
    if token.kind == "ident" and lower in ("byte", "dword") and stream.peek(1).text == "[":
        stream.next()
        return _parse_memory(stream, qualify, byte=lower == "byte", column=token.column)
    if token.kind == "op" and token.text == "[":
        return _parse_memory(stream, qualify, byte=False, column=token.column)
    if token.kind == "ident":
        register = _parse_register(token)
        if register is not None:
            stream.next()
            return register
    expr = parse_expression(stream, qualify)
    bare = token.kind == "ident" and stream.pos > 0 and stream.tokens[stream.pos - 1] is token
    return ImmOp(expr, token.column, token.text, bare)


def _parse_register(token: Token) -> RegOp | CrOp | CsOp | None:
    lower = token.text.lower()
    if lower in REGISTER_NUMBERS:
        return RegOp(REGISTER_NUMBERS[lower], token.column, token.text)
    if lower == "cs":
        return CsOp(token.column, token.text)
    if _CR_NAME.match(lower):
        number = int(lower[2:])
        if number not in isa.CONTROL_REGISTERS:
            raise SourceProblem(token.column, f"{lower} does not exist (RL-32 has cr0, cr2, cr3, cr8)")
        return CrOp(number, token.column, token.text)
    return None


def _is_base_register(token: Token) -> bool:
    return token.kind == "ident" and token.text.lower() in REGISTER_NUMBERS


def _parse_memory(stream: TokenStream, qualify: Qualify, *, byte: bool, column: int) -> MemOp:
    """``[reg]``, ``[reg + expr]``, ``[reg - expr]``, ``[expr]`` or ``[expr + reg]``."""
    open_bracket = stream.next()
    inner: list[Token] = []
    while not stream.at_op("]"):
        token = stream.next()
        if token.kind == "eol":
            raise SourceProblem(open_bracket.column, "expected ']' to close '['")
        inner.append(token)
    close = stream.next()
    if not inner:
        raise SourceProblem(open_bracket.column, f"expected an address inside '[ ]' ({_MEM_SYNTAX})")
    base: int | None = None
    if _is_base_register(inner[0]):
        base = REGISTER_NUMBERS[inner[0].text.lower()]
        rest = inner[1:]
        if rest and not (rest[0].kind == "op" and rest[0].text in "+-"):
            raise SourceProblem(
                rest[0].column, f"expected '+', '-' or ']' after the base register, got {rest[0].describe()}"
            )
    elif len(inner) >= 3 and _is_base_register(inner[-1]) and inner[-2].text == "+":
        base = REGISTER_NUMBERS[inner[-1].text.lower()]
        rest = inner[:-2]
    else:
        rest = inner
    for token in rest:
        if _is_base_register(token):
            raise SourceProblem(
                token.column, f"a memory operand has at most one register, as in {_MEM_SYNTAX}"
            )
    disp: Expr = Num(0, close.column)
    if rest:
        sub = TokenStream([*rest, Token("eol", "", close.column)])
        disp = parse_expression(sub, qualify)
        sub.expect_end("the address expression")
    return MemOp(base, disp, byte, column, "")


_KIND_PHRASES = {
    "r": "a register",
    "m": "a memory operand",
    "m8": "a byte memory operand (byte [m])",
    "i": "an immediate",
    "i8": "an 8-bit immediate",
    "cr": "a control register",
    "cs": "cs",
    "ecx": "ecx",
    "edx": "edx",
}


def _accepts(kind: str, operand: Operand) -> bool:
    if kind == "ecx" or kind == "edx":
        return isinstance(operand, RegOp) and operand.number == REGISTER_NUMBERS[kind]
    if kind == "i8":
        return operand.kind == "i"
    return operand.kind == kind


def _form_name(spec: isa.Spec) -> str:
    return spec.form.value or "(no operands)"


def select_spec(mnemonic: Token, operands: list[Operand]) -> isa.Spec:
    """The one form of ``mnemonic`` that the operands' kinds fit, or an error saying why none does."""
    name = mnemonic.text.lower()
    specs = SPECS[name]
    for spec in specs:
        kinds = isa.FORMS[spec.form].operands
        if len(kinds) == len(operands) and all(map(_accepts, kinds, operands)):
            return spec
    raise _no_form(mnemonic, name, specs, operands)


def _no_form(mnemonic: Token, name: str, specs: list[isa.Spec], operands: list[Operand]) -> SourceProblem:
    """Explain a mismatch: a likely misspelt register gets 'expected ...', anything else the
    list of forms the mnemonic has."""
    same_count = [s for s in specs if len(isa.FORMS[s.form].operands) == len(operands)]
    for position, operand in enumerate(operands):
        allowed: list[str] = []
        for spec in same_count:
            kind = isa.FORMS[spec.form].operands[position]
            if kind not in allowed:
                allowed.append(kind)
        same_count = [s for s in same_count if _accepts(isa.FORMS[s.form].operands[position], operand)]
        if same_count:
            continue
        if allowed and isinstance(operand, ImmOp) and operand.bare_name:
            where = f"after '{mnemonic.text}'" if position == 0 else "after ','"
            return SourceProblem(
                operand.column, f"expected {_describe(allowed)} {where}, got '{operand.text}'"
            )
        break
    forms = " ".join(_form_name(s) for s in specs)
    given = ", ".join(op.kind for op in operands)
    if not operands:
        return SourceProblem(mnemonic.column, f"'{name}' needs operands; forms: {forms}")
    if all(s.form is isa.Form.NONE for s in specs):
        return SourceProblem(mnemonic.column, f"'{name}' takes no operands")
    return SourceProblem(
        mnemonic.column, f"'{name}' has no form '{given}'{_hint(specs, operands)}; forms: {forms}"
    )


def _describe(kinds: list[str]) -> str:
    if set(kinds) == {"r", "m"}:
        return "a register or memory operand"
    phrases = [_KIND_PHRASES[k] for k in kinds]
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " or " + phrases[-1]


def _hint(specs: list[isa.Spec], operands: list[Operand]) -> str:
    kinds = [op.kind for op in operands]
    if sum(k in ("m", "m8") for k in kinds) > 1:
        return " (no memory-to-memory form)"
    flipped = tuple({"m": "m8", "m8": "m"}.get(k, k) for k in kinds)
    for spec in specs:
        if tuple(k if k != "i8" else "i" for k in isa.FORMS[spec.form].operands) == flipped:
            if "m8" in flipped:
                return " (write 'byte [m]' for the byte form)"
            return " ('byte' memory operands only go with movzx r, byte [m] and mov byte [m], r)"
    return ""


def encode_instruction(spec: isa.Spec, operands: list[Operand], value: Callable[[Expr], int]) -> bytes:
    """Evaluate the operands (``value`` resolves expressions) and encode with ``isa.encode``."""
    kinds = isa.FORMS[spec.form].operands
    encoded: list[isa.Operand] = []
    for kind, operand in zip(kinds, operands, strict=True):
        if isinstance(operand, RegOp):
            if kind == "r":
                encoded.append(operand.number)
        elif isinstance(operand, CrOp):
            encoded.append(operand.number)
        elif isinstance(operand, ImmOp):
            number = value(operand.expr)
            if kind == "i8" and not (number <= 0xFF or number >= 0xFFFFFF80):
                shown = number - (1 << 32) if number & 0x80000000 else number
                raise SourceProblem(
                    operand.column, f"immediate {shown} does not fit in 8 bits (0..255, or -128..-1)"
                )
            encoded.append(number)
        elif isinstance(operand, MemOp):
            encoded.append(isa.Mem(operand.base, value(operand.disp)))
    return isa.encode(spec, tuple(encoded))
