"""Helpers for the guest OS tests: boot a guest image natively and look at what it did.

``boot(image)`` runs it to the end and returns the ``RunResult``; ``guest(*sources)`` builds a
kernel image whose user programs are the given RL-32 sources (program 0 is init; each starts
with ``.include "lib.s"``, the user runtime in src/ringlab/guestos/workloads/lib.s), so a test shows
the exact program it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ringlab.guestos.build import build_custom_image
from ringlab.image import Image
from ringlab.machine import RunResult, run_image

MAX_INSTRUCTIONS = 20_000_000
"""A runaway guest stops here (exit reason "limit") instead of hanging the suite."""


def boot(image: Image, *, memory_size: int = 4 << 20) -> RunResult:
    try:
        return run_image(image, memory_size=memory_size, max_instructions=MAX_INSTRUCTIONS)
    except NotImplementedError:
        # The block compiler (fast=True) is still a placeholder: fall back to the interpreter,
        # which defines the same results.
        return run_image(image, memory_size=memory_size, max_instructions=MAX_INSTRUCTIONS, fast=False)


def guest(*sources: str, defines: dict[str, int] | None = None) -> Image:
    return build_custom_image(sources, defines=defines)


def stats(result: RunResult) -> dict[str, Any]:
    guest_stats: dict[str, Any] = result.to_json()["stats"]["guest"]
    return guest_stats


@pytest.fixture
def run_guest() -> Callable[..., RunResult]:
    """run_guest(*sources, defines=None, memory_size=4 MiB) -> RunResult"""

    def _run(*sources: str, defines: dict[str, int] | None = None, memory_size: int = 4 << 20) -> RunResult:
        return boot(guest(*sources, defines=defines), memory_size=memory_size)

    return _run
