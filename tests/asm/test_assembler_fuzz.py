"""Fuzzing the assembler (issue 14): whatever it is given, it answers -- an image or an
``AssemblyError`` naming file:line:column -- and its work is bounded by its input and the limits.

Five families of inputs, each a hypothesis strategy:

* ``text``: random text (any characters, and text made of the assembler's punctuation);
* ``tokens``: lines of random tokens from the assembler's own vocabulary (the mnemonics of the ISA
  table, directives, registers, operators, numbers, strings, names, macro parameters);
* ``programs``: the constructs the limits are about, random and often past them: deep
  expressions, long operator chains, ``.equ`` chains (forward, backward, cyclic), nested
  conditionals, macros that invoke each other (and themselves, doubling their arguments), and
  ``.include`` of files in a scratch folder (ordinary ones, self-including ones, a symlink to
  /dev/zero, a FIFO, a directory, an over-size file, files that are not UTF-8);
* ``mutations``: windows of the real kernel and workload sources (src/ringlab/guestos), mutated;
* ``bytes``: raw bytes, assembled as a file (``assemble_file``) and through ``.include``.

The property, for every input: no exception but ``AssemblyError`` (whose text is
``file:line:column: message``), with Python's default recursion limit (not the higher one
hypothesis sets), and a deterministic bound on the work -- the characters of the lines the
assembler looks at are at most the input's, plus those of every file it could include once, plus
``MAX_EXPANDED_BYTES``.  No test asserts a time: each prints how many inputs it ran and the
slowest one's CPU time (``pytest -s`` shows it).

Runs (docs/testing.md, "The fuzzers"): the default run takes a seeded share of 2,000 inputs in
all; ``-m fuzz`` 15,000 more (other seeds); with ``RINGLAB_FUZZ_FULL=1``, ``-m fuzz`` takes
100,000 (other seeds again).  Every run is seeded by the family's name and the run's, so it
repeats exactly.
"""

from __future__ import annotations

import contextlib
import gc
import os
import random
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import ringlab.asm.assembler as assembler_module
from ringlab import isa
from ringlab.asm import assemble, assemble_file
from ringlab.asm.limits import MAX_EXPANDED_BYTES, MAX_SOURCE_BYTES
from ringlab.errors import AssemblyError
from ringlab.guestos.build import source_dir

# ---------------------------------------------------------------------------------- how many

SHARES = {"text": 300, "tokens": 600, "programs": 500, "mutations": 400, "bytes": 200}
"""The default run's inputs per family: 2,000 in all."""
FUZZ_FULL = os.environ.get("RINGLAB_FUZZ_FULL") == "1"
FUZZ_RUN = "full" if FUZZ_FULL else "fuzz"
FUZZ_SCALE = 50 if FUZZ_FULL else 7.5
"""``-m fuzz``: 15,000 inputs in all; 100,000 with RINGLAB_FUZZ_FULL=1."""


# ---------------------------------------------------------------------------------- the vocabulary

MNEMONICS = sorted({mnemonic for mnemonic, _form in isa.BY_NAME})
REGISTERS = [*isa.REGISTERS, "EAX", "cs", *(f"cr{n}" for n in (*isa.CONTROL_REGISTERS, 1, 4))]
DIRECTIVES = [
    ".org", ".entry", ".equ", ".byte", ".word", ".dword", ".ascii", ".asciz", ".space", ".align",
    ".include", ".macro", ".endm", ".if", ".ifdef", ".ifndef", ".else", ".endif", ".ORG", ".orgg", ".",
]  # fmt: skip
OPERATORS = ["+", "-", "*", "/", "%", "&", "|", "~", "<<", ">>", "(", ")", "[", "]", ",", ":", ";"]
NAMES = ["main", "x", "A0", "A1", "B", ".loop", ".l", "main.loop", "m", "r", "_", "a.b", "COUNT", "byte", "dword"]  # fmt: skip
PARAMETERS = ["\\x", "\\x\\x", "\\@", "\\()", "\\a", "\\\\", "\\"]
SPECIAL_NUMBERS = ["0", "4294967295", "4294967296", "0x", "0b2", "12ab", "1_0", "9" * 40, "0" * 60 + "7"]
ESCAPES = ["\\n", "\\t", "\\0", "\\\\", '\\"', "\\'", "\\x41", "\\x4", "\\xZZ", "\\q", "\\"]


def _pools() -> tuple[list[str], list[str]]:
    """Numbers and quoted strings, made once from a fixed seed: the vocabulary's literals."""
    rng = random.Random(14)
    numbers = [*SPECIAL_NUMBERS]
    for _ in range(30):
        value = rng.choice([rng.randrange(256), rng.randrange(1 << 32), rng.randrange(1 << 36)])
        numbers.append(rng.choice(["{}", "{:#x}", "{:#X}", "{:#b}"]).format(value))
    quoted = []
    for _ in range(30):
        quote = rng.choice(['"', "'"])
        parts = [rng.choice([*ESCAPES, chr(rng.randrange(32, 0x3FF))]) for _ in range(rng.randrange(4))]
        quoted.append(quote + "".join(parts) + (quote if rng.randrange(5) else ""))
    return numbers, quoted


NUMBERS, QUOTED = _pools()
WORDS = [*MNEMONICS, *DIRECTIVES, *REGISTERS, *OPERATORS, *NAMES, *PARAMETERS, *NUMBERS, *QUOTED]
LINE_STARTS = [*MNEMONICS, *DIRECTIVES, *(f"{name}:" for name in NAMES), "m", "r", "\n", ";"]
OPERANDS = [*REGISTERS, *OPERATORS, *NAMES, *PARAMETERS, *NUMBERS, *QUOTED, ",", ",", ",", "byte [", "]"]
NEWLINES = ["\n"] * 6 + ["\r\n", "\r"]
"""A token is picked by one byte of a byte string that hypothesis draws (and shrinks) whole: at
the start of a line from ``LINE_STARTS``, after it from ``OPERANDS`` or a line break; a byte of 240
or more picks any word, anywhere."""


def spell(picks: bytes) -> str:
    """The program a byte string spells, one token per byte."""
    words: list[str] = []
    start = True
    for b in picks:
        if b >= 240:
            word = WORDS[b * 7 % len(WORDS)]
        elif start:
            word = LINE_STARTS[b % len(LINE_STARTS)]
        elif b % 5 == 0:
            word = NEWLINES[b // 5 % len(NEWLINES)]
        else:
            word = OPERANDS[b % len(OPERANDS)]
        start = word in NEWLINES
        words.append(word)
    return " ".join(words)


token_programs = st.binary(max_size=400).map(spell)


def random_line(rng: random.Random) -> str:
    """A line of up to 10 tokens, for the seeded generators."""
    return " ".join(rng.choice(WORDS) for _ in range(rng.randrange(11)))


def seeded(build: Callable[[random.Random, int], str], largest: int) -> st.SearchStrategy[str]:
    """``build(rng, size)``: hypothesis draws a size class and a seed, the seeded generator the
    rest -- two draws per input, however large the input.  The classes: small, up to a quarter,
    up to ``largest``, and near ``largest`` (where the limits are)."""

    def make(size_class: int, number: int) -> str:
        rng = random.Random(number)
        high = (largest // 4, largest, largest)[size_class - 1] if size_class else 8
        size = high - rng.randrange(high // 8 + 1) if size_class == 3 else rng.randrange(high + 1)
        return build(rng, size)

    return st.builds(make, st.sampled_from([0, 1, 2, 3]), st.integers(0, 2**32 - 1))


# ---------------------------------------------------------------------------------- the scratch folder


@dataclass(frozen=True)
class Scratch:
    """Files to ``.include``, made once per process: ordinary, recursive, refused, not UTF-8."""

    folder: Path
    names: tuple[str, ...]
    readable: int
    """The characters of every file here (``raw.s`` at its largest) and of the guest OS sources
    that the assembler may read: what first inclusions may add to the input."""


RAW_LARGEST = 4096
"""``raw.s`` holds each input of the ``bytes`` family in turn: at most this many bytes."""


def _make_scratch(folder: Path) -> Scratch:
    texts: dict[str, bytes] = {
        "empty.s": b"",
        "nop.s": b"nop\n",
        "nops.s": b"nop\n" * 200,
        "self.s": b'.include "self.s"\n',
        "twice.s": b'nop\n.include "twice.s"\n.include "twice.s"\n',
        "ping.s": b'.include "pong.s"\n',
        "pong.s": b'.include "ping.s"\n',
        "macros.s": b".macro bump x\n  inc \\x\n.endm\n",
        "labels.s": b"lab:\n  nop\n.lab2: .byte 1\n",
        "open_if.s": b".if 1\n",
        "endif.s": b".endif\n",
        "open_macro.s": b".macro unfinished\n  nop\n",
        "latin1.s": b"nop ; caf\xe9\n",
        "utf16.s": b"\xff\xfe" + "nop\n".encode("utf-16-le"),
        "big.s": b"nop\n" * (MAX_SOURCE_BYTES // 4) + b"\n",
        "raw.s": b"",
    }
    for name, data in texts.items():
        (folder / name).write_bytes(data)
    names = [*texts, "missing.s", "dir.s", "dangling.s", "sub/../nop.s", "./nop.s", "/", "nul\\0.s", ""]
    (folder / "dir.s").mkdir()
    (folder / "sub").mkdir()
    (folder / "dangling.s").symlink_to(folder / "nowhere.s")
    if Path("/dev/zero").exists():
        (folder / "zero.s").symlink_to("/dev/zero")
        names.append("zero.s")
    if hasattr(os, "mkfifo"):
        os.mkfifo(folder / "fifo.s")
        names.append("fifo.s")
    readable = RAW_LARGEST + sum(len(data) for data in texts.values() if len(data) <= MAX_SOURCE_BYTES)
    readable += sum(len(text) for text in REAL_TEXTS.values())
    return Scratch(folder, tuple(names), readable)


REAL_FILES = sorted([*(source_dir() / "kernel").glob("*.s"), *(source_dir() / "workloads").glob("*.s")])
REAL_TEXTS = {path: path.read_text() for path in REAL_FILES}
_scratch: list[Scratch] = []


@pytest.fixture(scope="module", autouse=True)
def scratch_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scratch]:
    _scratch.append(_make_scratch(tmp_path_factory.mktemp("asm-fuzz")))
    yield _scratch[0]
    _scratch.clear()


def scratch() -> Scratch:
    """The module's scratch folder (the strategies read its names while they draw)."""
    return _scratch[0]


# ---------------------------------------------------------------------------------- the property


@dataclass
class Stats:
    """What one fuzzer saw: inputs, errors, and the slowest input's CPU time (reported, never
    asserted)."""

    family: str
    inputs: int = 0
    runs: int = 0
    """Assembler runs: the ``bytes`` family assembles each input three ways."""
    errors: int = 0
    slowest: float = 0.0
    slowest_input: str = ""

    def report(self) -> str:
        return (
            f"assembler fuzz, {self.family}: {self.inputs} inputs, {self.runs} runs ({self.errors}"
            f" AssemblyError, {self.runs - self.errors} assembled), 0 crashes, 0 hangs;"
            f" slowest {self.slowest * 1000:.0f} ms CPU: {self.slowest_input[:160]!r}"
        )


class LineCounter:
    """Counts the characters of the lines the assembler looks at (every line passes through
    ``_leading_directive`` once: run, skipped or collected into a macro body), one more for
    each line's end: a measure of its work that no clock moves."""

    def __init__(self) -> None:
        self.count = 0
        self._real = assembler_module._leading_directive

    def __call__(self, text: str) -> str | None:
        self.count += len(text) + 1
        return self._real(text)


@contextlib.contextmanager
def counting_lines() -> Iterator[LineCounter]:
    counter = LineCounter()
    assembler_module._leading_directive = counter
    try:
        yield counter
    finally:
        assembler_module._leading_directive = counter._real


CALLER_STACK = 50
"""Frames a program calling the assembler may use: it runs with Python's default recursion limit
(1,000) less these, as under ``ringlab asm`` -- not with the higher limit hypothesis sets while
it runs a test, which would hide a recursion that ``ringlab asm`` dies of."""


@contextlib.contextmanager
def default_stack() -> Iterator[None]:
    depth = 0
    frame = sys._getframe()
    while frame is not None:
        depth += 1
        frame = frame.f_back  # type: ignore[assignment]
    saved = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + 1000 - CALLER_STACK)
    try:
        yield
    finally:
        sys.setrecursionlimit(saved)


def answers(stats: Stats, counter: LineCounter, source: str, run: Callable[[], object]) -> None:
    """Run the assembler once: it may only return or raise AssemblyError, within the work bound."""
    counter.count = 0
    recursed = False
    gc.disable()  # the time measured is the assembler's, not a collection of hypothesis's garbage
    start = time.process_time()
    try:
        with default_stack():
            run()
    except RecursionError:
        recursed = True  # reported below, outside this handler: wherever the limit struck, one failure
    except AssemblyError as exc:
        stats.errors += 1
        assert exc.line >= 1 and exc.column >= 1 and exc.message, repr(exc)
        assert str(exc) == f"{exc.file}:{exc.line}:{exc.column}: {exc.message}"
    finally:
        spent = time.process_time() - start
        gc.enable()
        stats.runs += 1
        if spent > stats.slowest:
            stats.slowest, stats.slowest_input = spent, source
    assert not recursed, "the assembler recursed past Python's default recursion limit"
    bound = len(source) + 1 + scratch().readable + MAX_EXPANDED_BYTES
    assert counter.count <= bound, f"the assembler looked at {counter.count:,} characters, over {bound:,}"


def fuzz(
    family: str, strategy: st.SearchStrategy[Any], run_name: str, examples: int, check: Callable[..., None]
) -> None:
    """Run ``check(stats, counter, example)`` on ``examples`` inputs drawn from ``strategy``,
    seeded by the family's and the run's names; print what it saw."""
    stats = Stats(f"{family} ({run_name} run)")
    with counting_lines() as counter:

        @seed(zlib.crc32(f"{family}:{run_name}".encode()))
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            print_blob=False,
            suppress_health_check=[
                HealthCheck.too_slow,
                HealthCheck.data_too_large,
                HealthCheck.filter_too_much,
                HealthCheck.large_base_example,
            ],
        )
        @given(strategy)
        def run(example: Any) -> None:
            stats.inputs += 1
            check(stats, counter, example)

        run()
    print(stats.report())
    assert stats.inputs >= min(examples, 50), stats.report()


def share(family: str, fuzz_run: bool) -> tuple[str, int]:
    """The run's name (its seed) and how many inputs it takes."""
    if fuzz_run:
        return FUZZ_RUN, int(SHARES[family] * FUZZ_SCALE)
    return "default", SHARES[family]


# ---------------------------------------------------------------------------------- text and tokens

PUNCTUATION = "abcx01 \t\n\r;,:.()[]+-*/%&|~<>\\\"'@_"
texts = st.one_of(
    st.text(st.characters(codec=None, exclude_categories=()), max_size=300),
    st.text(PUNCTUATION, max_size=400),
)


def check_source(stats: Stats, counter: LineCounter, source: str) -> None:
    filename = str(scratch().folder / "main.s")
    answers(stats, counter, source, lambda: assemble(source, filename=filename))


def _text(fuzz_run: bool) -> None:
    fuzz("text", texts, *share("text", fuzz_run), check_source)


def _tokens(fuzz_run: bool) -> None:
    fuzz("tokens", token_programs, *share("tokens", fuzz_run), check_source)


# ---------------------------------------------------------------------------------- programs


# Each generator mostly writes valid lines, so that inputs get past their first line to the depths
# the limits are about, and tags its names (``tag``) so that snippets put together do not clash.


def tag(rng: random.Random) -> str:
    return f"t{rng.randrange(1 << 20)}"


def valid_line(rng: random.Random) -> str:
    """A line that assembles, or now and then a random one."""
    if not rng.randrange(20):
        return random_line(rng)
    return rng.choice(["nop", ".byte 1", "mov eax, 1", "push eax", ".dword 4", "; note", ""])


def nested_expression(rng: random.Random, depth: int) -> str:
    """Parentheses and unary operators ``depth`` deep (the limit is 64), closed or not quite."""
    prefix = "".join(rng.choice(["(", "-", "~", "+", "-(", "~("]) for _ in range(depth))
    closes = max(prefix.count("(") - rng.choice([0] * 8 + [1, 2]), 0)
    atom = rng.choice(["1", "0x10", "'a'", "1 + 2 * 3", "7 / 2", "undefined_name"])
    head = rng.choice(
        ["mov eax, ", ".dword ", ".if ", f".equ E{tag(rng)}, ", ".space ", "push ", "mov eax, ["]
    )
    line = head + prefix + atom + ")" * closes + ("]" if head.endswith("[") else "")
    return line + ("\nnop\n.endif" if head == ".if " else "")


def operator_chain(rng: random.Random, count: int) -> str:
    """A chain of ``count`` binary operators: no nesting, any length."""
    ops = [
        rng.choice(["+", "-", "*", "|", "&", "<<", ">>", "/", "%"]) for _ in range(rng.choice([1, 1, 2, 8]))
    ]
    terms = [rng.choice(["1", "2", "0", "7"])]
    terms += [f" {ops[i % len(ops)]} {1 + i % 3}" for i in range(count)]
    head = rng.choice([".dword ", f".equ C{tag(rng)}, ", ".if ", "mov eax, ", ".space 7 & "])
    return head + "".join(terms) + ("\nnop\n.endif" if head == ".if " else "")


def equ_chain(rng: random.Random, count: int) -> str:
    """``count`` .equ, each naming the next, in either order, ending anywhere (a cycle too)."""
    q = f"Q{tag(rng)}_"
    op = rng.choice(["+", "-", "*", "|", "<<"])
    lines = [f".equ {q}{i}, {q}{i + 1} {op} 1" for i in range(count)]
    if rng.randrange(2):
        lines.reverse()
    end = rng.choice(["0", "0", "0", f"{q}0", "undefined_name", f"{q}here", "1 / 0"])
    lines.append(f".equ {q}{count}, {end}")
    use = rng.choice([f".dword {q}0", f".if {q}0\nnop\n.endif", f".space {q}0 & 7", f"{q}here: nop"])
    lines.insert(rng.randrange(len(lines) + 1), use)
    return "\n".join(lines)


def conditionals(rng: random.Random, count: int) -> str:
    """``count`` lines of conditionals (often past 64 deep) and bodies, balanced or not."""
    lines: list[str] = []
    depth = 0
    for _ in range(count):
        kind = rng.choice(["if", "if", "if", "else", "endif", "endif", "body"])
        if kind == "if" or (kind != "body" and depth <= 0 and rng.randrange(8)):
            lines.append(
                rng.choice([".if 1", ".if 0", ".ifdef x", ".ifndef x", ".if 2 - 2", ".if", ".ifdef 1"])
            )
            depth += 1
        elif kind == "else":
            lines.append(".else")
        elif kind == "endif":
            lines.append(".endif")
            depth -= 1
        else:
            lines.append(valid_line(rng))
    if rng.randrange(4):
        lines += [".endif"] * max(depth, 0)
    return "\n".join(lines)


def macros(rng: random.Random, count: int) -> str:
    """Up to ``count`` macros, mostly well formed, that invoke each other and themselves -- with
    arguments that double, gain parentheses or multiply -- then invocations of them."""
    suffix = tag(rng)
    names = [f"{name}{suffix}" for name in rng.sample(["m", "r", "twice", "put", "M2"], rng.randrange(1, 5))]
    names = names[: max(count, 1)] + (["mov"] if not rng.randrange(30) else [])
    arity = {name: rng.choice([0, 1, 1, 1, 2, 3]) for name in names}
    parameters = ["x", "y", "n"]

    def invocation(arguments: list[str]) -> str:
        name = rng.choice(names)
        wanted = arity[name] if rng.randrange(8) else rng.randrange(4)
        return f"{name} " + ", ".join(rng.choice(arguments) for _ in range(wanted))

    lines: list[str] = []
    for name in names:
        own = parameters[: arity[name]]
        lines.append(f".macro {name} " + rng.choice([", ", " ", ","]).join(own))
        inner = [f"\\{p}" for p in own] or ["1"]
        grown = [*inner, *(f"{a}{a}" for a in inner), *(f"({a})" for a in inner), "1", "[eax]", "\\@"]
        for _ in range(rng.randrange(1, 8)):
            lines.append(
                rng.choice(
                    [
                        "  " + invocation(grown),
                        "  " + invocation(grown),
                        "  " + invocation(grown),
                        "  " + valid_line(rng),
                        f"  .byte {rng.choice(inner)}",
                        ".l\\@: jmp .l\\@",
                        "  .if 1",
                        "  .endif",
                        f"  .byte {rng.choice(inner)}\\()_0",
                    ]
                )
            )
        if rng.randrange(20):
            lines.append(".endm")
    for _ in range(rng.randrange(1, 4)):
        lines.append(invocation(["1", "eax", "(1)", "2 + 3", '"s"', "[ebx + 4]", "b b"]))
    return "\n".join(lines)


def includes(rng: random.Random, count: int) -> str:
    """``.include`` of the scratch folder's files, plain, conditional, in macros, repeated."""
    names = scratch().names
    lines: list[str] = []
    for _ in range(count + 1):
        name = rng.choice([*names, "nops.s", "nop.s", "twice.s", "empty.s", "sub/../nops.s"])
        macro = f"inc_{tag(rng)}"
        lines.append(
            rng.choice(
                [
                    f'.include "{name}"',
                    f'.include "{name}"',
                    f'.if 1\n.include "{name}"\n.endif',
                    f'.macro {macro}\n.include "{name}"\n.endm\n{macro}\n{macro}',
                    f'.include "{name}" extra',
                    ".include",
                    f".include '{name}'",
                ]
            )
        )
        lines += [f'.include "{name}"'] * rng.randrange(4)
    return "\n".join(lines)


SNIPPETS = [
    seeded(nested_expression, 100),
    seeded(operator_chain, 1500),
    seeded(equ_chain, 400),
    seeded(conditionals, 160),
    seeded(macros, 4),
    seeded(includes, 6),
]
COMBINED = st.lists(st.sampled_from(SNIPPETS).flatmap(lambda snippet: snippet), min_size=2, max_size=4)
programs = st.sampled_from([*SNIPPETS, COMBINED.map("\n".join)]).flatmap(lambda program: program)
"""One construct alone, mostly (the first error ends an assembly), or a few put together."""


def _programs(fuzz_run: bool) -> None:
    fuzz("programs", programs, *share("programs", fuzz_run), check_source)


# ---------------------------------------------------------------------------------- mutations


def mutate(rng: random.Random, path: Path, count: int) -> tuple[Path, str]:
    """A window of a real source (or all of it, now and then), mutated ``count`` times."""
    lines = REAL_TEXTS[path].splitlines()
    if rng.randrange(20):
        start = rng.randrange(max(len(lines), 1))
        lines = lines[start : start + rng.randrange(1, 81)]
    for _ in range(count):
        if not lines:
            lines = [random_line(rng)]
        at = rng.randrange(len(lines))
        kind = rng.choice(["delete", "duplicate", "swap", "insert", "splice", "truncate", "character"])
        if kind == "delete":
            del lines[at]
        elif kind == "duplicate":
            lines[at:at] = lines[at : at + rng.randrange(1, 21)] * rng.randrange(1, 4)
        elif kind == "swap":
            other = rng.randrange(len(lines))
            lines[at], lines[other] = lines[other], lines[at]
        elif kind == "insert":
            make = rng.choice([nested_expression, macros, includes])
            lines.insert(at, rng.choice([random_line(rng), make(rng, rng.randrange(80))]))
        elif kind == "splice":
            donor = REAL_TEXTS[rng.choice(REAL_FILES)].splitlines() or [""]
            lines.insert(at, rng.choice(donor))
        elif kind == "truncate":
            lines[at] = lines[at][: rng.randrange(len(lines[at]) + 1)]
        else:
            text = lines[at]
            where = rng.randrange(len(text) + 1)
            lines[at] = text[:where] + rng.choice([*WORDS, chr(rng.randrange(0x110000))]) + text[where + 1 :]
    return path, "\n".join(lines)


mutated = st.builds(
    lambda path, count, number: mutate(random.Random(number), path, count),
    st.sampled_from(REAL_FILES),
    st.integers(1, 4),
    st.integers(0, 2**32 - 1),
)


def check_mutated(stats: Stats, counter: LineCounter, example: tuple[Path, str]) -> None:
    path, source = example
    answers(stats, counter, source, lambda: assemble(source, filename=str(path)))


def _mutations(fuzz_run: bool) -> None:
    fuzz("mutations", mutated, *share("mutations", fuzz_run), check_mutated)


# ---------------------------------------------------------------------------------- bytes


raw_bytes = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda picks, bad, where: spell(picks).encode()[:where] + bad + spell(picks).encode()[where:],
        st.binary(max_size=60),
        st.binary(min_size=1, max_size=4),
        st.integers(0, 400),
    ),
    st.builds(
        lambda mark, picks: mark + spell(picks).encode(),
        st.sampled_from([b"\xff\xfe", b"\xfe\xff", b"\xef\xbb\xbf"]),
        st.binary(max_size=60),
    ),
)


def check_bytes(stats: Stats, counter: LineCounter, blob: bytes) -> None:
    folder = scratch().folder
    raw = folder / "raw.s"
    assert len(blob) <= RAW_LARGEST
    raw.write_bytes(blob)
    shown = blob.decode("latin-1")
    answers(stats, counter, shown, lambda: assemble_file(raw))
    answers(stats, counter, shown, lambda: assemble('.include "raw.s"', filename=str(folder / "main.s")))
    surrogates = blob.decode("utf-8", "surrogateescape")
    answers(stats, counter, shown, lambda: assemble(surrogates, filename=str(folder / "decoded.s")))


def _bytes(fuzz_run: bool) -> None:
    fuzz("bytes", raw_bytes, *share("bytes", fuzz_run), check_bytes)


# ---------------------------------------------------------------------------------- the tests

FAMILIES = {"text": _text, "tokens": _tokens, "programs": _programs, "mutations": _mutations, "bytes": _bytes}


@pytest.mark.parametrize("family", FAMILIES)
def test_the_assembler_answers_every_input(family: str) -> None:
    """The default run's seeded share."""
    FAMILIES[family](False)


@pytest.mark.fuzz
@pytest.mark.parametrize("family", FAMILIES)
def test_the_assembler_answers_every_input_fuzz(family: str) -> None:
    """The heavier seeded share: 15,000 inputs in all, or 100,000 with RINGLAB_FUZZ_FULL=1."""
    FAMILIES[family](True)
