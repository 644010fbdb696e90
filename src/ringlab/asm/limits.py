"""The assembler's limits, in one place (docs/assembly.md, "Limits", lists them for users).

They bound the work any input can ask for, so that the assembler always answers -- with an image
or with an ``AssemblyError`` naming file:line:column, the limit and its value -- and never
recurses, loops or allocates without bound.  Each is far above what a real program needs: the
guest kernel (src/ringlab/guestos/kernel, with any workload) nests conditionals, macros and
includes 2 deep, and its macro expansions add under 7 KiB of text.

The sizes also bound the time: the assembler spends a few microseconds of CPU per byte of source
at worst, so that the largest expansion the limits allow fails within a second or so.

None of them depends on Python's recursion limit: expressions are parsed and evaluated with an
explicit stack, and so are included files and macro bodies.
"""

from __future__ import annotations

__all__ = [
    "MAX_CONDITIONAL_DEPTH",
    "MAX_EXPANDED_BYTES",
    "MAX_EXPRESSION_DEPTH",
    "MAX_IMAGE_BYTES",
    "MAX_INCLUDE_DEPTH",
    "MAX_MACRO_DEPTH",
    "MAX_SOURCE_BYTES",
    "size_text",
]

MAX_EXPRESSION_DEPTH = 64
"""Parentheses and unary operators (``- ~ +``) open inside one another in one expression.  A chain
of binary operators (``1 + 1 + ... + 1``) nests nothing and may be as long as the line."""

MAX_CONDITIONAL_DEPTH = 64
"""``.if``/``.ifdef``/``.ifndef`` open inside one another (those in skipped lines count too)."""

MAX_MACRO_DEPTH = 64
"""Macro invocations inside macro expansions."""

MAX_INCLUDE_DEPTH = 32
"""``.include`` inside included files."""

MAX_SOURCE_BYTES = 1 << 20
"""One source file read from disk (the program given by path, or an ``.include``): a regular
file of at most this many bytes.  Devices, FIFOs and directories are refused before reading."""

MAX_EXPANDED_BYTES = 128 << 10
"""The text that macro expansions and repeated ``.include`` add, in all: every expansion's lines
(after substitution) count, and so does a file included again (its first inclusion does not).
It stops a macro whose argument doubles at each level (``r \\x\\x``), macros that invoke each
other many times over, and a file that includes itself twice, long before memory or time runs
out."""

MAX_IMAGE_BYTES = 256 << 20
"""The assembled image, from its lowest to its highest byte: a guard against ``.space
0xFFFFFFFF``, far more than any RL-32 machine's memory."""


def size_text(count: int) -> str:
    """A byte count as the messages and docs write it: ``4 MiB``, ``512 KiB`` or ``100 bytes``."""
    for shift, unit in ((20, "MiB"), (10, "KiB")):
        if count >= 1 << shift and count % (1 << shift) == 0:
            return f"{count >> shift} {unit}"
    if count >= 1 << 20:
        return f"{count / (1 << 20):.1f} MiB"
    return f"{count} bytes"
