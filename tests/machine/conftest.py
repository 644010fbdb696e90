"""Helpers for the CPU core's tests.

Every test runs under both execution engines (the ``fast`` fixture: the pure interpreter and
the block compiler).  ``kernel(body)`` wraps a test's program in a small ring-0 prelude:

* ``esp`` = ``kstack0_top``; ``lidt`` of an IDT with ``NVEC`` gates; ``ltr`` of a TSS whose ring
  stacks are ``kstack0_top`` (esp0), ``kstack1_top`` (esp1), ``kstack2_top`` (esp2);
* by default every vector's gate is an interrupt gate (ring 0, DPL 0) to ``fault_<n>``, which
  is a bare ``hlt``: with IF = 0 the machine stops, and the test reads the vector from ``eip``
  (``stopped_at_vector``) and the frame from the stack (``stack``);
* ``paging=True`` identity-maps the first 4 MiB (every page P|W|U) with the directory at
  ``0x80000`` and its table at ``0x81000``, and turns paging on.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ringlab.asm import assemble
from ringlab.image import Image
from ringlab.machine import Controls, Cpu, Exit, ExitReason, blocks

NVEC = 40
PD, PT = 0x80000, 0x81000
CF, ZF, SF, IF, OF = 1, 0x40, 0x80, 0x200, 0x800
ARITH = CF | ZF | SF | OF


@pytest.fixture(params=[False, True], ids=["interp", "blocks"])
def fast(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[bool]:
    """Both engines; the block compiler compiles every block on first sight, so even the tests'
    short programs run as compiled code (in production it waits until a block is hot)."""
    if request.param:
        monkeypatch.setattr(blocks, "HOT", 1)
    yield request.param


def gate(label: str, *, dpl: int = 0, ring: int = 0, trap: bool = False, present: bool = True) -> str:
    attrs = (0x8000 if present else 0) | (dpl << 13) | (0 if trap else 0x100) | ring
    return f".dword {label}, {attrs:#x}"


PAGING_ON = f"""
        mov edi, {PT}
        mov eax, 7                 ; P|W|U, frame 0
.fill:  mov [edi], eax
        add eax, 0x1000
        add edi, 4
        cmp edi, {PT + 0x1000}
        jne .fill
        mov [{PD}], {PT | 7}
        mov eax, {PD}
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
"""


def kernel(body: str, *, gates: dict[int, str] | None = None, paging: bool = False, tail: str = "") -> str:
    """The prelude, then ``body`` at label ``main``; ``tail`` goes after the handlers."""
    entries = {v: gate(f"fault_{v}") for v in range(NVEC)} | (gates or {})
    idt = "\n".join(f"        {entries[v]}" for v in range(NVEC))
    handlers = "\n".join(f"fault_{v}: hlt" for v in range(NVEC))
    return f"""
.org 0x1000
.entry start
start:  mov esp, kstack0_top
        lidt [idt_desc]
        mov eax, tss
        ltr eax
{PAGING_ON if paging else ""}
        jmp main
idt_desc: .word {NVEC * 8 - 1}
        .dword idt
        .align 8
idt:
{idt}
tss:    .dword 0, kstack0_top, 0, kstack1_top, 0, kstack2_top, 0
{handlers}
main:
{body}
{tail}
        .align 4096
        .space 4096
kstack0_top:
        .space 4096
kstack1_top:
        .space 4096
kstack2_top:
        .space 4096
ustack_top:
data:   .space 4096
"""


def boot(source: str, fast: bool, *, controls: Controls | None = None, memory_size: int = 4 << 20) -> Cpu:
    return Cpu.boot(assemble(source), memory_size=memory_size, controls=controls, fast=fast)


def image(source: str) -> Image:
    return assemble(source)


def run(cpu: Cpu, budget: int = 2_000_000) -> Exit:
    return cpu.run(budget)


def run_to_halt(source: str, fast: bool, **kw: object) -> Cpu:
    cpu = boot(source, fast, **kw)  # type: ignore[arg-type]
    exit = run(cpu)
    assert exit.reason is ExitReason.HALT, exit
    return cpu


def stopped_at_vector(cpu: Cpu, source: str) -> int | None:
    """The vector whose default handler (``fault_<n>: hlt``) stopped the machine."""
    symbols = assemble(source).symbols
    for v in range(NVEC):
        if symbols[f"fault_{v}"] + 1 == cpu.state.eip:
            return v
    return None


def stack(cpu: Cpu, n: int) -> list[int]:
    """The ``n`` dwords on top of the stack (physical = linear in these tests)."""
    esp = cpu.state.regs[4]
    return [cpu.memory.read32(esp + 4 * i) for i in range(n)]


def reg(cpu: Cpu, name: str) -> int:
    return cpu.state.reg(name)


def sym(source: str, name: str) -> int:
    return assemble(source).symbols[name]
