"""ringlab.guestos.build: names, flavours, caching, the embedding scheme, and the pv-ops rule.

The kernel sources are src/ringlab/guestos/kernel/*.s; the pv-ops layer is kernel/pvops.s.
"""

from __future__ import annotations

import re

import pytest

from ringlab.errors import UsageError
from ringlab.guestos.build import (
    USER_BASE,
    WORKLOADS,
    build_image,
    build_programs,
    source_dir,
)
from ringlab.image import Image
from ringlab.isa import TABLE, Class

NAMES = (
    "hello",
    "compute",
    "syscall",
    "io",
    "callret",
    "pagefault",
    "ptemod",
    "divzero",
    "spawnwait",
    "multi",
)


def test_every_required_workload_exists() -> None:
    assert set(NAMES) <= set(WORKLOADS)
    for name, workload in WORKLOADS.items():
        assert workload.name == name and workload.description
        for program in workload.programs:
            assert (source_dir() / "workloads" / program).is_file()


def test_unknown_workload_lists_the_valid_ones() -> None:
    with pytest.raises(UsageError, match="unknown workload 'nope'; valid workloads: hello, compute"):
        build_image("nope")


def test_unknown_flavour_lists_the_valid_ones() -> None:
    with pytest.raises(UsageError, match="valid flavours: stock, paravirt"):
        build_image("hello", "turbo")


def test_paravirt_flavour_is_a_different_kernel_binary_from_the_same_source() -> None:
    """-D PARAVIRT swaps pvops.s's macros for hypercalls: same workload, another kernel image."""
    stock = build_image("hello", "stock")
    paravirt = build_image("hello", "paravirt")
    assert paravirt.data != stock.data
    assert "pv_shared" in paravirt.symbols  # the page the pv ABI shares (docs/pv-abi.md)


def test_builds_are_cached_by_workload_flavour_and_defines() -> None:
    defines = {"ITERATIONS": 4321}  # a key no other test builds
    first = build_image("spawnwait", "stock", defines)
    assert build_image("spawnwait", "stock", dict(defines)) is first
    assert build_image("spawnwait", "stock", {"ITERATIONS": 4322}) is not first


def test_programs_are_embedded_in_the_kernel_image() -> None:
    """The image holds each program's bytes, and the program table points at them."""
    image = build_image("divzero")
    [child] = build_programs([(source_dir() / "workloads" / "divzero_child.s").read_text()])
    assert _dword(image, image.symbols["program_count"]) == 2
    entry = image.symbols["program_table"] + 16  # program 1: load address, size, entry, bytes
    vaddr, size, start, data = (_dword(image, entry + 4 * k) for k in range(4))
    assert (vaddr, start) == (USER_BASE, child.entry)
    assert size == (len(child.data) + 3) & ~3
    assert _read(image, data, len(child.data)) == child.data
    assert image.symbols["kernel_end"] % 4096 == 0


def _read(image: Image, address: int, length: int) -> bytes:
    return image.data[address - image.base : address - image.base + length]


def _dword(image: Image, address: int) -> int:
    return int.from_bytes(_read(image, address, 4), "little")


SENSITIVE = {
    spec.mnemonic for spec in TABLE if spec.cls in (Class.PRIVILEGED, Class.IOPL, Class.SENSITIVE)
} | {"iret"}


def test_only_pvops_names_sensitive_instructions() -> None:
    """Every sensitive or privileged instruction of the kernel is a PV_* macro of pvops.s, so
    the paravirt flavour can replace them all in one file."""
    offenders = []
    for path in sorted((source_dir() / "kernel").glob("*.s")):
        if path.name == "pvops.s":
            continue
        for number, raw in enumerate(path.read_text().splitlines(), 1):
            code = re.sub(r'"[^"]*"|\'[^\']*\'', '""', raw).split(";")[0]
            code = re.sub(r"^\s*[A-Za-z_.][\w.]*:", "", code).strip()
            if not code:
                continue
            words = code.replace(",", " ").split()
            mnemonic = words[0].lower()
            operands = {w.lower() for w in words[1:]}
            if mnemonic in SENSITIVE - {"mov"} or (
                mnemonic == "mov" and operands & {"cr0", "cr2", "cr3", "cr8", "cs"}
            ):
                offenders.append(f"{path.name}:{number}: {raw.strip()}")
    assert offenders == []


def test_stock_kernel_saves_and_restores_if_with_pushf_popf() -> None:
    """local_irq_save/restore are pushf/popf in the stock flavour (what later makes
    trap-and-emulate misbehave), and real code paths use them."""
    pvops = (source_dir() / "kernel" / "pvops.s").read_text()
    assert re.search(r"\.macro PV_IRQ_SAVE reg\s+pushf\s+pop \\reg\s+cli", pvops)
    assert re.search(r"\.macro PV_IRQ_RESTORE reg\s+push \\reg\s+popf", pvops)
    kernel = {p.name: p.read_text() for p in (source_dir() / "kernel").glob("*.s")}
    assert "PV_IRQ_RESTORE" in kernel["console.s"] and "PV_IRQ_RESTORE" in kernel["sched.s"]
