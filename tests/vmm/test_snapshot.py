"""Snapshots (issue 16, part 1): a VM snapshotted mid-run and restored from the file goes on to the
same console, exit, registers and guest statistics as the same VM never snapshotted, under every
technique; a bad file is refused with a message that says what is wrong."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import zlib
from pathlib import Path
from typing import Any

import pytest

from ringlab.guestos.build import build_image
from ringlab.image import Image
from ringlab.vmm import VM, make_technique, run_from
from ringlab.vmm.snapshot import (
    MAGIC,
    VERSION,
    SnapshotError,
    parse_snapshot,
    read_snapshot,
    restore,
    snapshot,
    write_snapshot,
)
from tests.vmm.fuzz_equivalence import GENERATORS

RUNS = [
    ("trap-emulate", "stock"),
    ("bt", "stock"),
    ("hw", "stock"),
    ("hw+np", "stock"),
    ("pv", "paravirt"),
    ("native", "stock"),
]
SLICE_DEPENDENT = ("translations", "translated_instructions", "cycles")
"""Under bt the restored VM translates its blocks again, as after a slice boundary through the
services: these counts (and the cycles that price them) are the ones a boundary may change."""


def new(image: Image, technique: str, **kw: Any) -> VM:
    name, _, np = technique.partition("+")
    return VM(image, make_technique(name, nested_paging=bool(np)), **kw)


def comparable(doc: dict[str, Any], technique: str) -> dict[str, Any]:
    out = {k: v for k, v in doc.items() if k != "stats"}
    guest = doc["stats"]["guest"]
    out["guest"] = {k: v for k, v in guest.items() if technique != "bt" or k not in SLICE_DEPENDENT}
    return out


def through_a_file(vm: VM, tmp_path: Path) -> VM:
    path = tmp_path / "vm.snap"
    write_snapshot(snapshot(vm), path)
    return restore(read_snapshot(path))


def restored_at(vm: VM, at: int, limit: int | None, tmp_path: Path) -> VM | None:
    """Run ``vm`` to ``at`` retired instructions, snapshot it to a file and restore it from there
    (None when the guest ended before ``at``)."""
    restored: list[VM] = []
    run_from(vm, limit, (at, lambda v: restored.append(through_a_file(v, tmp_path))))
    return restored[0] if restored else None


@pytest.mark.parametrize(("technique", "kernel"), RUNS)
@pytest.mark.parametrize("workload", ["syscall", "ptemod", "spawnwait"])
def test_a_restored_vm_ends_as_the_vm_never_snapshotted(
    technique: str, kernel: str, workload: str, tmp_path: Path
) -> None:
    image = build_image(workload, kernel)
    plain = new(image, technique).run().to_json()
    rng = random.Random(f"{technique}:{workload}")
    for at in sorted(rng.sample(range(1, plain["stats"]["guest"]["retired"]), 2)):
        vm = new(image, technique)
        got = run_from(vm, None, (at, lambda v: None))  # the same boundary, no snapshot
        assert got.to_json()["console"] == plain["console"]
        again = restored_at(new(image, technique), at, at, tmp_path)
        assert again is not None and again.cpu.stats.retired == at
        result = again.run().to_json()
        assert comparable(result, technique) == comparable(got.to_json(), technique), f"at {at}"
        for key in ("console", "exit", "registers"):
            assert result[key] == plain[key], (key, at)
        for key in ("retired", "retired_by_ring", "virtual_time", "exits", "exceptions"):
            assert result["stats"]["guest"].get(key) == plain["stats"]["guest"].get(key), (key, at)


def _random_programs(generator: str, indexes: range, tmp_path: Path) -> None:
    for index in indexes:
        program = GENERATORS[generator](index)
        rng = random.Random(f"snapshot:{generator}:{index}")
        for technique in ("trap-emulate", "bt", "hw", "hw+np"):
            image = program.image
            reference = new(image, technique, memory_size=program.memory)
            at = rng.randrange(1, program.limit)
            want = run_from(reference, program.limit, (at, lambda v: None)).to_json()
            again = restored_at(
                new(image, technique, memory_size=program.memory), at, program.limit, tmp_path
            )
            if again is None:  # it ended before ``at``
                continue
            got = run_from(again, program.limit).to_json()
            assert comparable(got, technique) == comparable(want, technique), (program.name, technique, at)


@pytest.mark.parametrize("generator", ["isa", "kernel", "bytes"])
def test_random_programs_restore_exactly_under_every_technique(generator: str, tmp_path: Path) -> None:
    """Programs of the equivalence fuzzer (faults, page-table edits, self-modifying code, deep
    interrupt nesting), each snapshotted at a seeded point under every technique."""
    _random_programs(generator, range(4), tmp_path)


@pytest.mark.fuzz
@pytest.mark.parametrize("generator", ["isa", "kernel", "bytes"])
def test_random_programs_restore_exactly_under_every_technique_fuzz(generator: str, tmp_path: Path) -> None:
    """The same for the next 60 programs of each generator (``-m fuzz``)."""
    _random_programs(generator, range(4, 64), tmp_path)


# -- the file ---------------------------------------------------------------------------------------
def _blob(tmp_path: Path) -> bytes:
    vm = new(build_image("hello", "stock"), "hw")
    vm.advance(2000)
    path = tmp_path / "hello.snap"
    write_snapshot(snapshot(vm), path)
    return path.read_bytes()


def _rewrite(blob: bytes, change: Any) -> bytes:
    """The same file with its document changed by ``change(doc)`` and a correct checksum."""
    head = len(MAGIC) + 4 + 32
    doc = json.loads(zlib.decompress(blob[head:]))
    change(doc)
    body = zlib.compress(json.dumps(doc).encode())
    return blob[: len(MAGIC) + 4] + hashlib.sha256(body).digest() + body


def test_the_file_round_trips_and_starts_with_its_magic_and_version(tmp_path: Path) -> None:
    blob = _blob(tmp_path)
    assert blob.startswith(MAGIC) and int.from_bytes(blob[8:12], "big") == VERSION
    snap = parse_snapshot(blob)
    assert snap.retired == 2000 and snap.definition["technique"] == "hw"
    assert restore(snap).cpu.stats.retired == 2000


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[: len(b) // 2], "checksum does not match"),
        (lambda b: b[:20], "not a Ringlab snapshot"),
        (lambda b: b"RL32" + b[4:], "not a Ringlab snapshot"),
        (lambda b: b[:8] + (VERSION + 1).to_bytes(4, "big") + b[12:], f"version {VERSION + 1}"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "checksum does not match"),
    ],
    ids=["truncated", "too short", "wrong magic", "wrong version", "one bit flipped"],
)
def test_a_damaged_file_is_refused_saying_why(damage: Any, message: str, tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match=message):
        parse_snapshot(damage(_blob(tmp_path)))


def test_memory_larger_than_allowed_is_refused_before_anything_is_built(tmp_path: Path) -> None:
    blob = _blob(tmp_path)
    with pytest.raises(SnapshotError, match="more than the 1048576 allowed"):
        parse_snapshot(blob, max_memory=1 << 20)

    def huge(doc: dict[str, Any]) -> None:
        doc["definition"]["memory_size"] = 1 << 40

    with pytest.raises(SnapshotError, match="more than"):
        parse_snapshot(_rewrite(blob, huge))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["state"]["vm"].update(x={"$e": "os:system", "name": "x"}), "not one of Ringlab's types"),
        (lambda d: d["state"]["vm"].update(x={"$zz": 1}), "tagged '\\$zz'"),
        (lambda d: d["state"].update({"vm.nothing": {}}), "vm.nothing"),
        (lambda d: d["pages"].update({"999999999": base64.b64encode(bytes(4096)).decode()}), "outside"),
        (lambda d: d.pop("definition"), "malformed"),
        (lambda d: d["state"]["vm.cpu._state"].update(eip="0x1000"), "vm.cpu._state.eip is a str where"),
        (lambda d: d["state"]["vm.cpu.stats"].update(retired=[1]), "vm.cpu.stats.retired is a list where"),
    ],
    ids=[
        "foreign type",
        "unknown tag",
        "unknown object",
        "page outside memory",
        "no definition",
        "a string for a register",
        "a list for a count",
    ],
)
def test_a_forged_document_is_refused_saying_why(change: Any, message: str, tmp_path: Path) -> None:
    blob = _rewrite(_blob(tmp_path), change)
    with pytest.raises(SnapshotError, match=message):
        restore(parse_snapshot(blob))
