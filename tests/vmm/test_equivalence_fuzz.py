"""Equivalence, fuzzed (issue 12): generated programs run natively and under every full-virtualization
technique must give native's console, exit, guest-visible registers, retired instructions per ring
and virtual time (cpuid's hypervisor bit aside); pv runs the paravirt build of a mutated user
program and must print and end as the stock kernel does natively.

The generators, the runs and the comparison are ``tests/vmm/fuzz_equivalence.py``: random bytes
(``bytes``), the guest OS with bytes of its kernel or user program mutated (``kernel``), and
assembly drawn from the ISA table with random IDTs, TSSs, page tables, rings and timer (``isa``).
Every program is seeded by its index, so a failure names programs that ``python -m
tests.vmm.fuzz_equivalence image GENERATOR INDEX STEM`` writes again, with the ``ringlab run``
commands that show the difference.

Counts (docs/testing.md, The fuzzers): the default run checks 2,000 programs, ``-m fuzz`` another
7,700 (indices after the default ones), ``RINGLAB_FUZZ_FULL=1 -m fuzz`` 50,000 (from index 0).

Status: no known divergence is left (``DIVERGING`` is empty), so every chunk must pass; each
class the fuzzer found is pinned by ``tests/vmm/test_equivalence_regressions.py``.  A generator
that ``DIVERGING`` lists techniques for gets ``xfail(strict=True)`` chunks: only a
``KnownDivergence`` (a difference under a listed technique) counts as the expected failure; a
difference under any other technique, or a technique that raises, fails the test outright, and
a chunk that passes turns its strict xfail red, so ``DIVERGING`` (then the marks) shrink.  The kernel programs are built from the guest OS sources: a change to the kernel changes
them (and may move which of them diverge).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pytest

from tests.vmm.fuzz_equivalence import (
    CRASH,
    GENERATORS,
    TECHNIQUES,
    Divergence,
    check,
    isa_specs_drawn,
    write_program,
)

FULL = os.environ.get("RINGLAB_FUZZ_FULL") == "1"


@dataclass(frozen=True)
class Share:
    default: int
    """Programs in the default run (indices 0 ...)."""
    default_chunk: int
    fuzz: int
    """Programs in ``-m fuzz`` (the indices after the default run's)."""
    fuzz_chunk: int
    full: int
    """Programs with ``RINGLAB_FUZZ_FULL=1 -m fuzz`` (indices 0 ...)."""
    full_chunk: int


SHARES: dict[str, Share] = {
    # CPU per program, all techniques: bytes ~11 ms, isa ~70-110 ms, kernel ~0.6 s: the default
    # run ~75 s of CPU, -m fuzz ~450 s (about 5-8 minutes with -n 2 on a busy 2-core machine)
    "bytes": Share(1_376, 344, 5_000, 500, 20_000, 1_000),
    "isa": Share(600, 60, 2_500, 250, 25_000, 500),
    "kernel": Share(24, 12, 200, 25, 5_000, 50),
}
assert sum(s.default for s in SHARES.values()) >= 2_000
assert sum(s.full for s in SHARES.values()) == 50_000

DIVERGING: dict[str, dict[str, tuple[str, ...]]] = {
    # generator -> technique -> the classes its divergences show today (the regression tests)
    "bytes": {},
    "isa": {},
    "kernel": {},
}
"""Where the default and ``-m fuzz`` shares diverge today; every other (generator, technique) pair
must be equivalent on them (hw with shadow or nested paging everywhere, pv)."""


class KnownDivergence(Exception):
    """A difference under a technique ``DIVERGING`` lists for the generator: the strict xfail's
    expected failure.  Anything else a chunk finds is an ``AssertionError``."""


def _reason(generator: str) -> str:
    known = DIVERGING[generator]
    classes = sorted({c for cs in known.values() for c in cs})
    return (
        f"{', '.join(classes)} (tests/vmm/test_equivalence_regressions.py) under "
        f"{', '.join(sorted(known))}: every chunk has some"
    )


def _chunks(fuzz: bool) -> list[Any]:
    out = []
    for generator, share in SHARES.items():
        if not fuzz:
            start, count, size = 0, share.default, share.default_chunk
        elif FULL:
            start, count, size = 0, share.full, share.full_chunk
        else:
            start, count, size = share.default, share.fuzz, share.fuzz_chunk
        marks = (
            [pytest.mark.xfail(strict=True, raises=KnownDivergence, reason=_reason(generator))]
            if DIVERGING[generator]
            else []
        )
        for first in range(start, start + count, size):
            last = min(first + size, start + count)
            out.append(pytest.param(generator, first, last, marks=marks, id=f"{generator}-{first}-{last}"))
    return out


def _fuzz(generator: str, first: int, last: int) -> None:
    make = GENERATORS[generator]
    found: list[Divergence] = []
    for index in range(first, last):
        found += check(make(index))
    unexpected = [d for d in found if d.technique not in DIVERGING[generator] or CRASH in d.fields]
    if unexpected:
        raise AssertionError(_report(unexpected, f"programs {generator} #{first}-#{last - 1}"))
    if found:
        raise KnownDivergence(_report(found, f"programs {generator} #{first}-#{last - 1}"))


def _report(found: list[Divergence], where: str, shown: int = 3) -> str:
    by: dict[tuple[str, tuple[str, ...]], int] = {}
    for d in found:
        key = (d.technique, d.classes)
        by[key] = by.get(key, 0) + 1
    lines = [f"{len(found)} divergences from native in {where}:"]
    for (technique, classes), n in sorted(by.items()):
        lines.append(f"  {n} under {technique}, looking like: {', '.join(classes) or 'no known class'}")
    lines.append("")
    unknown = [d for d in found if not d.classes]
    for d in (unknown + [d for d in found if d.classes])[:shown]:
        lines += [d.describe(), ""]
    return "\n".join(lines)


@pytest.mark.parametrize(("generator", "first", "last"), _chunks(fuzz=False))
def test_generated_programs_are_equivalent(generator: str, first: int, last: int) -> None:
    _fuzz(generator, first, last)


@pytest.mark.fuzz
@pytest.mark.parametrize(("generator", "first", "last"), _chunks(fuzz=True))
def test_generated_programs_are_equivalent_fuzz(generator: str, first: int, last: int) -> None:
    _fuzz(generator, first, last)


# -- the harness itself -------------------------------------------------------------------------
@pytest.mark.parametrize("generator", list(GENERATORS))
def test_programs_are_reproducible_from_their_index(generator: str, tmp_path: object) -> None:
    """The same index gives the same program: what a failure's reproduction relies on."""
    from pathlib import Path

    from ringlab.image import Image

    make = GENERATORS[generator]
    for index in (0, 7, 1234):
        a, b = make(index), make(index)
        assert (a.image, a.limit, a.memory, a.source) == (b.image, b.limit, b.memory, b.source)
        stem = Path(str(tmp_path)) / f"{generator}-{index}"
        write_program(a, str(stem))
        assert Image.load(f"{stem}.img") == a.image


def test_the_isa_generator_draws_every_instruction() -> None:
    """Every spec of the ISA table, privileged, control and virtualization ones included."""
    from ringlab.isa import TABLE

    seen: set[int] = set()
    for index in range(300):
        seen |= isa_specs_drawn(index)
    assert {spec.opcode for spec in TABLE} == seen


def test_every_technique_is_compared() -> None:
    assert set(TECHNIQUES) == {"bt", "hw", "hw+np", "trap-emulate"}
