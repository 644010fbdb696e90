"""Snapshots: a whole VM in one file, to continue later, elsewhere, on another machine.

A snapshot holds what the VM's definition cannot rebuild: the vCPU's registers, timer and virtual
time; the host memory (the guest's RAM, and the shadow page tables' pool above it); the TLB, the
virtual CPU the VMM keeps for the guest, the technique's own state (pv's registered trap table and
page-table pages, hw's VMCS, what bt traces), pending events, the console so far and the input
read, and every statistic.  It does not hold what is derived and rebuilt on the way: the core's
compiled blocks and decoded instructions, the fast translation caches, and the translations in
bt's translation cache (its counters and what it adapted are kept; the blocks are translated again
as they run, so under bt a restored run counts the translations a slice boundary adds through the
services: ``translations``, ``translated_instructions`` and the cycles that price them).

How it works: restoring first builds a fresh VM from the snapshot's definition and image exactly as
``run_vm`` would, which makes every structure and every link between them (and every host cache,
empty); then it lays the saved values over that VM, attribute by attribute, at the same places.
Saving walks the VM's objects the same way (``_walk``) and keeps each attribute that is plain data
(numbers, strings, bytes and containers of them, frozen records rebuilt from their fields); what is
a link to another of the VM's objects is walked, not kept.  Containers are filled in place, so two
names for one dict (the MMU's view of the TLB's map) stay one dict.

The file (``FORMAT``, version ``VERSION``)::

    b"RLSNAP\\r\\n"                magic (8 bytes)
    version                        4 bytes, big-endian (1)
    sha256 of the rest             32 bytes
    zlib(JSON document)            the rest

The JSON document: ``{"version", "ringlab", "definition": {technique, nested_paging, memory_size,
input (base64)}, "image" (base64 of the image file), "retired", "pages": {page number: base64 of
its 4 KiB, non-zero pages only}, "host_memory_size", "state": {path: {attribute: value}}}``, values
in a tagged JSON (``_encode``).  Reading checks, before building anything, the magic, the version,
the checksum, the size of the decompressed document (``max_bytes``) and the memory size against
``max_memory``, and raises ``SnapshotError`` naming what is wrong.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import enum
import hashlib
import importlib
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ringlab import __version__
from ringlab.errors import RinglabError
from ringlab.image import Image
from ringlab.machine.memory import PAGE_SIZE
from ringlab.vmm.vm import VM, CoreRunner

__all__ = [
    "FORMAT",
    "MAGIC",
    "MAX_MEMORY",
    "VERSION",
    "Snapshot",
    "SnapshotError",
    "encode_snapshot",
    "parse_snapshot",
    "read_snapshot",
    "restore",
    "snapshot",
    "write_snapshot",
    "write_snapshot_file",
]

MAGIC = b"RLSNAP\r\n"
VERSION = 1
FORMAT = "ringlab-snapshot"
MAX_MEMORY = 1 << 30
"""The largest guest RAM a snapshot may ask for by default (``ringlab run --memory``'s limit)."""
_MAX_DOCUMENT = 64 << 20
"""Slack for the JSON document beyond the memory it carries (registers, statistics, tables)."""


_TYPES_FROM = ("ringlab.machine.", "ringlab.vmm.", "ringlab.isa")
"""The only modules a snapshot may name types from (a VM's objects live there)."""


class SnapshotError(RinglabError):
    """A snapshot file that cannot be loaded: the message says why."""


# -- what is kept, what is walked, what is rebuilt --------------------------------------------------
_REBUILT: dict[str, frozenset[str]] = {
    "VM": frozenset({"image", "runner", "recorder", "technique_name"}),
    "Cpu": frozenset({"_decoded", "compiled_blocks"}),
    "Mmu": frozenset({"read_cache", "write_cache", "log", "walk_check"}),
    "Memory": frozenset({"data", "code_pages", "on_code_write", "on_clear_dirty"}),
    "TranslationCache": frozenset(
        {"cpu", "_data", "_protect", "fresh", "forgotten", "_blocks", "_by_frame", "newly_adapted", "current"}
    ),
}
"""Per class, attributes that the fresh VM's construction makes and that are not saved: links to
what is given separately (the image), host caches, and callbacks.  Memory's bytes are saved as
pages, apart."""


def _is_node(value: object) -> bool:
    """One of the VM's own objects, walked rather than kept."""
    cls = type(value)
    return (
        cls.__module__.startswith("ringlab.")
        and not isinstance(value, enum.Enum)
        and not (dataclasses.is_dataclass(value) and cls.__dataclass_params__.frozen)  # type: ignore[attr-defined]
    )


def _attributes(obj: object) -> Iterator[tuple[str, Any]]:
    d = getattr(obj, "__dict__", None)
    if d is not None:
        yield from list(d.items())
    for cls in type(obj).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if hasattr(obj, name) and name != "__dict__":
                yield name, getattr(obj, name)


def _walk(vm: VM) -> Iterator[tuple[str, object]]:
    """Every object of ``vm`` by its path (the first place it is reached from), in a fixed order."""
    seen: set[int] = set()
    todo: list[tuple[str, object]] = [("vm", vm)]
    while todo:
        path, obj = todo.pop(0)
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        yield path, obj
        skip = _REBUILT.get(type(obj).__name__, frozenset())
        for name, value in _attributes(obj):
            if name not in skip and _is_node(value):
                todo.append((f"{path}.{name}", value))


# -- plain data in JSON ----------------------------------------------------------------------------
class _NotData(Exception):
    pass


def _encode(value: Any) -> Any:
    """``value`` as tagged JSON; raises ``_NotData`` for anything but plain data."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int) and not isinstance(value, enum.Enum):
        return value
    if isinstance(value, float):
        return {"$f": repr(value)}
    if isinstance(value, enum.Enum):
        cls = type(value)
        if not cls.__module__.startswith("ringlab."):
            raise _NotData(value)
        return {"$e": f"{cls.__module__}:{cls.__qualname__}", "name": value.name}
    if isinstance(value, (bytes, bytearray)):
        tag = "$b" if isinstance(value, bytes) else "$ba"
        return {tag: base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, collections.Counter):
        return {"$c": [[_encode(k), _encode(v)] for k, v in value.items()]}
    if isinstance(value, collections.deque):
        return {"$q": [_encode(v) for v in value], "max": value.maxlen}
    if isinstance(value, dict):
        return {"$d": [[_encode(k), _encode(v)] for k, v in value.items()]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, tuple):
        return {"$t": [_encode(v) for v in value]}
    if isinstance(value, frozenset):
        return {"$fs": sorted((_encode(v) for v in value), key=json.dumps)}
    if isinstance(value, set):
        return {"$s": sorted((_encode(v) for v in value), key=json.dumps)}
    if (
        dataclasses.is_dataclass(value)
        and not isinstance(value, type)
        and type(value).__module__.startswith("ringlab.")
    ):
        record = type(value)
        fields = {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"$r": f"{record.__module__}:{record.__qualname__}", "fields": fields}
    raise _NotData(value)


def _class(name: str) -> type:
    module, _, qualname = name.partition(":")
    if not module.startswith(_TYPES_FROM) or not qualname:
        raise SnapshotError(f"the snapshot names {name!r}, which is not one of Ringlab's types")
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        raise SnapshotError(f"the snapshot names {name!r}, which this Ringlab does not have") from None
    if not isinstance(obj, type):
        raise SnapshotError(f"the snapshot names {name!r}, which is not a type")
    return obj


def _decode(doc: Any) -> Any:
    if doc is None or isinstance(doc, (bool, int, str)):
        return doc
    if isinstance(doc, list):
        return [_decode(v) for v in doc]
    if not isinstance(doc, dict) or len(doc) not in (1, 2):
        raise SnapshotError("the snapshot's state holds a value of no known kind")
    (tag, body), *rest = doc.items()
    if tag == "$f":
        return float(body)
    if tag == "$b":
        return base64.b64decode(body)
    if tag == "$ba":
        return bytearray(base64.b64decode(body))
    if tag == "$c":
        return collections.Counter({_decode(k): _decode(v) for k, v in body})
    if tag == "$q":
        return collections.deque((_decode(v) for v in body), maxlen=doc.get("max"))
    if tag == "$d":
        return {_hashable(_decode(k)): _decode(v) for k, v in body}
    if tag == "$t":
        return tuple(_decode(v) for v in body)
    if tag == "$fs":
        return frozenset(_hashable(_decode(v)) for v in body)
    if tag == "$s":
        return {_hashable(_decode(v)) for v in body}
    if tag == "$e":
        cls = _class(body)
        if not issubclass(cls, enum.Enum):
            raise SnapshotError(f"the snapshot names {body!r} as an enumeration, which it is not")
        return cls[rest[0][1]]
    if tag == "$r":
        cls = _class(body)
        if not dataclasses.is_dataclass(cls):
            raise SnapshotError(f"the snapshot names {body!r} as a record, which it is not")
        return cls(**{k: _decode(v) for k, v in rest[0][1].items()})
    raise SnapshotError(
        f"the snapshot's state holds a value tagged {tag!r}, which this Ringlab does not know"
    )


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


# -- taking and laying over -----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A VM's snapshot in memory (``snapshot``; ``write_snapshot`` puts it in a file)."""

    definition: dict[str, Any]
    image: bytes
    retired: int
    host_memory_size: int
    pages: dict[int, bytes]
    state: dict[str, dict[str, Any]]
    """Path -> attribute -> tagged JSON value."""


def snapshot(vm: VM) -> Snapshot:
    """The snapshot of ``vm`` now (between two ``advance`` calls)."""
    technique = vm.technique
    definition = {
        "technique": technique.name,
        "nested_paging": bool(getattr(technique, "nested_paging", False)),
        "memory_size": vm.memory_size,
        "input": base64.b64encode(vm.devices.input).decode("ascii"),
        "fast": vm.cpu.compiled_blocks is not None,
    }
    state: dict[str, dict[str, Any]] = {}
    for path, obj in _walk(vm):
        skip = _REBUILT.get(type(obj).__name__, frozenset())
        saved: dict[str, Any] = {}
        for name, value in _attributes(obj):
            if name in skip or _is_node(value) or (callable(value) and not isinstance(value, type)):
                continue
            try:
                saved[name] = _encode(value)
            except _NotData:
                raise AssertionError(
                    f"{path}.{name} holds {type(value).__name__}, which a snapshot cannot keep: "
                    "name it in snapshot._REBUILT if the VM's construction makes it"
                ) from None
        state[path] = saved
    memory = vm.cpu.memory
    pages = {}
    for p in range(memory.size // PAGE_SIZE):
        page = bytes(memory.data[p * PAGE_SIZE : (p + 1) * PAGE_SIZE])
        if page.count(0) != PAGE_SIZE:
            pages[p] = page
    return Snapshot(definition, vm.image.to_bytes(), vm.cpu.stats.retired, memory.size, pages, state)


def restore(snap: Snapshot, runner: CoreRunner | None = None, *, fast: bool | None = None) -> VM:
    """A VM that goes on exactly where ``snap`` was taken; ``runner`` runs its core (default: in
    this process; the hypervisor's copy of a VM restored through the services is its own), and
    ``fast`` chooses compiled blocks or the interpreter (default: as the snapshotted run did)."""
    from ringlab.vmm import make_technique

    d = snap.definition
    try:
        image = Image.from_bytes(snap.image)
    except RinglabError as exc:
        raise SnapshotError(f"the snapshot's image cannot be loaded: {exc}") from None
    vm = VM(
        image,
        make_technique(str(d["technique"]), nested_paging=bool(d.get("nested_paging"))),
        memory_size=int(d["memory_size"]),
        input=base64.b64decode(d.get("input", "")),
        fast=bool(d.get("fast", True)) if fast is None else fast,
        **({} if runner is None else {"runner": runner}),
    )
    memory = vm.cpu.memory
    if memory.size != snap.host_memory_size:
        raise SnapshotError(
            f"the snapshot's host memory is {snap.host_memory_size} bytes but its definition makes "
            f"{memory.size}: it was written by an incompatible Ringlab"
        )
    objects = dict(_walk(vm))
    missing = set(snap.state) - set(objects)
    if missing:
        raise SnapshotError(f"the snapshot holds state for {sorted(missing)[0]}, which this VM does not have")
    for path, saved in snap.state.items():
        obj = objects[path]
        for name, encoded in saved.items():
            value = _decode(encoded)
            _check_kind(path, name, getattr(obj, name, None), value)
            _lay_over(obj, name, value)
    memory.data[:] = bytes(memory.size)
    for p, page in snap.pages.items():
        memory.data[p * PAGE_SIZE : (p + 1) * PAGE_SIZE] = page
    mmu = vm.cpu.mmu
    for cache in (*mmu.read_cache, *mmu.write_cache):
        cache.clear()
    vm.cpu.controls = vm.cpu.controls  # recompute what the core derives from its controls
    return vm


_NUMBERS = (int, float)


def _check_kind(path: str, name: str, current: object, value: object) -> None:
    """A saved value must be of the kind the fresh VM holds there (a number for a number, a dict
    for a dict, ...): a file whose checksum is right but whose state was written by hand or by
    another program cannot put a string where the CPU keeps a register."""
    if current is None or value is None or type(current) is type(value):
        return
    if isinstance(current, _NUMBERS) and isinstance(value, _NUMBERS) and not isinstance(value, bool):
        return
    raise SnapshotError(
        f"the snapshot's {path}.{name} is a {type(value).__name__} where this Ringlab keeps a "
        f"{type(current).__name__}: it was not written by a compatible Ringlab"
    )


def _lay_over(obj: object, name: str, value: Any) -> None:
    """Set ``obj.name`` to ``value``, filling a container of the same kind in place."""
    current: Any = getattr(obj, name, None)
    if type(current) is type(value) and current == value:
        return  # (keeps the identity of what the construction shares, a technique's constants)
    if type(current) is type(value) and isinstance(current, (dict, list, set, bytearray, collections.deque)):
        if isinstance(current, (dict, set)):
            current.clear()
            current.update(value)
        elif isinstance(current, collections.deque) and current.maxlen == value.maxlen:
            current.clear()
            current.extend(value)
        elif isinstance(current, (list, bytearray)):
            current[:] = value
        else:
            object.__setattr__(obj, name, value)
        return
    object.__setattr__(obj, name, value)


# -- the file ---------------------------------------------------------------------------------------
def _document(snap: Snapshot) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "ringlab": __version__,
        "definition": snap.definition,
        "image": base64.b64encode(snap.image).decode("ascii"),
        "retired": snap.retired,
        "host_memory_size": snap.host_memory_size,
        "pages": {str(p): base64.b64encode(page).decode("ascii") for p, page in sorted(snap.pages.items())},
        "state": snap.state,
    }


def encode_snapshot(snap: Snapshot) -> bytes:
    """``snap`` as the bytes of its file (what ``parse_snapshot`` reads back)."""
    body = zlib.compress(json.dumps(_document(snap), separators=(",", ":")).encode(), 6)
    return MAGIC + VERSION.to_bytes(4, "big") + hashlib.sha256(body).digest() + body


def write_snapshot(snap: Snapshot, path: str | Path) -> int:
    """Write ``snap`` to ``path`` (atomically: a temporary file renamed); returns its size."""
    return write_snapshot_file(encode_snapshot(snap), path)


def write_snapshot_file(blob: bytes, path: str | Path) -> int:
    """Write a snapshot file's bytes (``encode_snapshot``'s, or a deployment's ``SnapshotVm``
    reply) to ``path``, atomically: a temporary file renamed; returns its size."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(blob)
    tmp.replace(target)
    return len(blob)


def read_snapshot(path: str | Path, *, max_memory: int = MAX_MEMORY) -> Snapshot:
    """Load a snapshot file, checking it whole before anything is built from it."""
    try:
        blob = Path(path).read_bytes()
    except OSError as exc:
        raise SnapshotError(f"{path}: {exc.strerror or exc}") from None
    return parse_snapshot(blob, max_memory=max_memory, name=str(path))


def parse_snapshot(blob: bytes, *, max_memory: int = MAX_MEMORY, name: str = "the snapshot") -> Snapshot:
    head = len(MAGIC) + 4 + 32
    if len(blob) < head or not blob.startswith(MAGIC):
        raise SnapshotError(f"{name}: not a Ringlab snapshot (it does not start with {MAGIC!r}) or truncated")
    version = int.from_bytes(blob[len(MAGIC) : len(MAGIC) + 4], "big")
    if version != VERSION:
        raise SnapshotError(
            f"{name}: snapshot format version {version}; this Ringlab reads version {VERSION}"
        )
    digest, body = blob[len(MAGIC) + 4 : head], blob[head:]
    if hashlib.sha256(body).digest() != digest:
        raise SnapshotError(f"{name}: the checksum does not match: the file is truncated or damaged")
    limit = max_memory * 2 + _MAX_DOCUMENT  # base64 of every page, and the rest
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(body, limit)
    except zlib.error as exc:
        raise SnapshotError(f"{name}: the document cannot be decompressed ({exc})") from None
    if inflater.unconsumed_tail:
        raise SnapshotError(
            f"{name}: the document is larger than a VM of at most {max_memory} bytes can need"
        )
    try:
        doc = json.loads(raw)
        if doc.get("format") != FORMAT:
            raise SnapshotError(f"{name}: not a Ringlab snapshot document")
        memory_size = int(doc["definition"]["memory_size"])
        if not 0 < memory_size <= max_memory:
            raise SnapshotError(
                f"{name}: the VM's memory is {memory_size} bytes, more than the {max_memory} allowed"
            )
        host = int(doc["host_memory_size"])
        pages = {int(p): base64.b64decode(page, validate=True) for p, page in doc["pages"].items()}
        if any(len(page) != PAGE_SIZE or not 0 <= p < host // PAGE_SIZE for p, page in pages.items()):
            raise SnapshotError(f"{name}: a memory page is outside the VM's memory or not 4 KiB")
        return Snapshot(
            definition=dict(doc["definition"]),
            image=base64.b64decode(doc["image"], validate=True),
            retired=int(doc["retired"]),
            host_memory_size=host,
            pages=pages,
            state={str(k): dict(v) for k, v in doc["state"].items()},
        )
    except SnapshotError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SnapshotError(f"{name}: the document is malformed ({type(exc).__name__}: {exc})") from None
