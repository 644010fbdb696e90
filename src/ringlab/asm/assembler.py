"""The RL-32 assembler: source text in, ``Image`` out (docs/machine.md, "Assembly syntax").

Two passes.  Pass 1 reads the source once -- includes, macros and conditionals are handled as
lines arrive -- parses every statement, defines labels and advances the location counter.  It
can do all of that without knowing any label's value because every form has a fixed length and
the form is chosen from the operands' syntax alone.  Pass 2 walks the parsed statements,
evaluates their expressions now that every symbol is known, and encodes them with
``isa.encode``.  ``.org .space .align .if`` change what pass 1 does, so their expressions are
evaluated at once and may only use symbols defined above them.

Decisions where docs/machine.md is silent are listed in the module docstring of ``ringlab.asm``.
"""

from __future__ import annotations

import contextlib
import difflib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ringlab.asm.expressions import Expr, Sym, evaluate, parse_expression, symbols_of
from ringlab.asm.lexer import MAX_U32, SourceProblem, Token, TokenStream, tokenize
from ringlab.asm.limits import (
    MAX_CONDITIONAL_DEPTH,
    MAX_EXPANDED_BYTES,
    MAX_IMAGE_BYTES,
    MAX_INCLUDE_DEPTH,
    MAX_MACRO_DEPTH,
    size_text,
)
from ringlab.asm.macros import ExpansionTooLarge, Macro, parse_parameters, split_arguments, substitute
from ringlab.asm.operands import (
    SPECS,
    Operand,
    encode_instruction,
    is_reserved_name,
    parse_operands,
    select_spec,
)
from ringlab.asm.sources import SourceRefused, decode_source, file_identity, read_source_bytes
from ringlab.errors import AssemblyError
from ringlab.image import Image
from ringlab.isa import Spec

__all__ = ["assemble", "assemble_file", "DEFAULT_ORIGIN"]

DEFAULT_ORIGIN = 0x1000

_LEADING_DIRECTIVE = re.compile(r"\s*(?:[A-Za-z_.][A-Za-z0-9_.]*\s*:\s*)*(\.[A-Za-z_]+)")
_SYMBOL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")
_CONDITIONALS = (".if", ".ifdef", ".ifndef")
_DATA_WIDTHS = {".byte": 1, ".word": 2, ".dword": 4}
_WIDTH_LIMITS = {1: (0xFF, 0xFFFFFF80, "8"), 2: (0xFFFF, 0xFFFF8000, "16")}


def assemble(source: str, *, filename: str = "<input>", defines: dict[str, int] | None = None) -> Image:
    """Assemble ``source``; ``.include`` paths are relative to ``filename``'s directory."""
    assembler = _Assembler(filename, defines or {})
    assembler.process_file(source, filename)
    return assembler.finish()


def assemble_file(path: str | Path, *, defines: dict[str, int] | None = None) -> Image:
    """Assemble the file at ``path``."""
    name = str(path)
    try:
        blob = read_source_bytes(Path(path))
    except OSError as exc:
        raise AssemblyError(name, 1, 1, f"cannot read the program: {exc.strerror or exc}") from None
    except SourceRefused as exc:
        raise AssemblyError(name, 1, 1, f"the program {exc.reason}") from None
    except ValueError as exc:  # a NUL in the path, or a name the file system cannot encode
        raise AssemblyError(name, 1, 1, f"cannot read the program: {exc}") from None
    return assemble(decode_source(blob, name), filename=name, defines=defines)


@dataclass(frozen=True, slots=True)
class _Location:
    """Where a line came from; ``chain`` lists the macro expansions it is inside, innermost first."""

    file: str
    line: int
    chain: tuple[str, ...] = ()

    def error(self, column: int, message: str) -> AssemblyError:
        chain = self.chain
        if len(chain) > 4:  # a runaway recursion: the innermost expansions and the first one
            chain = (*chain[:2], f"... {len(chain) - 3} more expansions ...", chain[-1])
        suffix = f" ({', '.join(chain)})" if chain else ""
        return AssemblyError(self.file, self.line, column, message + suffix)

    def at(self, column: int) -> str:
        return f"{self.file}:{self.line}:{column}"


@dataclass(slots=True)
class _Symbol:
    value: int | None
    """None while an ``.equ`` waits for symbols defined later."""
    where: str
    """Where it was defined, for 'duplicate' messages."""
    local: bool = False
    from_define: bool = False
    expr: Expr | None = None
    location: _Location | None = None
    resolving: bool = False
    blocked_by: str | None = None
    """In pass 1: the undefined name that stopped the last attempt to evaluate it."""


@dataclass(frozen=True, slots=True)
class _Instruction:
    address: int
    spec: Spec
    operands: list[Operand]
    location: _Location


@dataclass(frozen=True, slots=True)
class _Data:
    address: int
    width: int
    elements: list[tuple[Expr | bytes, int]]
    """Each element with its column: an expression stored in ``width`` bytes, or raw bytes."""
    location: _Location


@dataclass(slots=True)
class _Conditional:
    parent_active: bool
    active: bool
    taken: bool
    """Whether the ``.if`` branch was chosen (the ``.else`` branch runs when it was not)."""
    location: _Location
    column: int
    seen_else: bool = False


class _NotYet(SourceProblem):
    """A symbol that pass 1 cannot know yet; ``.equ`` then waits for pass 2."""

    @classmethod
    def depends(cls, sym: Sym, purpose: str | None) -> _NotYet:
        return cls(
            sym.column,
            f"symbol '{sym.text}' depends on symbols defined later ({purpose} needs symbols defined before it)",
        )


@dataclass(slots=True)
class _Frame:
    """A file or a macro expansion whose lines are being assembled.  Included files and macro
    bodies push a frame instead of recursing, so nesting costs no Python stack."""

    lines: Sequence[tuple[int, str]]
    file: str
    chain: tuple[str, ...]
    conditionals: int
    """How many conditionals were open when it started: it must close those it opens."""
    macro: bool
    index: int = 0
    """The next line to assemble."""


@dataclass
class _Assembler:
    filename: str
    defines: dict[str, int]
    pc: int = DEFAULT_ORIGIN
    low: int | None = None
    high: int = 0
    placed: bool = False
    """A byte or a label has been placed: from now on ``.org`` may only move forwards."""
    scope: str = ""
    symbols: dict[str, _Symbol] = field(default_factory=dict)
    macros: dict[str, Macro] = field(default_factory=dict)
    items: list[_Instruction | _Data] = field(default_factory=list)
    conditionals: list[_Conditional] = field(default_factory=list)
    entry: tuple[Expr, _Location, int] | None = None
    expansions: int = 0
    expanded_bytes: int = 0
    """The text macro expansions and repeated includes have added so far (``MAX_EXPANDED_BYTES``
    bounds it)."""
    frames: list[_Frame] = field(default_factory=list)
    include_depth: int = 0
    macro_depth: int = 0
    sources: dict[tuple[int, int], str] = field(default_factory=dict)
    """Each included file's text, read once however often it is included."""

    def __post_init__(self) -> None:
        for name, value in self.defines.items():
            if not _SYMBOL_NAME.match(name) or is_reserved_name(name):
                raise AssemblyError(self.filename, 1, 1, f"-D {name}: not a valid symbol name")
            self.symbols[name] = _Symbol(int(value) & MAX_U32, f"-D {name}", from_define=True)

    # ----------------------------------------------------------------- pass 1: lines

    def process_file(self, text: str, filename: str) -> None:
        """Assemble the lines of the program ``text`` (pass 1)."""
        self._push(text, filename, (), macro=False)
        self._run()

    def _push(
        self, text: str | list[tuple[int, str]], file: str, chain: tuple[str, ...], *, macro: bool
    ) -> None:
        """Start a file's or a macro expansion's lines; they run before the rest of the current one."""
        lines = list(enumerate(text.splitlines(), start=1)) if isinstance(text, str) else text
        self.frames.append(_Frame(lines, file, chain, len(self.conditionals), macro))
        if macro:
            self.macro_depth += 1
        elif len(self.frames) > 1:
            self.include_depth += 1

    def _pop(self) -> None:
        """The current file or macro body has ended: it must have closed its conditionals."""
        frame = self.frames.pop()
        if frame.macro:
            self.macro_depth -= 1
        elif self.frames:
            self.include_depth -= 1
        if len(self.conditionals) > frame.conditionals:
            cond = self.conditionals[-1]
            what = "macro body" if frame.macro else "file"
            raise cond.location.error(cond.column, f"this .if has no .endif before the end of the {what}")

    def _run(self) -> None:
        """Assemble lines until every file and macro body has ended."""
        frames = self.frames
        while frames:
            frame = frames[-1]
            if frame.index >= len(frame.lines):
                self._pop()
                continue
            number, text = frame.lines[frame.index]
            location = _Location(frame.file, number, frame.chain)
            directive = _leading_directive(text)
            if len(self.conditionals) > frame.conditionals and not self.conditionals[-1].active:
                frame.index += 1
                self._skip(directive, location, text, frame.conditionals)
            elif directive == ".macro":
                frame.index = self._define_macro(frame.lines, frame.index, location)
            else:
                frame.index += 1  # first: a statement may push an included file or a macro body
                self._statement(text, location)

    def _skip(self, directive: str | None, location: _Location, text: str, depth: int) -> None:
        """Inside a false conditional only nested conditionals are looked at."""
        column = text.lower().find(directive) + 1 if directive else 1
        if directive in _CONDITIONALS:
            try:
                self._open_conditional(_Conditional(False, False, True, location, column))
            except SourceProblem as problem:
                raise location.error(problem.column, problem.message) from None
        elif directive in (".else", ".endif"):
            self._close_or_flip(directive, location, column, depth)

    def _close_or_flip(self, directive: str, location: _Location, column: int, depth: int) -> None:
        if len(self.conditionals) <= depth:
            raise location.error(column, f"{directive} without .if")
        cond = self.conditionals[-1]
        if directive == ".endif":
            self.conditionals.pop()
            return
        if cond.seen_else:
            raise location.error(column, f".else after .else (the .if is at {cond.location.at(cond.column)})")
        cond.seen_else = True
        cond.active = cond.parent_active and not cond.taken

    def _define_macro(self, lines: Sequence[tuple[int, str]], start: int, location: _Location) -> int:
        """Collect a ``.macro`` body up to its ``.endm``; return the index after it."""
        text = lines[start][1]
        tokens = self._tokens(text, location)
        head = tokens[0]
        if head.text.lower() != ".macro":
            raise location.error(head.column, "a label cannot share a line with .macro")
        name = tokens[1]
        if name.kind != "ident" or name.text.startswith("."):
            raise location.error(name.column, f"expected a macro name after .macro, got {name.describe()}")
        self._check_macro_name(name, location)
        try:
            parameters = parse_parameters(text[name.column - 1 + len(name.text) :], name.column)
        except SourceProblem as problem:
            raise location.error(problem.column, problem.message) from None
        body: list[tuple[int, str]] = []
        for i in range(start + 1, len(lines)):
            number, line = lines[i]
            directive = _leading_directive(line)
            if directive == ".endm":
                self.macros[name.text] = Macro(
                    name.text, parameters, tuple(body), location.file, location.line
                )
                return i + 1
            if directive == ".macro":
                inner = _Location(location.file, number, location.chain)
                raise inner.error(line.find(".") + 1, "a .macro cannot be defined inside another .macro")
            body.append((number, line))
        raise location.error(head.column, f".macro {name.text} has no .endm")

    def _check_macro_name(self, name: Token, location: _Location) -> None:
        if name.text.lower() in SPECS or is_reserved_name(name.text):
            raise location.error(name.column, f"macro name '{name.text}' is an instruction or register name")
        previous = self.macros.get(name.text)
        if previous is not None:
            raise location.error(
                name.column, f"macro '{name.text}' is already defined at {previous.file}:{previous.line}"
            )

    def _tokens(self, text: str, location: _Location) -> list[Token]:
        try:
            return tokenize(text)
        except SourceProblem as problem:
            raise location.error(problem.column, problem.message) from None

    # ----------------------------------------------------------------- pass 1: statements

    def _statement(self, text: str, location: _Location) -> None:
        """One active line: labels, then a directive, a macro invocation or an instruction."""
        stripped = text.lstrip()
        if not stripped or stripped.startswith(";"):
            return
        stream = TokenStream(self._tokens(text, location))
        try:
            self._labels(stream, location)
            if stream.at_end():
                return
            head = stream.next()
            if head.kind != "ident":
                raise SourceProblem(
                    head.column, f"expected a label, mnemonic or directive, got {head.describe()}"
                )
            if head.text.startswith("."):
                self._directive(head, stream, text, location)
            elif head.text in self.macros:
                self._expand(self.macros[head.text], head, text, location)
            elif head.text.lower() in SPECS:
                self._instruction(head, stream, text, location)
            else:
                raise SourceProblem(head.column, f"unknown mnemonic '{head.text}'{self._suggest(head.text)}")
        except SourceProblem as problem:
            raise location.error(problem.column, problem.message) from None

    def _suggest(self, word: str) -> str:
        close = difflib.get_close_matches(word.lower(), [*SPECS, *self.macros], n=1, cutoff=0.6)
        return f" (did you mean '{close[0]}'?)" if close else ""

    def _labels(self, stream: TokenStream, location: _Location) -> None:
        while stream.peek().kind == "ident" and stream.peek(1).text == ":" and stream.peek(1).kind == "op":
            token = stream.next()
            stream.next()
            self._define_label(token, location)

    def _define_label(self, token: Token, location: _Location) -> None:
        name = token.text
        if is_reserved_name(name) or name == ".":
            raise SourceProblem(token.column, f"'{name}' is a register name and cannot be a label")
        local = name.startswith(".")
        full = self.scope + name if local else name
        self._check_new(full, token, "label")
        if not local:
            self.scope = name
        self.symbols[full] = _Symbol(self.pc, location.at(token.column), local=local)
        self.placed = True

    def _check_new(self, full: str, token: Token, what: str) -> None:
        previous = self.symbols.get(full)
        if previous is not None:
            raise SourceProblem(
                token.column, f"duplicate {what} '{token.text}' (first defined at {previous.where})"
            )

    def _qualify(self, name: str, column: int) -> str:
        """The symbol a name means here: local labels belong to the last non-local label."""
        if is_reserved_name(name):
            raise SourceProblem(column, f"register '{name}' cannot be used in an expression")
        return self.scope + name if name.startswith(".") else name

    def _instruction(self, head: Token, stream: TokenStream, text: str, location: _Location) -> None:
        operands = parse_operands(stream, text, self._qualify)
        spec = select_spec(head, operands)
        self.items.append(_Instruction(self.pc, spec, operands, location))
        self._advance(spec.length, head.column)

    def _advance(self, count: int, column: int) -> None:
        """Place ``count`` bytes at the location counter."""
        if count <= 0:
            return
        end = self.pc + count
        if end > MAX_U32 + 1:
            raise SourceProblem(column, f"the program runs past address {MAX_U32:#x}")
        if self.low is None:
            self.low = self.pc
        if end - self.low > MAX_IMAGE_BYTES:
            raise SourceProblem(column, f"the image would exceed {MAX_IMAGE_BYTES >> 20} MiB")
        self.high = max(self.high, end)
        self.pc = end
        self.placed = True

    def _expand(self, macro: Macro, head: Token, text: str, location: _Location) -> None:
        args = split_arguments(text[head.column - 1 + len(head.text) :])
        if len(args) != len(macro.parameters):
            raise SourceProblem(
                head.column,
                f"macro {macro.name} takes {len(macro.parameters)} argument(s)"
                f" ({', '.join(macro.parameters) or 'none'}), got {len(args)}",
            )
        if self.macro_depth >= MAX_MACRO_DEPTH:
            raise SourceProblem(
                head.column,
                f"macros nested deeper than {MAX_MACRO_DEPTH} (does '{macro.name}' invoke itself?)",
            )
        values = dict(zip(macro.parameters, args, strict=True))
        counter = self.expansions
        self.expansions += 1
        lines: list[tuple[int, str]] = []
        hint = f"does '{macro.name}' grow its arguments at each level, or expand too often?"
        for number, line in macro.body:
            try:
                text = substitute(line, values, counter, MAX_EXPANDED_BYTES - self.expanded_bytes)
            except ExpansionTooLarge:
                raise _too_much_text(head.column, hint) from None
            self._expand_by(len(text) + 1, head.column, hint)
            lines.append((number, text))
        chain = (f"in macro {macro.name} expanded at {location.file}:{location.line}", *location.chain)
        self._push(lines, macro.file, chain, macro=True)

    # ----------------------------------------------------------------- pass 1: directives

    def _directive(self, head: Token, stream: TokenStream, text: str, location: _Location) -> None:
        name = head.text.lower()
        if name in _DATA_WIDTHS:
            self._data(name, _DATA_WIDTHS[name], head, stream, location)
            return
        handler = self._handlers().get(name)
        if handler is None:
            close = difflib.get_close_matches(name, [*self._handlers(), *_DATA_WIDTHS], n=1, cutoff=0.7)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise SourceProblem(head.column, f"unknown directive '{head.text}'{hint}")
        handler(head, stream, location)
        stream.expect_end(name)

    def _handlers(self) -> dict[str, Callable[[Token, TokenStream, _Location], None]]:
        return {
            ".org": self._org,
            ".entry": self._entry,
            ".equ": self._equ,
            ".ascii": self._ascii,
            ".asciz": self._ascii,
            ".space": self._space,
            ".align": self._align,
            ".include": self._include,
            ".if": self._if,
            ".ifdef": self._ifdef,
            ".ifndef": self._ifdef,
            ".else": self._else_endif,
            ".endif": self._else_endif,
            ".endm": self._endm,
        }

    def _now(self, stream: TokenStream, purpose: str) -> tuple[int, int]:
        """Parse and evaluate an expression whose value pass 1 needs; return it and its column."""
        column = stream.peek().column
        expr = parse_expression(stream, self._qualify)
        return evaluate(expr, lambda sym: self._value(sym, purpose)), column

    def _org(self, head: Token, stream: TokenStream, location: _Location) -> None:
        value, column = self._now(stream, ".org")
        if self.placed and value < self.pc:
            raise SourceProblem(column, f".org {value:#x} would move backwards from {self.pc:#x}")
        self.pc = value

    def _entry(self, head: Token, stream: TokenStream, location: _Location) -> None:
        if self.entry is not None:
            _, first, col = self.entry
            raise SourceProblem(head.column, f".entry is given twice (first at {first.at(col)})")
        self.entry = (parse_expression(stream, self._qualify), location, head.column)

    def _equ(self, head: Token, stream: TokenStream, location: _Location) -> None:
        token = stream.next()
        if token.kind != "ident":
            raise SourceProblem(token.column, f"expected a symbol name after .equ, got {token.describe()}")
        full = self._qualify(token.text, token.column)
        self._check_new(full, token, "symbol")
        stream.expect_op(",", f"after the name in .equ {token.text}")
        expr = parse_expression(stream, self._qualify)
        symbol = _Symbol(
            None, location.at(token.column), token.text.startswith("."), expr=expr, location=location
        )
        with contextlib.suppress(_NotYet):  # a forward reference: pass 2 computes it
            symbol.value = evaluate(expr, lambda sym: self._value(sym, ".equ"))
        self.symbols[full] = symbol

    def _data(self, name: str, width: int, head: Token, stream: TokenStream, location: _Location) -> None:
        elements: list[tuple[Expr | bytes, int]] = []
        while True:
            token = stream.peek()
            if token.kind == "str":
                if width != 1:
                    raise SourceProblem(token.column, f"{name} takes numbers; strings go in .byte or .ascii")
                elements.append((stream.next().data, token.column))
            else:
                elements.append((parse_expression(stream, self._qualify), token.column))
            if not stream.at_op(","):
                break
            stream.next()
        stream.expect_end(f"{name} element")
        self.items.append(_Data(self.pc, width, elements, location))
        size = sum(len(e) if isinstance(e, bytes) else width for e, _ in elements)
        self._advance(size, head.column)

    def _ascii(self, head: Token, stream: TokenStream, location: _Location) -> None:
        terminator = b"\0" if head.text.lower() == ".asciz" else b""
        elements: list[tuple[Expr | bytes, int]] = []
        while True:
            token = stream.next()
            if token.kind != "str":
                raise SourceProblem(
                    token.column, f"expected a string after {head.text}, got {token.describe()}"
                )
            elements.append((token.data + terminator, token.column))
            if not stream.at_op(","):
                break
            stream.next()
        self.items.append(_Data(self.pc, 1, elements, location))
        self._advance(sum(len(e) for e, _ in elements if isinstance(e, bytes)), head.column)

    def _space(self, head: Token, stream: TokenStream, location: _Location) -> None:
        count, column = self._now(stream, ".space")
        if count & 0x80000000:
            raise SourceProblem(column, f".space needs a count of 0 or more, got {count - (1 << 32)}")
        self._advance(count, column)

    def _align(self, head: Token, stream: TokenStream, location: _Location) -> None:
        boundary, column = self._now(stream, ".align")
        if boundary == 0 or boundary & 0x80000000:
            raise SourceProblem(column, ".align needs a positive boundary, as in .align 4")
        self._advance(-self.pc % boundary, column)

    def _include(self, head: Token, stream: TokenStream, location: _Location) -> None:
        token = stream.next()
        if token.kind != "str":
            raise SourceProblem(
                token.column, f"expected a file name in quotes after .include, got {token.describe()}"
            )
        name = token.data.decode("latin-1")
        path = Path(location.file).parent / name
        if self.include_depth >= MAX_INCLUDE_DEPTH:
            raise SourceProblem(
                token.column,
                f".include nested deeper than {MAX_INCLUDE_DEPTH} (does '{name}' include itself?)",
            )
        stream.expect_end(".include")
        self._push(self._read_include(path, name, token.column), str(path), location.chain, macro=False)

    def _read_include(self, path: Path, name: str, column: int) -> str:
        """The text of an included file: a regular file of bounded size, read once.  Including
        it again adds its text to the expanded text, which ``MAX_EXPANDED_BYTES`` bounds."""
        if "\0" in name:
            shown = name.replace("\0", "\\0")
            raise SourceProblem(column, f".include file name '{shown}' holds a NUL character (\\0)")
        try:
            identity = file_identity(path)
            source = self.sources.get(identity)
            if source is None:
                source = decode_source(read_source_bytes(path), str(path))
                self.sources[identity] = source
                return source
        except FileNotFoundError:
            raise SourceProblem(column, f".include file '{name}' not found (looked for {path})") from None
        except OSError as exc:
            raise SourceProblem(
                column, f"cannot read .include file '{name}': {exc.strerror or exc}"
            ) from None
        except SourceRefused as exc:
            raise SourceProblem(column, f".include file '{name}' {exc.reason}") from None
        except ValueError as exc:  # a name the file system cannot encode
            raise SourceProblem(column, f"cannot read .include file '{name}': {exc}") from None
        self._expand_by(len(source) + 1, column, f"is '{name}' included over and over (or by itself)?")
        return source

    def _expand_by(self, size: int, column: int, hint: str) -> None:
        """Count ``size`` characters of expanded text against ``MAX_EXPANDED_BYTES``."""
        if self.expanded_bytes + size > MAX_EXPANDED_BYTES:
            raise _too_much_text(column, hint)
        self.expanded_bytes += size

    def _if(self, head: Token, stream: TokenStream, location: _Location) -> None:
        value, _ = self._now(stream, ".if")
        self._open_conditional(_Conditional(True, value != 0, value != 0, location, head.column))

    def _ifdef(self, head: Token, stream: TokenStream, location: _Location) -> None:
        token = stream.next()
        if token.kind != "ident":
            raise SourceProblem(
                token.column, f"expected a symbol name after {head.text}, got {token.describe()}"
            )
        defined = self._qualify(token.text, token.column) in self.symbols
        taken = defined if head.text.lower() == ".ifdef" else not defined
        self._open_conditional(_Conditional(True, taken, taken, location, head.column))

    def _open_conditional(self, cond: _Conditional) -> None:
        if len(self.conditionals) >= MAX_CONDITIONAL_DEPTH:
            outer = self.conditionals[0]
            raise SourceProblem(
                cond.column,
                f"conditionals nested deeper than {MAX_CONDITIONAL_DEPTH} (the outermost open one is at"
                f" {outer.location.at(outer.column)}; is an .endif missing?)",
            )
        self.conditionals.append(cond)

    def _else_endif(self, head: Token, stream: TokenStream, location: _Location) -> None:
        # A conditional opened in an enclosing file or macro body cannot be closed here.
        self._close_or_flip(head.text.lower(), location, head.column, self.frames[-1].conditionals)

    def _endm(self, head: Token, stream: TokenStream, location: _Location) -> None:
        raise SourceProblem(head.column, ".endm without .macro")

    # ----------------------------------------------------------------- symbols

    def _value(self, sym: Sym, purpose: str | None) -> int:
        """A symbol's value.  ``purpose`` names the pass-1 directive asking (then symbols
        defined later are errors), or is None in pass 2."""
        symbol = self.symbols.get(sym.name)
        if symbol is None:
            if purpose is None:
                raise SourceProblem(sym.column, f"undefined symbol '{sym.text}'")
            raise _NotYet(
                sym.column, f"undefined symbol '{sym.text}' ({purpose} needs symbols defined before it)"
            )
        if symbol.value is not None:
            return symbol.value
        return self._resolve_equ(symbol, sym, purpose)

    def _resolve_equ(self, symbol: _Symbol, sym: Sym, purpose: str | None) -> int:
        """Evaluate an ``.equ`` that named symbols defined after it, after the waiting ones it
        names, and theirs: depth first with an explicit stack, however long the chain, looking
        at each name once."""
        assert symbol.expr is not None
        if purpose is not None and symbol.blocked_by is not None and symbol.blocked_by not in self.symbols:
            raise _NotYet.depends(sym, purpose)
        stack = [(symbol, iter(symbols_of(symbol.expr)))]
        symbol.resolving = True
        try:
            while stack:
                top, names = stack[-1]
                waiting = self._next_waiting(top, names, stack, purpose)
                if waiting is not None:
                    assert waiting.expr is not None
                    waiting.resolving = True
                    stack.append((waiting, iter(symbols_of(waiting.expr))))
                    continue
                assert top.expr is not None and top.location is not None
                try:
                    top.value = evaluate(top.expr, lambda inner: self._value(inner, purpose))
                except _NotYet:
                    raise
                except SourceProblem as problem:
                    raise top.location.error(problem.column, problem.message) from None
                top.resolving = False
                stack.pop()
        except _NotYet:
            raise _NotYet.depends(sym, purpose) from None
        finally:
            for waiting, _ in stack:
                waiting.resolving = False
        assert symbol.value is not None
        return symbol.value

    def _next_waiting(
        self,
        top: _Symbol,
        names: Iterator[Sym],
        stack: list[tuple[_Symbol, Iterator[Sym]]],
        purpose: str | None,
    ) -> _Symbol | None:
        """The next waiting ``.equ`` among the names ``top`` mentions (left to right), or None
        when ``top`` can be evaluated now -- or when a name is undefined, which evaluating then
        reports.  In pass 1 a name still undefined marks the whole chain as blocked by it, so
        that asking again costs nothing until that name is defined."""
        assert top.location is not None
        for name in names:
            found = self.symbols.get(name.name)
            if found is not None and found.value is not None:
                continue
            blocker = name.name if found is None else found.blocked_by
            if purpose is not None and blocker is not None and blocker not in self.symbols:
                for waiting, _ in stack:
                    waiting.blocked_by = blocker
                raise _NotYet(name.column, f"undefined symbol '{name.text}'")
            if found is None:
                return None
            if found.resolving:
                raise top.location.error(name.column, f"symbol '{name.text}' is defined in terms of itself")
            return found
        return None

    # ----------------------------------------------------------------- pass 2

    def finish(self) -> Image:
        """Pass 2: resolve what waited, encode everything, build the image."""
        for symbol in self.symbols.values():
            if symbol.value is None and symbol.expr is not None and symbol.location is not None:
                self._resolve_equ(symbol, Sym("", symbol.where, symbol.expr.column), None)
        base = self.low if self.low is not None else self.pc
        data = bytearray(self.high - base if self.low is not None else 0)
        for item in self.items:
            try:
                encoded = self._encode(item)
            except SourceProblem as problem:
                raise item.location.error(problem.column, problem.message) from None
            offset = item.address - base
            data[offset : offset + len(encoded)] = encoded
        entry = base
        if self.entry is not None:
            expr, location, _ = self.entry
            try:
                entry = evaluate(expr, lambda sym: self._value(sym, None))
            except SourceProblem as problem:
                raise location.error(problem.column, problem.message) from None
        symbols = {
            name: s.value
            for name, s in self.symbols.items()
            if not s.local and not s.from_define and s.value is not None
        }
        return Image(base=base, data=bytes(data), entry=entry, symbols=symbols)

    def _encode(self, item: _Instruction | _Data) -> bytes:
        def value(expr: Expr) -> int:
            return evaluate(expr, lambda sym: self._value(sym, None))

        if isinstance(item, _Instruction):
            return encode_instruction(item.spec, item.operands, value)
        out = bytearray()
        for element, column in item.elements:
            if isinstance(element, bytes):
                out += element
                continue
            number = value(element)
            if item.width in _WIDTH_LIMITS:
                top, bottom, bits = _WIDTH_LIMITS[item.width]
                if top < number < bottom:
                    shown = number - (1 << 32) if number & 0x80000000 else number
                    raise SourceProblem(column, f"value {shown} does not fit in {bits} bits")
            out += (number & ((1 << (8 * item.width)) - 1)).to_bytes(item.width, "little")
        return bytes(out)


def _too_much_text(column: int, hint: str) -> SourceProblem:
    return SourceProblem(
        column,
        f"macro expansions and repeated .includes add more than {size_text(MAX_EXPANDED_BYTES)}"
        f" of text in all (the limit; {hint})",
    )


def _leading_directive(text: str) -> str | None:
    """The directive a line starts with (after any labels), lower-cased, without tokenizing:
    skipped lines and macro bodies may hold anything."""
    m = _LEADING_DIRECTIVE.match(text)
    return m.group(1).lower() if m else None
