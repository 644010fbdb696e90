"""Helpers for the VMM tests: run an image under a technique and compare with native.

``vm(image, "hw+np")`` runs under hw with nested paging.  Every test shows the program it runs:
bare RL-32 programs inline, guest workloads by name and defines (services/guest/.../workloads).
"""

from __future__ import annotations

from typing import Any

from ringlab.asm import assemble
from ringlab.image import Image
from ringlab.machine import run_image
from ringlab.vmm import run_vm

LIMIT = 5_000_000


def vm(image: Image, technique: str, **kw: Any) -> dict[str, Any]:
    name, _, np = technique.partition("+")
    kw.setdefault("max_instructions", LIMIT)
    result: dict[str, Any] = run_vm(image, technique=name, nested_paging=bool(np), **kw).to_json()
    return result


_NATIVE: dict[tuple[int, bytes, int], dict[str, Any]] = {}


def native(image: Image) -> dict[str, Any]:
    """The native run of ``image`` (cached: many tests compare against the same one)."""
    key = (image.base, bytes(image.data), image.entry)
    if key not in _NATIVE:
        _NATIVE[key] = run_image(image, max_instructions=LIMIT).to_json()
    return _NATIVE[key]


def program(source: str) -> Image:
    return assemble(source)


def observable(result: dict[str, Any]) -> dict[str, Any]:
    """What equivalence compares: console, exit, final guest registers, virtual time."""
    return {
        "console": result["console"],
        "exit": result["exit"],
        "registers": result["registers"],
        "virtual_time": result["stats"]["guest"]["virtual_time"],
    }
