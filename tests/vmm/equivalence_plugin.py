"""A pytest plugin that turns the ISA conformance suite into an equivalence suite.

Loaded into a pytest run of ``tests/isa`` (``-p tests.vmm.equivalence_plugin``), it replaces
``ringlab.machine.run_image`` so that every program those tests run is also run under each
technique in ``RINGLAB_EQUIVALENCE`` (comma-separated; ``hw+np`` = hw with nested paging); the
native result is returned so the ISA assertions still hold, and every difference in console
output, exit, final registers or virtual time is appended as a JSON line to
``RINGLAB_EQUIVALENCE_REPORT``.  The one allowed difference is cpuid leaf 1 ecx bit 31 under hw.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

import ringlab.machine
from ringlab.image import Image
from ringlab.machine import RunResult
from ringlab.vmm import run_vm

_native = ringlab.machine.run_image
_current = "?"


def _same_registers(a: dict[str, int], b: dict[str, int], technique: str) -> bool:
    if technique.startswith("hw"):
        return all(a[k] == b[k] or a[k] ^ b[k] == 1 << 31 for k in a)
    return a == b


def _compare(image: Image, native: RunResult, kw: dict[str, Any]) -> None:
    report = os.environ["RINGLAB_EQUIVALENCE_REPORT"]
    n = native.to_json()
    for technique in os.environ["RINGLAB_EQUIVALENCE"].split(","):
        name, _, np = technique.partition("+")
        result = run_vm(image, technique=name, nested_paging=bool(np), **kw).to_json()
        diffs = []
        if result["console"] != n["console"]:
            diffs.append("console")
        if result["exit"] != n["exit"]:
            diffs.append("exit")
        if not _same_registers(n["registers"], result["registers"], technique):
            diffs.append("registers")
        if result["stats"]["guest"]["virtual_time"] != n["stats"]["guest"]["virtual_time"]:
            diffs.append("virtual_time")
        if diffs:
            with open(report, "a") as out:
                out.write(
                    json.dumps(
                        {
                            "test": _current,
                            "technique": technique,
                            "differs": diffs,
                            "native": {k: n[k] for k in ("console", "exit", "registers")},
                            "vm": {k: result[k] for k in ("console", "exit", "registers")},
                        }
                    )
                    + "\n"
                )


def run_image_everywhere(image: Image, **kw: Any) -> RunResult:
    native = _native(image, **kw)
    _compare(image, native, kw)
    return native


@pytest.fixture(autouse=True)
def _everywhere(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    global _current
    _current = request.node.nodeid
    monkeypatch.setattr(ringlab.machine, "run_image", run_image_everywhere)
