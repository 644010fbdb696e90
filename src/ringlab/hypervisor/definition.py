"""A VM's definition: what ``CreateVm`` validates and stores (hypervisor.proto, CreateVm), and
what "the same definition" means for an idempotent create.

Plain Python values in, the stored definition (a JSON object: the Redis schema's ``def``) out.
A request that cannot be honoured raises ``InvalidDefinition`` (a ``UsageError``: the one error
table maps it to INVALID_ARGUMENT); one over this hypervisor's per-VM limits raises
``LimitExceeded``, which the service reports as out of a resource.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ringlab.errors import ImageError, RinglabError, UsageError
from ringlab.guestos import FLAVOURS, NO_KERNEL, WORKLOADS, build_image
from ringlab.image import Image
from ringlab.vmm import TECHNIQUES, TechniqueName, default_kernel

__all__ = [
    "COMPARED",
    "DEFAULT_MEMORY",
    "DEFAULT_WEIGHT",
    "DEFINE_MAX",
    "DEFINE_MIN",
    "MAX_MEMORY",
    "SERVICE_TECHNIQUES",
    "Defined",
    "InvalidDefinition",
    "LimitExceeded",
    "UnbootableKernel",
    "define",
    "differences",
]

MAX_MEMORY = 64 << 20
"""This hypervisor's per-VM memory limit."""
DEFAULT_MEMORY = 4 << 20
DEFAULT_WEIGHT = 256
SERVICE_TECHNIQUES = TECHNIQUES
"""The techniques this hypervisor runs (all of them)."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
DEFINE_MIN, DEFINE_MAX = -(1 << 31), (1 << 32) - 1
"""A -D value fits in 32 bits, signed or unsigned (the assembler's .dword)."""
COMPARED = (
    "technique",
    "nested_paging",
    "kernel",
    "workload",
    "defines",
    "image_sha256",
    "memory_size",
    "weight",
    "cap",
    "max_instructions",
    "input",
)
"""What "the same definition" means for an idempotent CreateVm (hypervisor.proto, CreateVm)."""


class InvalidDefinition(UsageError):
    """Raised when a VM definition is malformed or out of range: the message says what to fix."""


class UnbootableKernel(InvalidDefinition):
    """Raised when a workload is to be built for a kernel flavour that cannot boot it."""

    def __init__(self, kernel: str, workload: str) -> None:
        self.kernel = kernel
        self.workload = workload
        super().__init__(
            f"kernel flavour {kernel} cannot boot workload {workload!r}: choose "
            f"{' or '.join(FLAVOURS)} (or leave it unspecified: {default_kernel(TechniqueName.PV)} "
            f"under {TechniqueName.PV}, {default_kernel(TechniqueName.NATIVE)} otherwise); "
            f"{NO_KERNEL} is for a raw image"
        )


class LimitExceeded(RinglabError):
    """Raised when a VM definition asks for more than this hypervisor's per-VM limits."""


@dataclass(frozen=True)
class Defined:
    """A validated definition, the image bytes it runs and the image."""

    definition: dict[str, Any]
    blob: bytes
    image: Image


def _defines(defines: Mapping[str, int]) -> dict[str, int]:
    out = dict(sorted(defines.items()))
    for name, value in out.items():
        if not _IDENTIFIER.match(name):
            raise InvalidDefinition(
                f"define {name[:40]!r} is not a name: use letters, digits and '_', not starting with "
                "a digit (e.g. ROUNDS)"
            )
        if not DEFINE_MIN <= value <= DEFINE_MAX:
            raise InvalidDefinition(
                f"define {name}={value} does not fit in 32 bits: use {DEFINE_MIN} to {DEFINE_MAX}"
            )
    return out


def _kernel_and_image(
    technique: str, kernel: str | None, workload: str, defines: dict[str, int], image: bytes
) -> tuple[str, bytes]:
    """The kernel flavour and the image bytes: the raw image sent (``kernel`` None: no kernel), or
    the workload built here (``kernel`` None: the technique's default)."""
    if image:
        if kernel is None:
            return NO_KERNEL, image
        if kernel not in (*FLAVOURS, NO_KERNEL):
            raise InvalidDefinition(f"unknown kernel flavour {kernel}")
        return kernel, image
    if not workload:
        raise InvalidDefinition(
            "say what the VM runs: name a guest-OS workload in 'workload' (one of "
            f"{', '.join(WORKLOADS)}) and the hypervisor builds the kernel+workload image, or send a "
            "raw image in 'image' (ringlab.image.Image.to_bytes())"
        )
    if workload not in WORKLOADS:
        raise InvalidDefinition(
            f"unknown workload {workload[:40]!r}: valid workloads are {', '.join(WORKLOADS)}"
        )
    if kernel is None:
        kernel = default_kernel(technique)
    elif kernel not in FLAVOURS:
        raise UnbootableKernel(kernel, workload)
    return kernel, build_image(workload, kernel, defines).to_bytes()


def define(
    *,
    name: str,
    technique: str | None,
    nested_paging: bool = False,
    kernel: str | None = None,
    workload: str = "",
    defines: Mapping[str, int] | None = None,
    image: bytes = b"",
    memory_size: int = 0,
    weight: int = 0,
    cap: int = 0,
    max_instructions: int | None = None,
    input: bytes = b"",
    created: float | None = None,
) -> Defined:
    """Validate a VM's definition (0 and "" mean the defaults, as in the request; ``technique``
    None: none chosen; ``kernel`` None: unspecified, any other name not a flavour: unknown)."""
    if not _NAME.match(name):
        raise InvalidDefinition(
            f"VM name {name[:70]!r} is not valid: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if technique is None:
        raise InvalidDefinition(f"choose a technique: one of {', '.join(TECHNIQUES)}")
    if technique not in SERVICE_TECHNIQUES:
        raise InvalidDefinition(
            f"technique {technique!r} is not available in this hypervisor yet "
            f"(available: {', '.join(SERVICE_TECHNIQUES)})"
        )
    if nested_paging and technique != TechniqueName.HW:
        raise InvalidDefinition("nested_paging applies to technique hw only")
    memory = memory_size or DEFAULT_MEMORY
    if memory > MAX_MEMORY:
        raise LimitExceeded(
            f"memory_size {memory} is above this hypervisor's per-VM limit of {MAX_MEMORY} bytes"
        )
    if memory % 4096:
        raise InvalidDefinition(f"memory_size {memory} must be a multiple of 4096 (one page)")
    if cap > 100:
        raise InvalidDefinition(f"cap {cap} is a percent of one pCPU: 0 (none) to 100")
    checked = _defines(defines or {})
    kernel, blob = _kernel_and_image(technique, kernel, workload, checked, image)
    try:
        parsed = Image.from_bytes(blob)
    except ImageError as exc:
        raise InvalidDefinition(f"image is not a Ringlab image: {exc}") from None
    if parsed.base < 0 or parsed.end > memory:
        raise InvalidDefinition(
            f"the image spans {parsed.base:#x}-{parsed.end:#x} but memory_size is {memory:#x}"
        )
    definition = {
        "name": name,
        "technique": technique,
        "nested_paging": nested_paging,
        "kernel": kernel,
        "workload": workload,
        "defines": checked,
        "image_sha256": hashlib.sha256(blob).hexdigest(),
        "memory_size": memory,
        "weight": weight or DEFAULT_WEIGHT,
        "cap": cap,
        "max_instructions": max_instructions,
        "input": input.decode("latin-1"),
        "created": time.time() if created is None else created,
    }
    return Defined(definition, blob, parsed)


def _shown(field: str, value: Any) -> str:
    if field == "image_sha256":
        return f"sha256 {str(value)[:12]}"
    if field == "defines":
        return " ".join(f"{k}={v}" for k, v in value.items()) or "none"
    if value is None:
        return "none"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def differences(existing: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """The fields of ``COMPARED`` in which two definitions differ, each as 'field: existing X,
    requested Y'."""
    out = []
    for field in COMPARED:
        old, new = existing.get(field), wanted.get(field)
        if field == "defines":
            old = dict(sorted((old or {}).items()))
        if old != new:
            name = "image" if field == "image_sha256" else field
            out.append(f"{name}: existing {_shown(field, old)}, requested {_shown(field, new)}")
    return out
