"""A VM's definition: what ``CreateVm`` validates and stores (hypervisor.proto, CreateVm), and
what "the same definition" means for an idempotent create.

Plain Python values in, the stored definition (a JSON object: the Redis schema's ``def``) out.
A request that cannot be honoured raises ``InvalidDefinition`` (a ``UsageError``: the one error
table maps it to INVALID_ARGUMENT), naming the request field at fault in ``field``; that includes
a request over the deployment's per-VM limits (``Limits``: memory, console bytes), which no retry
can change.
"""

from __future__ import annotations

import base64
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
from ringlab.vmm.snapshot import Snapshot, SnapshotError, parse_snapshot

__all__ = [
    "COMPARED",
    "DEFAULT_CONSOLE_QUOTA",
    "DEFAULT_MEMORY",
    "DEFAULT_WEIGHT",
    "DEFINE_MAX",
    "DEFINE_MIN",
    "MAX_INPUT",
    "MAX_MEMORY",
    "SERVICE_TECHNIQUES",
    "Defined",
    "InvalidDefinition",
    "LimitExceeded",
    "Limits",
    "UnbootableKernel",
    "define",
    "define_restored",
    "differences",
    "is_vm_ref",
]

MAX_MEMORY = 64 << 20
"""The default per-VM memory limit (a deployment sets its own: ``Limits.max_memory``)."""
DEFAULT_MEMORY = 4 << 20
MAX_INPUT = 1 << 20
"""The most bytes a definition's ``input`` (what the console offers to ``in``) may hold."""
DEFAULT_CONSOLE_QUOTA = 1 << 20
"""The default per-VM console quota in bytes (a deployment sets its own: ``Limits.console_quota``):
a VM whose console grows past it is stopped (status ``limit``, its console cut at the quota)."""
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
    "snapshot",
)
"""What "the same definition" means for an idempotent CreateVm (hypervisor.proto, CreateVm)."""


class InvalidDefinition(UsageError):
    """Raised when a VM definition is malformed or out of range: the message says what to fix,
    ``field`` names the request field at fault (the proto's name, e.g. ``memory_size``)."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class UnbootableKernel(InvalidDefinition):
    """Raised when a workload is to be built for a kernel flavour that cannot boot it."""

    def __init__(self, kernel: str, workload: str) -> None:
        self.kernel = kernel
        self.workload = workload
        super().__init__(
            f"kernel flavour {kernel} cannot boot workload {workload!r}: choose "
            f"{' or '.join(FLAVOURS)} (or leave it unspecified: {default_kernel(TechniqueName.PV)} "
            f"under {TechniqueName.PV}, {default_kernel(TechniqueName.NATIVE)} otherwise); "
            f"{NO_KERNEL} is for a raw image",
            "kernel",
        )


class LimitExceeded(RinglabError):
    """Raised when a deployment is out of a resource a VM definition needs (not raised for a
    request over the per-VM limits: that is an ``InvalidDefinition``)."""


DEFAULT_FLIGHT_SLICES = 256
"""Slices per VM the flight recorder keeps in the store by default (docs/tracing.md)."""


@dataclass(frozen=True)
class Limits:
    """A deployment's per-VM limits, which a teacher sets (the hypervisor's ``--max-memory`` and
    ``--console-quota``, ``RINGLAB_MAX_MEMORY`` and ``RINGLAB_CONSOLE_QUOTA``)."""

    max_memory: int = MAX_MEMORY
    """The most guest RAM a VM may ask for (bytes)."""
    console_quota: int = DEFAULT_CONSOLE_QUOTA
    """Console bytes a VM may write, and the most a definition may ask for (bytes)."""
    flight_slices: int = DEFAULT_FLIGHT_SLICES
    """Slices of each VM the flight recorder keeps in the store, with their exits
    (``RINGLAB_FLIGHT_SLICES``; 0: recording is off)."""

    def __post_init__(self) -> None:
        if self.max_memory < 4096 or self.max_memory % 4096:
            raise ValueError(f"the memory limit {self.max_memory} must be a positive multiple of 4096")
        if self.console_quota < 1:
            raise ValueError(f"the console quota {self.console_quota} must be at least 1 byte")
        if self.flight_slices < 0:
            raise ValueError(f"the flight recorder's slices {self.flight_slices} cannot be negative")


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
                "a digit (e.g. ROUNDS)",
                "defines",
            )
        if not DEFINE_MIN <= value <= DEFINE_MAX:
            raise InvalidDefinition(
                f"define {name}={value} does not fit in 32 bits: use {DEFINE_MIN} to {DEFINE_MAX}",
                "defines",
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
            raise InvalidDefinition(f"unknown kernel flavour {kernel}", "kernel")
        return kernel, image
    if not workload:
        raise InvalidDefinition(
            "say what the VM runs: name a guest-OS workload in 'workload' (one of "
            f"{', '.join(WORKLOADS)}) and the hypervisor builds the kernel+workload image, or send a "
            "raw image in 'image' (ringlab.image.Image.to_bytes())",
            "workload",
        )
    if workload not in WORKLOADS:
        raise InvalidDefinition(
            f"unknown workload {workload[:40]!r}: valid workloads are {', '.join(WORKLOADS)}",
            "workload",
        )
    if kernel is None:
        kernel = default_kernel(technique)
    elif kernel not in FLAVOURS:
        raise UnbootableKernel(kernel, workload)
    try:
        return kernel, build_image(workload, kernel, defines).to_bytes()
    except RinglabError as exc:  # a define the workload's source cannot take
        raise InvalidDefinition(
            f"workload {workload} does not build with these defines: {exc}", "defines"
        ) from None


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise InvalidDefinition(
            f"VM name {name[:70]!r} is not valid: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            "name",
        )


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
    console_quota: int = 0,
    created: float | None = None,
    limits: Limits | None = None,
) -> Defined:
    """Validate a VM's definition (0 and "" mean the defaults, as in the request; ``technique``
    None: none chosen; ``kernel`` None: unspecified, any other name not a flavour: unknown)
    against the deployment's ``limits`` (default: ``Limits()``)."""
    limits = limits or Limits()
    _check_name(name)
    if technique is None:
        raise InvalidDefinition(f"choose a technique: one of {', '.join(TECHNIQUES)}", "technique")
    if technique not in SERVICE_TECHNIQUES:
        raise InvalidDefinition(
            f"technique {technique!r} is not available in this hypervisor yet "
            f"(available: {', '.join(SERVICE_TECHNIQUES)})",
            "technique",
        )
    if nested_paging and technique != TechniqueName.HW:
        raise InvalidDefinition("nested_paging applies to technique hw only", "nested_paging")
    memory = memory_size or DEFAULT_MEMORY
    if memory > limits.max_memory:
        raise InvalidDefinition(
            f"memory_size {memory} is above this deployment's per-VM limit of {limits.max_memory} "
            f"bytes ({limits.max_memory >> 20} MiB, the hypervisor's --max-memory): ask for less",
            "memory_size",
        )
    if memory % 4096:
        raise InvalidDefinition(f"memory_size {memory} must be a multiple of 4096 (one page)", "memory_size")
    if cap > 100:
        raise InvalidDefinition(f"cap {cap} is a percent of one pCPU: 0 (none) to 100", "cap")
    if console_quota > limits.console_quota:
        raise InvalidDefinition(
            f"console_quota {console_quota} is above this deployment's per-VM console quota of "
            f"{limits.console_quota} bytes (the hypervisor's --console-quota): ask for less, or 0 "
            "for the deployment's",
            "console_quota",
        )
    if len(input) > MAX_INPUT:
        raise InvalidDefinition(
            f"input of {len(input)} bytes is above the most a VM's console offers, {MAX_INPUT} bytes",
            "input",
        )
    checked = _defines(defines or {})
    kernel, blob = _kernel_and_image(technique, kernel, workload, checked, image)
    try:
        parsed = Image.from_bytes(blob)
    except ImageError as exc:
        raise InvalidDefinition(f"image is not a Ringlab image: {exc}", "image") from None
    if parsed.base < 0 or parsed.end > memory:
        raise InvalidDefinition(
            f"the image spans {parsed.base:#x}-{parsed.end:#x} but memory_size is {memory:#x}",
            "image" if memory_size else "memory_size",
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
        "console_quota": console_quota or limits.console_quota,
        "created": time.time() if created is None else created,
    }
    return Defined(definition, blob, parsed)


def is_vm_ref(ref: str) -> bool:
    """Whether ``ref`` could name a VM: a VM name (``name``'s rule) or an id (digits)."""
    return bool(_NAME.match(ref))


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


def define_restored(
    *,
    name: str,
    snapshot: bytes,
    weight: int = 0,
    cap: int = 0,
    console_quota: int = 0,
    limits: Limits | None = None,
) -> tuple[dict[str, Any], Snapshot]:
    """The definition of a VM restored from ``snapshot`` (a snapshot file: ``RestoreVm``), checked
    whole against the deployment's ``limits`` before anything is created, and the snapshot.  The
    machine (technique, memory, input) is the snapshot's; weight, cap and console quota are the
    request's, else the snapshotted VM's (0: as for CreateVm).  ``snapshot`` in the definition
    records where the VM starts (its instruction count) and the file's SHA-256."""
    limits = limits or Limits()
    _check_name(name)
    if not snapshot:
        raise InvalidDefinition(
            "send the snapshot file in 'snapshot' ('ringlab vm snapshot' writes one)", "snapshot"
        )
    try:
        snap = parse_snapshot(snapshot, max_memory=limits.max_memory, name="the snapshot")
        Image.from_bytes(snap.image)
    except (SnapshotError, ImageError) as exc:
        raise InvalidDefinition(str(exc), "snapshot") from None
    machine = snap.definition
    carried = machine.get("vm")
    known: dict[str, Any] = carried if isinstance(carried, dict) else {}
    technique = str(machine.get("technique"))
    if technique not in SERVICE_TECHNIQUES:
        raise InvalidDefinition(
            f"the snapshot's technique {technique!r} is not one this hypervisor runs", "snapshot"
        )
    if cap > 100:
        raise InvalidDefinition(f"cap {cap} is a percent of one pCPU: 0 (none) to 100", "cap")
    quota = console_quota or int(known.get("console_quota") or 0) or limits.console_quota
    if quota > limits.console_quota:
        raise InvalidDefinition(
            f"console_quota {quota} is above this deployment's per-VM console quota of "
            f"{limits.console_quota} bytes: ask for less",
            "console_quota",
        )
    definition = {
        "name": name,
        "technique": technique,
        "nested_paging": bool(machine.get("nested_paging")),
        "kernel": str(known.get("kernel") or NO_KERNEL),
        "workload": str(known.get("workload") or ""),
        "defines": dict(known.get("defines") or {}),
        "image_sha256": hashlib.sha256(snap.image).hexdigest(),
        "memory_size": int(machine["memory_size"]),
        "weight": weight or int(known.get("weight") or 0) or DEFAULT_WEIGHT,
        "cap": cap or int(known.get("cap") or 0),
        "max_instructions": known.get("max_instructions"),
        "input": base64.b64decode(str(machine.get("input", ""))).decode("latin-1"),
        "console_quota": quota,
        "created": time.time(),
        "snapshot": {"retired": snap.retired, "sha256": hashlib.sha256(snapshot).hexdigest()},
    }
    return definition, snap
