"""What the tests of VMs that move between deployments share (snapshots through the services,
``test_vm_snapshot.py``; live migration, ``test_migration.py``): every technique as parameters,
one of them in the default run; a deployment of its own per role; what a moved VM must
reproduce."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from ringlab.store import LocalRedis
from tests.services.conftest import Deployment, start_deployment

SETUPS = [
    ("native", False, "stock"),
    ("trap-emulate", False, "stock"),
    ("bt", False, "stock"),
    ("hw", False, "stock"),
    ("hw", True, "stock"),
    ("pv", False, "paravirt"),
]
"""(technique, nested paging, kernel flavour): every technique the services run."""
SLICE_DEPENDENT = ("translations", "translated_instructions", "cycles")
"""Under bt a moved or restored VM translates its blocks again (its translation cache is rebuilt,
not carried), as after a slice boundary: these counts, and the cycles that price them, may differ."""


def every_technique(default: str) -> list[Any]:
    """``SETUPS`` as parameters: ``default`` (without nested paging) in the default run, the
    others in the slow suite (.ci/run runs both)."""
    return [
        pytest.param(
            t, n, k, id=t + ("+np" if n else ""), marks=() if (t, n) == (default, False) else pytest.mark.slow
        )
        for t, n, k in SETUPS
    ]


def comparable(doc: dict[str, Any], technique: str) -> dict[str, Any]:
    """What a moved VM's result must reproduce: console, exit, registers and the guest's statistics."""
    out = {k: doc[k] for k in ("console", "exit", "registers")}
    guest = doc["stats"]["guest"]
    out["guest"] = {k: v for k, v in guest.items() if technique != "bt" or k not in SLICE_DEPENDENT}
    return out


@contextmanager
def host(redis: LocalRedis, db: int, slice: int) -> Iterator[Deployment]:
    """A deployment of its own (a Redis database, a hypervisor and a pCPU): one host."""
    d = start_deployment(redis, slice=slice, db=db)
    try:
        yield d
    finally:
        d.hypervisor.stop(1)
        d.cpu.stop(1)
