"""The speed suite: how fast the simulated hardware runs guest code.

The guest runs the ``compute`` workload (an LCG fills a 4 KiB buffer, then FNV-1a hashes it for
``rounds`` rounds) natively and in-process, with paging and the kernel's timer on.  The reference
is the same algorithm written as a good Python programmer would, timed in the same run.
"""

from __future__ import annotations

import time

from ringlab.errors import RinglabError
from ringlab.guestos import KernelFlavour
from ringlab.guestos.reference import fnv1a_reference

__all__ = ["fnv1a_reference", "speed_suite"]

DEFAULT_ROUNDS = 256


def speed_suite(rounds: int | None = None) -> dict[str, float]:
    from ringlab.guestos.build import build_image
    from ringlab.machine import run_image

    rounds = rounds or DEFAULT_ROUNDS
    image = build_image("compute", KernelFlavour.STOCK, {"ROUNDS": rounds})

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
