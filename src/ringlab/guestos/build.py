"""Build a bootable guest image: the kernel (one flavour) with a workload's user programs embedded.

    image = build_image("hello")                          # stock kernel + the hello workload
    image = build_image("compute", defines={"ROUNDS": 4})
    WORKLOADS["divzero"].expected_output()                # what its console must show

Embedding scheme (docs/guest-os.md, "Building"):

1. Each of the workload's programs (``workloads/<file>.s``; program 0 is init) is assembled on
   its own with the same ``defines``.  ``lib.s`` links it at ``USER_BASE`` (0x00400000).
2. The kernel source ``kernel/kernel.s`` is assembled with, appended, a generated tail: the
   program table (``program_count``, then per program: load address, size padded to a multiple
   of 4, entry point, address of its bytes), the programs' bytes as ``.dword`` lines, and the
   page-aligned ``kernel_end`` label where the kernel's free frames begin.
3. ``spawn(n)`` in the kernel copies program n's bytes into fresh frames of the new process.

Images are cached by (workload, flavour, defines): a repeated build costs nothing.  The
``.s`` sources are read through ``importlib.resources`` so a wheel install works too.
"""

from __future__ import annotations

import enum
import functools
import importlib.resources
import re
import struct
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ringlab.asm import assemble
from ringlab.errors import UsageError
from ringlab.guestos.reference import fnv1a_reference
from ringlab.image import Image

__all__ = [
    "FLAVOURS",
    "NO_KERNEL",
    "USER_BASE",
    "USER_HEAP",
    "WORKLOADS",
    "KernelFlavour",
    "Workload",
    "build_custom_image",
    "build_image",
    "build_programs",
    "generate_program_table",
    "kernel_source",
    "source_dir",
]

USER_BASE = 0x00400000
"""Where every user program is linked and loaded (kernel/abi.s)."""
USER_HEAP = 0x00500000
"""Programs end below the demand-zero heap, so one may be at most 1 MiB."""


class KernelFlavour(enum.StrEnum):
    """The guest OS kernel's flavours: ``stock`` (native instructions) and ``paravirt`` (hypercalls,
    for pv); ``rpc.convert`` maps them to the proto."""

    STOCK = "stock"
    PARAVIRT = "paravirt"


FLAVOURS: tuple[str, ...] = tuple(f.value for f in KernelFlavour)
"""Every kernel flavour's name."""
NO_KERNEL = "none"
"""The kernel of a VM that boots a raw image rather than the guest OS (not a flavour)."""

KILLED_STATUS = 128
"""Exit status of a process killed by exception vector v: KILLED_STATUS + v (kernel/abi.s)."""

Defines = Mapping[str, int]
Expected = bytes | re.Pattern[bytes]


# ---- sources ----


@functools.cache
def source_dir() -> Path:
    """The directory holding ``kernel/`` and ``workloads/``.

    Normally the installed package directory itself; when the package is not on a file system
    (a zip import), its ``.s`` files are copied once to a temporary directory, since the
    assembler resolves ``.include`` against real paths."""
    root = importlib.resources.files("ringlab.guestos")
    if isinstance(root, Path):
        return root
    target = Path(tempfile.mkdtemp(prefix="ringlab_guestos_"))
    for sub in ("kernel", "workloads"):
        (target / sub).mkdir()
        for entry in root.joinpath(sub).iterdir():
            if entry.name.endswith(".s"):
                (target / sub / entry.name).write_bytes(entry.read_bytes())
    return target


def kernel_source() -> tuple[str, Path]:
    """The top-level kernel source text and its path (``.include`` is relative to it)."""
    path = source_dir() / "kernel" / "kernel.s"
    return path.read_text(), path


# ---- workloads ----


@dataclass(frozen=True)
class Workload:
    """A named set of user programs (program 0 is init) and what the console must show."""

    name: str
    description: str
    programs: tuple[str, ...]
    """File names under ``workloads/``; their index is the number ``spawn`` takes."""
    defaults: Mapping[str, int]
    """The defines the programs fall back to (documentation; the ``.s`` files hold them too)."""
    _expected: Callable[[Mapping[str, int]], Expected]

    def expected_output(self, defines: Defines | None = None) -> Expected:
        """The exact console output for these defines (bytes), or, for ``multi``, whose
        interleaving depends on where the timer ticks fall, a regex the whole output must
        match (tests pin the exact interleaving separately)."""
        values = dict(self.defaults)
        values.update(defines or {})
        return self._expected(values)

    def check_output(self, console: bytes, defines: Defines | None = None) -> bool:
        expected = self.expected_output(defines)
        if isinstance(expected, bytes):
            return console == expected
        return expected.fullmatch(console) is not None


def _fnv1a_compute(rounds: int) -> bytes:
    # The benchmark's plain-Python reference is the one definition of the algorithm.

    return f"fnv1a={fnv1a_reference(rounds):08x}\n".encode()


def _compute(d: Mapping[str, int]) -> Expected:
    # compute.s: ROUNDS if defined, else ITERATIONS if defined, else 16
    return _fnv1a_compute(d.get("ROUNDS", d.get("ITERATIONS", 16)))


def _divzero(d: Mapping[str, int]) -> Expected:
    child = _program_image("divzero_child.s", _key(d))
    eip = child.symbols["fault_here"]
    status = KILLED_STATUS + 0
    return (
        f"pid 2: divide error at 0x{eip:08x}, killed\n"
        f"divzero: child 2 exited with status {status}\n"
        f"divzero: {d['ITERATIONS']} divide errors caught, each resumed after the div\n"
    ).encode()


def _multi(d: Mapping[str, int]) -> Expected:
    # Which worker prints first in each round depends on where the ticks fall, so the exact
    # interleaving is pinned by a test (deterministic for one image), not predicted here.
    workers, steps = d["WORKERS"], d["ITERATIONS"]
    line = rb"worker [0-9]+: step [0-9]+\n"
    done = f"multi: {workers} workers done\n".encode()
    return re.compile(b"(?:%s){%d}%s" % (line, workers * steps, re.escape(done)))


def _tlbmiss(d: Mapping[str, int]) -> Expected:
    pages, rounds = d["PAGES"], d["ITERATIONS"]
    total = rounds * pages * (pages - 1) // 2 % (1 << 32)
    return f"tlbmiss: {rounds} rounds over {pages} pages, sum {total}\n".encode()


def _bench(d: Mapping[str, int]) -> Expected:
    result = 0 if 0 <= d["OP"] < 5 else -22
    return f"bench: op {d['OP']}, {d['ITERATIONS']} iterations, result {result}\n".encode()


def _workload(
    name: str,
    description: str,
    programs: Sequence[str],
    defaults: Mapping[str, int],
    expected: Callable[[Mapping[str, int]], Expected],
) -> tuple[str, Workload]:
    return name, Workload(name, description, tuple(programs), dict(defaults), expected)


WORKLOADS: dict[str, Workload] = dict(
    [
        _workload(
            "hello",
            "prints a greeting from ring 3 with its pid",
            ["hello.s"],
            {},
            lambda d: b"Hello from ring 3! I am pid 1.\n",
        ),
        _workload(
            "compute",
            "integer-heavy: LCG-filled 4 KiB buffer, FNV-1a over it ROUNDS (or ITERATIONS, default 16) times",
            ["compute.s"],
            {},
            _compute,
        ),
        _workload(
            "syscall",
            "ITERATIONS getpid() system calls",
            ["syscall.s"],
            {"ITERATIONS": 1000},
            lambda d: f"syscall: {d['ITERATIONS']} getpid calls, pid 1\n".encode(),
        ),
        _workload(
            "io",
            "ITERATIONS console writes of a 48-byte line",
            ["io.s"],
            {"ITERATIONS": 20},
            lambda d: (
                b"io: the quick brown fox jumps over the lazy dog\n" * d["ITERATIONS"]
                + f"io: {d['ITERATIONS']} writes done\n".encode()
            ),
        ),
        _workload(
            "callret",
            "ITERATIONS user-mode call/ret pairs",
            ["callret.s"],
            {"ITERATIONS": 1000},
            lambda d: f"callret: {d['ITERATIONS']} calls\n".encode(),
        ),
        _workload(
            "pagefault",
            "touches ITERATIONS fresh demand-zero pages (one page fault each)",
            ["pagefault.s"],
            {"ITERATIONS": 32},
            lambda d: f"pagefault: {d['ITERATIONS']} fresh pages, zero-filled\n".encode(),
        ),
        _workload(
            "tlbmiss",
            "reads PAGES heap pages (more than the TLB holds) in turn, ITERATIONS rounds: a TLB miss per load",
            ["tlbmiss.s"],
            {"PAGES": 128, "ITERATIONS": 16},
            _tlbmiss,
        ),
        _workload(
            "ptemod",
            "ITERATIONS map/write/unmap cycles (page-table writes and TLB flushes)",
            ["ptemod.s"],
            {"ITERATIONS": 100},
            lambda d: f"ptemod: {d['ITERATIONS']} map/write/unmap cycles, 0 errors\n".encode(),
        ),
        _workload(
            "divzero",
            "a child divides by zero and is killed; then ITERATIONS divide errors caught by a user handler",
            ["divzero.s", "divzero_child.s"],
            {"ITERATIONS": 3},
            _divzero,
        ),
        _workload(
            "spawnwait",
            "ITERATIONS spawn + wait of a child that exits at once",
            ["spawnwait.s", "spawnwait_child.s"],
            {"ITERATIONS": 10},
            lambda d: (
                f"spawnwait: {d['ITERATIONS']} children, status sum "
                f"{sum(range(2, d['ITERATIONS'] + 2))}\n".encode()
            ),
        ),
        _workload(
            "multi",
            "WORKERS processes computing ITERATIONS steps each, preempted by the timer",
            ["multi.s", "multi_worker.s"],
            {"WORKERS": 3, "ITERATIONS": 3, "WORK": 30000},
            _multi,
        ),
        _workload(
            "dirty",
            "writes a word in each of PAGES heap pages every timer tick, ITERATIONS ticks: a writable working set",
            ["dirty.s"],
            {"PAGES": 16, "ITERATIONS": 20},
            lambda d: (
                f"dirty: {d['ITERATIONS']} ticks of {d['PAGES']} pages, sum "
                f"{d['PAGES'] * d['ITERATIONS'] % (1 << 32)}\n"
            ).encode(),
        ),
        _workload(
            "bench",
            "one bench(OP, ITERATIONS) system call: an in-kernel loop of a sensitive operation",
            ["bench.s"],
            {"OP": 0, "ITERATIONS": 100},
            _bench,
        ),
    ]
)


# ---- building ----

DefinesKey = tuple[tuple[str, int], ...]


def _key(defines: Defines | None) -> DefinesKey:
    return tuple(sorted((defines or {}).items()))


@functools.lru_cache(maxsize=256)
def _program_image(filename: str, defines: DefinesKey) -> Image:
    path = source_dir() / "workloads" / filename
    return _assemble_program(path.read_text(), str(path), dict(defines))


def _assemble_program(source: str, filename: str, defines: dict[str, int]) -> Image:
    image = assemble(source, filename=filename, defines=defines)
    if image.base != USER_BASE:
        raise UsageError(f"{filename}: a user program must start at {USER_BASE:#x} (include lib.s first)")
    if image.end > USER_HEAP:
        raise UsageError(f"{filename}: {len(image.data)} bytes do not fit below the heap at {USER_HEAP:#x}")
    return image


def build_programs(sources: Sequence[str], defines: Defines | None = None) -> list[Image]:
    """Assemble user programs given as source text (``.include "lib.s"`` resolves in
    ``workloads/``): how tests build one-off programs."""
    where = str(source_dir() / "workloads" / "<test>.s")
    return [_assemble_program(src, where, dict(defines or {})) for src in sources]


def generate_program_table(programs: Sequence[Image], names: Sequence[str] | None = None) -> str:
    """The assembly tail appended to kernel.s: program table, program bytes, ``kernel_end``."""
    names = names or [f"program {i}" for i in range(len(programs))]
    out = [
        "; ---- generated by ringlab.guestos.build: the workload's user programs ----",
        ".align 4",
        "program_count:",
        f"    .dword {len(programs)}",
        "program_table:                  ; load address, size, entry, bytes",
    ]
    for i, (image, name) in enumerate(zip(programs, names, strict=True)):
        size = (len(image.data) + 3) & ~3
        out.append(f"    .dword {image.base:#010x}, {size}, {image.entry:#010x}, program_{i}  ; {name}")
    for i, image in enumerate(programs):
        data = image.data + bytes(-len(image.data) % 4)
        words = struct.unpack(f"<{len(data) // 4}I", data)
        out.append(f"program_{i}:")
        for start in range(0, len(words), 8):
            out.append("    .dword " + ", ".join(f"{w:#x}" for w in words[start : start + 8]))
    out += [".align 4096", "kernel_end:", ""]
    return "\n".join(out)


def _link_kernel(programs: Sequence[Image], names: Sequence[str], flavour: str, defines: Defines) -> Image:
    if flavour not in FLAVOURS:
        raise UsageError(f"unknown kernel flavour {flavour!r}; valid flavours: {', '.join(FLAVOURS)}")
    text, path = kernel_source()
    source = text + "\n" + generate_program_table(programs, names)
    kernel_defines = dict(defines)
    if flavour == KernelFlavour.PARAVIRT:
        kernel_defines["PARAVIRT"] = 1  # pvops.s: hypercalls and the shared page (docs/pv-abi.md)
    return assemble(source, filename=str(path), defines=kernel_defines)


@functools.lru_cache(maxsize=128)
def _build_cached(workload: str, flavour: str, defines: DefinesKey) -> Image:
    spec = WORKLOADS[workload]
    programs = [_program_image(name, defines) for name in spec.programs]
    return _link_kernel(programs, spec.programs, flavour, dict(defines))


def build_image(
    workload: str = "hello", flavour: str = KernelFlavour.STOCK.value, defines: dict[str, int] | None = None
) -> Image:
    """The bootable image of ``workload`` on the ``flavour`` kernel, cached by its arguments.

    ``defines`` go to the kernel and to every program (``ITERATIONS``, ``ROUNDS``,
    ``TIMER_PERIOD``, ...).  Raises UsageError for an unknown workload or flavour."""
    if workload not in WORKLOADS:
        raise UsageError(f"unknown workload {workload!r}; valid workloads: {', '.join(WORKLOADS)}")
    if flavour not in FLAVOURS:
        raise UsageError(f"unknown kernel flavour {flavour!r}; valid flavours: {', '.join(FLAVOURS)}")
    return _build_cached(workload, flavour, _key(defines))


def build_custom_image(
    sources: Sequence[str], flavour: str = KernelFlavour.STOCK.value, defines: dict[str, int] | None = None
) -> Image:
    """A kernel image with the given user programs (source text; program 0 is init): tests use
    it to run a one-off program and show it."""
    programs = build_programs(sources, defines)
    return _link_kernel(
        programs, [f"custom program {i}" for i in range(len(sources))], flavour, defines or {}
    )
