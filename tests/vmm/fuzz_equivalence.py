"""The differential equivalence fuzzer: program generators, the runs, the comparison, reproduction.

A *program* is an RL-32 image plus how to run it (instruction limit, RAM size).  Three generators
make one from a seeded index, deterministically (``random.Random("<generator>:<index>")``):

* ``bytes``: random bytes loaded at 0x1000 (half of them a stream of defined opcodes with random
  operand bytes, so they decode further than the first byte);
* ``kernel``: the guest OS (stock kernel + a small workload) with 1-4 bytes or words of it
  flipped or replaced (kernel code, kernel data or the user program); a mutation of the user
  program only is also applied to the paravirt build of the same workload, for ``pv``;
* ``isa``: an assembly program drawn from the ISA table (``ringlab.isa.TABLE``): a random setup
  (an IDT of random gates and handlers, a TSS, random page tables and paging, the timer, a drop
  to ring 1-3 with a random IOPL), then random instructions of every spec with random operands.

Every program runs natively (``machine.run_image``) and under bt, hw, hw with nested paging and
trap-emulate (``vmm.run_vm``): the public entry points ``ringlab run`` uses.  The comparison
(``differences``) is docs/design.md's equivalence plus issue 12's: console, exit (reason, code,
detail), the guest-visible registers, ``stats.guest.retired_by_ring`` and
``stats.guest.virtual_time``.  The one allowed difference is cpuid leaf 1's hypervisor bit: a
run under hw that differs from native is held against a native run with that bit set too.
trap-emulate is held to it only in runs where no sensitive instruction escaped (no
``diagnostics``: docs/techniques.md, the Popek-Goldberg flaw it shows on purpose).  pv runs the
paravirt build of a ``kernel`` program whose mutation is in the user program only, and must
print and end as the stock kernel does natively (console and exit; tests/vmm/test_equivalence.py).

Reproduce a program: ``python -m tests.vmm.fuzz_equivalence image isa 17 /tmp/p`` writes
``/tmp/p.img`` (and ``/tmp/p.s`` for ``isa``), then ``ringlab run /tmp/p.img --json ...``.  A
campaign: ``python -m tests.vmm.fuzz_equivalence campaign isa 0 5000 out.jsonl``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import random
import struct
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ringlab.asm import assemble
from ringlab.image import Image
from ringlab.isa import BY_OPCODE, CONTROL_REGISTERS, FORMS, JCC, REGISTERS, TABLE, Spec
from ringlab.machine import run_image
from ringlab.vmm import run_vm

TECHNIQUES = ("bt", "hw", "hw+np", "trap-emulate")
"""The full-virtualization techniques held to native's result (``hw+np``: hw, nested paging)."""
COMPARED = ("console", "exit", "registers", "retired_by_ring", "virtual_time")
CRASH = "crash"
"""The field of a divergence whose technique raised instead of returning a result."""
BASE = 0x1000
MiB = 1 << 20


# ---------------------------------------------------------------------------------- programs
@dataclass(frozen=True)
class Program:
    generator: str
    index: int
    image: Image
    limit: int
    """``--max-instructions``: every run ends."""
    memory: int = 4 * MiB
    source: str | None = None
    """The assembly (``isa``), which ``ringlab asm`` turns into ``image``."""
    recipe: str = ""
    """How it was made, for people (``kernel``: the workload and the mutations)."""
    pv_image: Image | None = None
    """``kernel``: the paravirt build with the same user-program mutation, for pv (else None)."""

    @property
    def name(self) -> str:
        return f"{self.generator} #{self.index}"

    def run_options(self, technique: str) -> str:
        opts = [f"--max-instructions {self.limit}"]
        if self.memory != 4 * MiB:
            opts.append(f"--memory {self.memory:#x}")
        name, _, np = technique.partition("+")
        if name != "native":
            opts.append(f"--technique {name}")
        if np:
            opts.append("--nested-paging")
        return " ".join(opts)


def rng_for(generator: str, index: int) -> random.Random:
    return random.Random(f"{generator}:{index}")


# -- (a) random bytes ---------------------------------------------------------------------------
_OPCODES = sorted(BY_OPCODE)


def random_bytes(index: int) -> Program:
    rng = rng_for("bytes", index)
    n = rng.choice((8, 16, 32, 64, 128, 256, 512))
    if rng.random() < 0.5:
        data = rng.randbytes(n)
    else:  # defined opcodes with random operand bytes
        out = bytearray()
        while len(out) < n:
            spec = BY_OPCODE[rng.choice(_OPCODES)]
            out.append(spec.opcode)
            out += rng.randbytes(spec.length - 1)
        data = bytes(out)
    entry = BASE if rng.random() < 0.8 else BASE + rng.randrange(len(data))
    memory = rng.choice((4 * MiB, 1 * MiB, 64 << 10, 64 << 10))
    return Program("bytes", index, Image(BASE, data, entry), limit=2000, memory=memory, recipe="random bytes")


# -- (b) mutated guest-OS images --------------------------------------------------------------
KERNEL_WORKLOADS: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = (
    ("hello", ()),
    ("syscall", (("ITERATIONS", 5),)),
    ("io", (("ITERATIONS", 2),)),
    ("callret", (("ITERATIONS", 5),)),
    ("pagefault", (("ITERATIONS", 2),)),
    ("divzero", (("ITERATIONS", 1),)),
    ("spawnwait", (("ITERATIONS", 2),)),
    ("ptemod", (("ITERATIONS", 2),)),
    ("bench", (("OP", 2), ("ITERATIONS", 5))),
)
PV_WORKLOADS = frozenset({"hello", "syscall", "io", "callret", "pagefault"})
"""Single-process workloads: where the timer ticks fall (different kernels) cannot reorder output."""
KERNEL_LIMIT = 80_000
_INTERESTING_WORDS = (0, 1, 0xFFFFFFFF, 0x80000000, 0x7FFFFFFF, 0x400000, 0x10000000, 0xFFFFF000, 0x1000)


@functools.cache
def _kernel(workload: str, flavour: str, defines: tuple[tuple[str, int], ...]) -> Image:
    from ringlab.guestos.build import build_image

    return build_image(workload, flavour, dict(defines))


def _user_program(image: Image) -> tuple[int, int]:
    """(offset in the image, size) of program 0's bytes (the program table ``build.py`` appends)."""
    table = image.symbols["program_table"] - image.base
    _load, size, _entry, at = struct.unpack_from("<4I", image.data, table)
    return at - image.base, size


def _mutate(rng: random.Random, data: bytearray, lo: int, hi: int) -> str:
    at = rng.randrange(lo, hi)
    kind = rng.choice(("flip", "byte", "opcode", "word"))
    if kind == "flip":
        bit = rng.randrange(8)
        data[at] ^= 1 << bit
        return f"flip bit {bit} at {BASE + at:#x}"
    if kind == "byte":
        data[at] = rng.randrange(256)
        return f"byte {data[at]:#04x} at {BASE + at:#x}"
    if kind == "opcode":
        data[at] = rng.choice(_OPCODES)
        return f"opcode {data[at]:#04x} ({BY_OPCODE[data[at]].mnemonic}) at {BASE + at:#x}"
    at = max(lo, min(at, hi - 4))
    word = rng.choice(_INTERESTING_WORDS) if rng.random() < 0.7 else rng.getrandbits(32)
    data[at : at + 4] = word.to_bytes(4, "little")
    return f"dword {word:#x} at {BASE + at:#x}"


def _code_targets(image: Image, end: int) -> list[int]:
    """Offsets of the kernel's labels below ``end``: where its functions (and handlers) start."""
    return sorted({v - image.base for v in image.symbols.values() if image.base <= v < image.base + end})


def mutated_kernel(index: int) -> Program:
    rng = rng_for("kernel", index)
    where = rng.choice(("code", "code", "kernel", "user", "user"))
    choices = [w for w in KERNEL_WORKLOADS if where != "user" or w[0] in PV_WORKLOADS or rng.random() < 0.3]
    workload, defines = rng.choice(choices)
    stock = _kernel(workload, "stock", defines)
    data = bytearray(stock.data)
    user_at, user_size = _user_program(stock)
    kernel_size = user_at
    targets = _code_targets(stock, min(kernel_size, 0x1400))
    changes: list[str] = []
    pv_image = None
    for _ in range(rng.choice((1, 1, 2, 3, 4))):
        if where == "user":
            changes.append(_mutate(rng, data, user_at, user_at + user_size))
        elif where == "code":  # near the start of a kernel function or handler
            at = rng.choice(targets) + rng.randrange(0, 48)
            changes.append(_mutate(rng, data, at, at + 1))
        else:
            changes.append(_mutate(rng, data, 0, kernel_size))
    if where == "user" and workload in PV_WORKLOADS:
        pv = _kernel(workload, "paravirt", defines)
        pv_data = bytearray(pv.data)
        pv_at, _ = _user_program(pv)
        pv_data[pv_at : pv_at + user_size] = data[user_at : user_at + user_size]
        pv_image = dataclasses.replace(pv, data=bytes(pv_data))
    recipe = f"build_image({workload!r}, 'stock', {dict(defines)!r}) with its {where} mutated: " + "; ".join(
        changes
    )
    image = dataclasses.replace(stock, data=bytes(data))
    return Program("kernel", index, image, limit=KERNEL_LIMIT, recipe=recipe, pv_image=pv_image)


# -- (c) random instruction sequences from the ISA table ----------------------------------------
_SPECS = [s for s in TABLE]
_BRANCHES = {"jmp", "call", *("j" + c for c in set(JCC.values()))}
_PORTS = (0x3F8, 0x3F8, 0x40, 0x80, 0x80, 0xF4, 0x1234)
_ERROR_CODE = frozenset({8, 13, 14})
NVEC = 48
PT_PAGES = 16
"""Pages the first page table maps (from 0): the program's own, and a few more."""


class _IsaWriter:
    """One random ``isa`` program as assembly text."""

    def __init__(self, rng: random.Random, memory: int, paging: bool) -> None:
        self.rng = rng
        self.memory = memory
        self.paging = paging
        self.lines: list[str] = []
        self.body = rng.randrange(4, 40)
        self.drawn: set[int] = set()
        """Opcodes of the specs drawn for random instructions."""

    # -- operands ----------------------------------------------------------------------
    def address(self) -> str:
        rng = self.rng
        r = rng.random()
        if r < 0.45:
            sym = rng.choice(("scratch", "scratch", "scratch", "idt", "tss", "stack_top", "kstack_top", "b0"))
            return f"{sym} + {rng.choice((0, 4, 8, 12, 16, 0x20, 0xFFE, 0x100 - 2))}"
        if r < 0.6:
            return f"{rng.choice((self.memory - 4, self.memory, self.memory + 0x1000, 0x10000000, 0xFFFFFFFC)):#x}"
        if r < 0.8:
            return f"{rng.choice((0x8000, 0x20000, 0x100000, 0x3FF000, 0x400000)) + rng.randrange(0, 0x1000, 4):#x}"
        return f"{rng.getrandbits(32):#x}"

    def value(self) -> str:
        rng = self.rng
        r = rng.random()
        if r < 0.35:
            return str(rng.choice((0, 1, 2, 3, 4, 0xFFFFFFFF, 0x80000000, 0x7FFFFFFF, 0x3F8, 0x40, 31, 32)))
        if r < 0.5:
            return f"{rng.choice((0x200, 0x3000, 0x3200, 0x1000, 0x80000001, 0x80010001, 0x10001, 1)):#x}"
        if r < 0.75:
            return self.address()
        if r < 0.85:
            return f"b{rng.randrange(self.body)}"
        return f"{rng.getrandbits(32):#x}"

    def memory_operand(self) -> str:
        rng = self.rng
        if rng.random() < 0.7:
            return f"[{self.address()}]"
        return f"[{rng.choice(REGISTERS)} + {rng.choice((0, 4, 8, -4, 0x1000))}]"

    def register(self) -> str:
        # esp is rarely the operand: a random esp ends most programs at once
        return self.rng.choice(REGISTERS[:4] * 3 + REGISTERS[5:] * 3 + ("esp",))

    def operands(self, spec: Spec) -> list[str]:
        rng = self.rng
        out: list[str] = []
        for kind in FORMS[spec.form].operands:
            if kind == "r":
                out.append(self.register())
            elif kind in ("ecx", "edx", "cs"):
                out.append(kind)
            elif kind == "cr":
                out.append(f"cr{rng.choice(CONTROL_REGISTERS)}")
            elif kind == "m":
                out.append(self.memory_operand())
            elif kind == "m8":
                out.append("byte " + self.memory_operand())
            elif kind == "i8":
                if spec.mnemonic == "int":
                    out.append(str(rng.choice((*range(0, 34), 0x80, 0x82, 200, 255))))
                else:
                    out.append(str(rng.randrange(0, 40)))
            elif spec.mnemonic in _BRANCHES:
                out.append(f"b{rng.randrange(self.body)}" if rng.random() < 0.9 else self.value())
            elif spec.mnemonic in ("in", "out"):
                out.append(f"{rng.choice(_PORTS):#x}")
            else:
                out.append(self.value())
        return out

    def instruction(self) -> str:
        if self.paging and self.rng.random() < 0.04:
            return self.page_table_edit()
        spec = self.rng.choice(_SPECS)
        self.drawn.add(spec.opcode)
        ops = self.operands(spec)
        return f"{spec.mnemonic} {', '.join(ops)}".rstrip()

    def page_table_edit(self) -> str:
        """A page-table write and, mostly, the invalidation that makes it take effect: a program
        that relies on a stale TLB entry is unspecified (docs/machine.md, Paging), but one whose
        write precedes the page's first use needs none natively (the TLB caches only what was
        used), and a quarter of the edits leave it out."""
        rng = self.rng
        if rng.random() < 0.8:
            page = rng.randrange(PT_PAGES)
            edit = f"mov [pt0 + {page * 4}], {self.pte(page)}"
            if page % 4 == 3:  # no invlpg: natively right only if the page was never used since
                return edit + "   ; no invlpg"
            return f"{edit}\n        invlpg [{page << 12:#x}]"
        return f"mov [pd + {rng.randrange(3) * 4}], {self.pde()}\n        mov esi, cr3\n        mov cr3, esi"

    # -- the program ---------------------------------------------------------------------
    def write(self) -> str:
        rng = self.rng
        emit = self.lines.append
        emit(".entry main")
        emit("main:")
        if rng.random() < 0.95:
            emit("        lidt [idtd]")
        if rng.random() < 0.8:
            emit("        mov eax, tss")
            emit("        ltr eax")
        if rng.random() < 0.2:
            emit("        lgdt [gdtd]")
        if rng.random() < 0.8:
            emit("        mov esp, stack_top")
        if self.paging:
            emit("        mov eax, " + ("pd" if rng.random() < 0.9 else self.address()))
            emit("        mov cr3, eax")
            emit(f"        mov eax, {0x80000001 | (0x10000 if rng.random() < 0.5 else 0):#x}")
            emit("        mov cr0, eax")
        if rng.random() < 0.3:
            emit(f"        mov eax, {rng.choice((1, 2, 5, 17, 100, 1000))}")
            emit("        out 0x40, eax")
            if rng.random() < 0.6:
                emit("        sti")
        for reg in REGISTERS:
            if reg != "esp" and rng.random() < 0.7:
                emit(f"        mov {reg}, {self.value()}")
        if rng.random() < 0.4:  # drop to another ring
            ring = rng.choice((1, 2, 3, 3))
            flags = rng.choice((0, 0x200)) | rng.randrange(4) << 12
            emit(f"        push {'user_stack_top' if rng.random() < 0.9 else self.address()}")
            emit(f"        push {flags:#x}")
            emit(f"        push {ring}")
            emit("        push b0")
            emit("        iret")
        for i in range(self.body):
            emit(f"b{i}:     {self.instruction()}")
        end = rng.random()
        if end < 0.5:
            emit(f"        mov eax, {rng.randrange(256)}")
            emit("        out 0xF4, eax")
        elif end < 0.7:
            emit("        hlt")
        else:
            emit("        jmp b0")
        self.handlers()
        self.data()
        return "\n".join(self.lines) + "\n"

    def handlers(self) -> None:
        rng = self.rng
        emit = self.lines.append
        kinds = ["off", "iret", "count", "jump", "random"]
        self.handler_names = []
        for k in range(rng.randrange(1, 6)):
            kind = rng.choice(kinds)
            name = f"h{k}"
            self.handler_names.append(name)
            emit(f"{name}:")
            if kind == "off":
                emit(f"        mov eax, {0x40 + k}")
                emit("        out 0x3F8, eax")
                emit("        out 0xF4, eax")
            elif kind == "iret":
                if rng.random() < 0.5:
                    emit("        add esp, 4              ; drop an error code")
                emit("        iret")
            elif kind == "count":
                emit("        inc dword [count]")
                emit(f"        cmp dword [count], {rng.choice((2, 5, 20))}")
                emit(f"        jae h{k}.stop")
                emit("        mov eax, cr2" if rng.random() < 0.5 else "        nop")
                emit(f"        jmp b{rng.randrange(self.body)}")
                emit(".stop:  mov eax, [count]")
                emit("        out 0xF4, eax")
            elif kind == "jump":
                emit(f"        jmp b{rng.randrange(self.body)}")
            else:
                for _ in range(rng.randrange(1, 5)):
                    emit(f"        {self.instruction()}")
                emit("        iret")

    def data(self) -> None:
        rng = self.rng
        emit = self.lines.append
        emit("        .align 8")
        emit("idt:")
        for v in range(NVEC):
            handler = rng.choice(self.handler_names)
            attrs = 0x8000 if rng.random() < 0.92 else 0
            attrs |= 0x100 if rng.random() < 0.5 else 0
            attrs |= rng.choice((0, 0, 0, 3, 1, 2)) << 13  # DPL
            attrs |= rng.choice((0, 0, 0, 0, 0, 1, 2, 3))  # the handler's ring
            emit(f"        .dword {handler}, {attrs:#x}   ; vector {v}")
        emit("idt_end:")
        limit = "idt_end - idt - 1" if rng.random() < 0.85 else str(rng.randrange(0, NVEC * 8))
        emit(f"idtd:   .word {limit}")
        emit(f"        .dword {'idt' if rng.random() < 0.95 else self.address()}")
        emit(f"gdtd:   .word {rng.randrange(0x10000)}")
        emit(f"        .dword {rng.getrandbits(32):#x}")
        stacks = ", ".join("kstack_top" if rng.random() < 0.85 else self.address() for _ in range(3))
        esp0, esp1, esp2 = stacks.split(", ")
        emit(f"tss:    .dword 0, {esp0}, 0, {esp1}, 0, {esp2}, 0")
        emit("count:  .dword 0")
        emit("scratch:")
        for _ in range(4):
            emit("        .dword " + ", ".join(self.value() for _ in range(4)))
        emit("        .align 4096")
        emit("        .space 0x800")
        emit("stack_top:")
        emit("        .space 0x400")
        emit("kstack_top:")
        emit("        .space 0x3F0")
        emit("user_stack_top:")
        emit("        .space 0x10")
        emit("        .align 4096")
        # the page directory and the first page table: identity for the pages this program
        # occupies and a few more, with random permissions and frames; the top of RAM too.
        pages = PT_PAGES
        emit("pd:     .dword " + self.pde())
        for _ in range(rng.choice((0, 0, 1, 2))):
            emit(f"        .dword {self.pde()}")
        emit("        .align 4096")
        emit("pt0:")
        for start in range(0, pages, 8):
            emit("        .dword " + ", ".join(self.pte(page) for page in range(start, start + 8)))
        emit(f"        .space {(1024 - pages - 1) * 4}")
        emit(f"        .dword {self.pte((self.memory >> 12) - 1)}")

    def pde(self) -> str:
        rng = self.rng
        r = rng.random()
        perms = rng.choice((7, 7, 7, 3, 5, 1, 6))
        if r < 0.8:
            return f"pt0 + {perms}"
        if r < 0.9:
            return f"{rng.choice((self.memory, 0x10000000, 0xFFFFF000)) | perms:#x}"
        return f"{rng.getrandbits(32) & ~0xFFF | perms:#x}"

    def pte(self, page: int) -> str:
        rng = self.rng
        if rng.random() < 0.85:
            return f"{page << 12 | 7:#x}"
        perms = rng.choice((0, 1, 3, 5, 6, 7))
        frame = rng.choice((page << 12, page << 12, 0x1000, 0x2000, self.memory, 0x10000000, 0xFFFFF000))
        return f"{frame | perms:#x}"


def isa_program(index: int) -> Program:
    return _isa(index)[0]


def isa_specs_drawn(index: int) -> set[int]:
    """The opcodes ``isa_program(index)`` drew its random instructions from."""
    return _isa(index, build=False)[1]


def _isa(index: int, build: bool = True) -> tuple[Program, set[int]]:
    rng = rng_for("isa", index)
    paging = rng.random() < 0.5
    # Exception storms (a delivery that faults again at once) retire nothing, so the instruction
    # limit does not stop them: the stack running out does.  Without paging a small RAM keeps
    # them short; with paging the stack soon reaches a page the tables do not map.
    memory = rng.choice((4 * MiB, 4 * MiB, 1 * MiB, 64 << 10) if paging else (1 * MiB, 64 << 10, 64 << 10))
    writer = _IsaWriter(rng, memory, paging)
    source = writer.write()
    image = assemble(source, filename=f"isa-{index}.s") if build else Image(BASE, b"", BASE)
    limit = rng.choice((300, 1000, 2000, 3000))
    return Program("isa", index, image, limit=limit, memory=memory, source=source, recipe="isa"), writer.drawn


GENERATORS: dict[str, Callable[[int], Program]] = {
    "bytes": random_bytes,
    "kernel": mutated_kernel,
    "isa": isa_program,
}


# ---------------------------------------------------------------------------------- running
def run(
    program: Program, technique: str, image: Image | None = None, limit: int | None = None
) -> dict[str, Any]:
    """``ringlab run --json``'s object for ``program`` under ``technique`` (``native``, ``hw+np`` ...)."""
    return run_as(image or program.image, technique, limit=limit or program.limit, memory=program.memory)


def run_as(image: Image, technique: str, *, limit: int, memory: int = 4 * MiB) -> dict[str, Any]:
    """``ringlab run IMAGE --json --max-instructions LIMIT --memory MEMORY`` under ``technique``."""
    if technique == "native":
        return run_image(image, memory_size=memory, max_instructions=limit).to_json()
    name, _, np = technique.partition("+")
    result: dict[str, Any] = run_vm(
        image, technique=name, nested_paging=bool(np), memory_size=memory, max_instructions=limit
    ).to_json()
    return result


def observe(result: dict[str, Any]) -> dict[str, Any]:
    guest = result["stats"]["guest"]
    return {
        "console": result["console"],
        "exit": result["exit"],
        "registers": result["registers"],
        "retired_by_ring": guest["retired_by_ring"],
        "virtual_time": guest["virtual_time"],
    }


def _native_with_hypervisor_bit(program: Program) -> dict[str, Any] | None:
    """The native run of ``program`` on a machine whose cpuid leaf 1 sets the hypervisor bit (what
    hw may show): None where this build cannot make one."""
    try:
        from ringlab.machine import Controls
        from ringlab.vmm import VM
        from ringlab.vmm.native import Native
    except ImportError:  # pragma: no cover - the tree is being refactored
        return None

    class _NativeHypervisorBit(Native):
        def controls(self) -> Controls:
            return dataclasses.replace(super().controls(), cpuid_hypervisor_bit=True)

    vm = VM(program.image, _NativeHypervisorBit(), memory_size=program.memory)
    out: dict[str, Any] = vm.run(program.limit).to_json()
    return out


def differences(
    native: dict[str, Any], other: dict[str, Any], *, fold_kernel_rings: bool = False
) -> dict[str, tuple[Any, Any]]:
    """What equivalence compares (``COMPARED``), field by field: ``{"registers.eip": (native's,
    other's), ...}``; empty when they agree.  ``fold_kernel_rings``: retired instructions
    compared as rings 0-2 together and ring 3 (what is left to compare while ring accounting
    under ring compression is wrong: the regression tests of the other classes)."""
    a, b = observe(native), observe(other)
    if fold_kernel_rings:
        for o in (a, b):
            o["retired_by_ring"] = _folded(o["retired_by_ring"])
    return _diff(a, b)


def _diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    out: dict[str, tuple[Any, Any]] = {}
    for key in COMPARED:
        x, y = a[key], b[key]
        if x == y:
            continue
        if isinstance(x, dict):
            for sub in x:
                if x[sub] != y.get(sub):
                    out[f"{key}.{sub}"] = (x[sub], y.get(sub))
        else:
            out[key] = (x, y)
    return out


@dataclass
class Divergence:
    program: Program = field(repr=False)
    technique: str
    fields: dict[str, tuple[Any, Any]]
    native: dict[str, Any] = field(repr=False)
    vm: dict[str, Any] = field(repr=False)
    classes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "generator": self.program.generator,
            "index": self.program.index,
            "technique": self.technique,
            "fields": {k: list(v) for k, v in self.fields.items()},
            "classes": list(self.classes),
            "native_exit": self.native["exit"],
            "vm_exit": self.vm["exit"],
            "native_retired": self.native["stats"]["guest"]["retired_by_ring"],
            "vm_retired": self.vm["stats"]["guest"]["retired_by_ring"],
            "native_exceptions": self.native["stats"]["guest"]["exceptions"],
            "vm_exceptions": self.vm["stats"]["guest"]["exceptions"],
        }

    def describe(self) -> str:
        p = self.program
        lines = [
            f"{p.name} differs under {self.technique} from native"
            + (
                f" (looks like: {', '.join(self.classes)})"
                if self.classes
                else " (no known class's signature)"
            ),
        ]
        for key, (want, got) in sorted(self.fields.items()):
            lines.append(f"    {key}: native {_show(want)}, {self.technique} {_show(got)}")
        lines.append(reproduce(p, self.technique))
        return "\n".join(lines)


def _show(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value} ({value:#x})"
    return json.dumps(value)


def compare(program: Program, technique: str, native: dict[str, Any]) -> Divergence | None:
    """The technique's run of ``program`` against native's: None when equivalent."""
    try:
        result = run(program, technique)
    except Exception as exc:  # the VMM itself failed on this guest: always a finding
        return _crash(program, technique, native, exc)
    if technique == "trap-emulate" and result.get("diagnostics"):
        return None  # a sensitive instruction escaped: trap-emulate promises nothing then
    fields = _diff(observe(native), observe(result))
    if fields and technique.startswith("hw"):
        # the one allowed difference: cpuid leaf 1's hypervisor bit, and all that follows from it
        with_bit = _native_with_hypervisor_bit(program)
        if with_bit is not None and not _diff(observe(with_bit), observe(result)):
            return None
    if not fields:
        return None
    return Divergence(program, technique, fields, native, result)


def _crash(program: Program, technique: str, native: dict[str, Any], exc: Exception) -> Divergence:
    failed = {"console": "", "exit": {"reason": "crash", "code": None, "detail": repr(exc)}}
    return Divergence(program, technique, {CRASH: (None, repr(exc))}, native, {**native, **failed})


def compare_pv(program: Program, native: dict[str, Any]) -> Divergence | None:
    """pv on the paravirt build against the stock build natively: console and exit."""
    if program.pv_image is None or native["exit"]["reason"] == "limit":
        return None
    try:
        result = run(program, "pv", image=program.pv_image, limit=4 * program.limit)
    except Exception as exc:
        return _crash(program, "pv", native, exc)
    fields = {key: (native[key], result[key]) for key in ("console", "exit") if native[key] != result[key]}
    if not fields:
        return None
    return Divergence(program, "pv", fields, native, result)


def check(program: Program, techniques: Iterable[str] = TECHNIQUES) -> list[Divergence]:
    """Every difference ``program`` shows under ``techniques`` (and pv, when it has a paravirt
    build).  A technique that raises is a ``CRASH`` divergence; native raising is an
    ``AssertionError`` that names the program."""
    try:
        native = run(program, "native")
    except Exception as exc:
        raise AssertionError(
            f"{program.name} crashed natively: {exc!r}\n{reproduce(program, 'native')}"
        ) from exc
    found = [d for t in techniques if (d := compare(program, t, native)) is not None]
    pv = compare_pv(program, native)
    if pv is not None:
        found.append(pv)
    for d in found:
        d.classes = classify(d)
    return found


# ------------------------------------------------------------------------------ reproduction
def reproduce(program: Program, technique: str) -> str:
    """How to run ``program`` again, by hand."""
    stem = f"/tmp/{program.generator}-{program.index}"
    img = f"{stem}.img"
    out = [
        "  reproduce (from the repository root):",
        f"    python -m tests.vmm.fuzz_equivalence image {program.generator} {program.index} {stem}",
        f"    ringlab run {img} --json {program.run_options('native')}",
    ]
    if technique == "pv":
        out.append(
            f"    ringlab run {stem}-pv.img --json --technique pv --max-instructions {4 * program.limit}"
        )
    else:
        out.append(f"    ringlab run {img} --json {program.run_options(technique)}")
    if program.source is not None:
        out.append(f"  the program ({stem}.s; 'ringlab asm {stem}.s -o {img}'):")
        out.extend("    " + line for line in program.source.splitlines())
    elif program.generator == "bytes":
        entry = program.image.entry
        out.append(f"  the image: base {BASE:#x}, entry {entry:#x}, bytes {program.image.data.hex()}")
    else:
        out.append(f"  the image: {program.recipe}")
    return "\n".join(out)


def write_program(program: Program, stem: str) -> list[Path]:
    written = [Path(f"{stem}.img")]
    program.image.save(written[0])
    if program.source is not None:
        written.append(Path(f"{stem}.s"))
        written[-1].write_text(program.source)
    if program.pv_image is not None:
        written.append(Path(f"{stem}-pv.img"))
        program.pv_image.save(written[-1])
    return written


# --------------------------------------------------------------------------- known classes
RING_COMPRESSION = frozenset({"bt", "trap-emulate"})
"""Techniques that run the guest kernel at real ring 1 (ring compression)."""
SHADOW = frozenset({"bt", "hw", "trap-emulate"})
"""Techniques on shadow page tables."""

RING_ACCOUNTING = "ring-accounting"
DELIVERY_PF = "delivery-takes-vmm-page-fault"
NESTED_PF_CR2 = "hw-nested-page-fault-cr2"
TICK_ORDER = "bt-tick-order"
TRAP_EMULATE_RINGS = "trap-emulate-guest-rings-1-2"
SHADOW_TLB = "shadow-tlb-is-not-the-native-tlb"
SPURIOUS_PF = "shadow-spurious-page-fault"
CLASSES = (
    RING_ACCOUNTING,
    DELIVERY_PF,
    NESTED_PF_CR2,
    TICK_ORDER,
    TRAP_EMULATE_RINGS,
    SHADOW_TLB,
    SPURIOUS_PF,
)
"""The divergence classes tests/vmm/test_equivalence_regressions.py pins, one test (or more) each."""


def _folded(by_ring: dict[str, int]) -> tuple[int, int]:
    return by_ring["0"] + by_ring["1"] + by_ring["2"], by_ring["3"]


def classify(d: Divergence) -> tuple[str, ...]:
    """The known classes (``CLASSES``) whose signature ``d`` shows: a label for people reading a
    failure, from the results alone (a heuristic: the regression tests pin each class exactly)."""
    found: list[str] = []
    rest = {k for k in d.fields if not k.startswith("retired_by_ring")}
    native_guest, vm_guest = d.native["stats"]["guest"], d.vm["stats"]["guest"]
    if (
        d.technique in RING_COMPRESSION
        and len(rest) < len(d.fields)
        and _folded(native_guest["retired_by_ring"]) == _folded(vm_guest["retired_by_ring"])
    ):
        found.append(RING_ACCOUNTING)
    if not rest:
        return tuple(found)
    native_exit, vm_exit = d.native["exit"], d.vm["exit"]
    double_faults = (native_guest["exceptions"].get("8", 0), vm_guest["exceptions"].get("8", 0))
    if (
        d.technique in SHADOW
        and native_exit != vm_exit
        and ("#PF while delivering #DF" in vm_exit["detail"] or double_faults[1] > double_faults[0])
    ):
        found.append(DELIVERY_PF)
    elif d.technique in SHADOW and vm_guest["exceptions"].get("14", 0) > native_guest["exceptions"].get(
        "14", 0
    ):
        found.append(SPURIOUS_PF)
    elif d.technique == "hw" and rest == {"registers.cr2"}:
        found.append(NESTED_PF_CR2)
    elif (
        d.technique == "bt"
        and native_exit["reason"] == vm_exit["reason"] == "limit"
        and rest <= {"registers.eip", "registers.esp", "registers.eflags", "registers.cs"}
    ):
        found.append(TICK_ORDER)
    elif d.technique == "trap-emulate" and (
        native_guest["retired_by_ring"]["1"]
        or native_guest["retired_by_ring"]["2"]
        or d.native["registers"]["cs"] in (1, 2)
    ):
        found.append(TRAP_EMULATE_RINGS)
    return tuple(found)


# ---------------------------------------------------------------------------------- the CLI
def _campaign(generator: str, start: int, count: int, out: str) -> None:
    make = GENERATORS[generator]
    with open(out, "a") as sink:
        for index in range(start, start + count):
            program = make(index)
            for d in check(program):
                sink.write(json.dumps(d.to_json()) + "\n")
                sink.flush()


def main(argv: list[str]) -> int:
    match argv:
        case ["image", generator, index, stem]:
            for path in write_program(GENERATORS[generator](int(index)), stem):
                print(path)
            return 0
        case ["campaign", generator, start, count, out]:
            _campaign(generator, int(start), int(count), out)
            return 0
        case ["show", generator, index]:
            program = GENERATORS[generator](int(index))
            for d in check(program):
                print(d.describe())
            return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
