"""The speed suite: how fast the simulated hardware runs guest code.

The guest runs the ``compute`` workload (an LCG fills a 4 KiB buffer, then FNV-1a hashes it for
``rounds`` rounds) natively and in-process, with paging and the kernel's timer on.  The reference
is the same algorithm written as a good Python programmer would, timed in the same run.
"""

from __future__ import annotations

import time

from ringlab.errors import RinglabError

__all__ = ["speed_suite", "fnv1a_reference"]

BUFFER_SIZE = 4096
DEFAULT_ROUNDS = 256


def fnv1a_reference(rounds: int, size: int = BUFFER_SIZE) -> int:
    """The compute workload's algorithm in plain Python."""
    x = 1
    buf = bytearray(size)
    for i in range(size):
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF
        buf[i] = (x >> 16) & 0xFF
    h = 2166136261
    for _ in range(rounds):
        for b in buf:
            h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h


def speed_suite(rounds: int | None = None) -> dict[str, float]:
    from ringlab.machine import run_image
    from ringlab_guest.build import build_image

    rounds = rounds or DEFAULT_ROUNDS
    image = build_image("compute", "stock", {"ROUNDS": rounds})

    start = time.perf_counter()
    expected = fnv1a_reference(rounds)
    python_seconds = time.perf_counter() - start

    start = time.perf_counter()
    result = run_image(image)
    guest_seconds = time.perf_counter() - start

    want = f"fnv1a={expected:08x}".encode()
    if want not in result.console:
        raise RinglabError(
            f"the guest computed something else than plain Python ({want.decode()}): "
            f"console was {result.console.decode('latin-1')!r}"
        )
    retired = int(result.to_json()["stats"]["guest"]["retired"])
    return {
        "guest_mips": retired / guest_seconds / 1e6,
        "python_seconds": python_seconds,
        "guest_seconds": guest_seconds,
        "ratio": python_seconds / guest_seconds,
        "rounds": rounds,
        "guest_instructions": retired,
    }
