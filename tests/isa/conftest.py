"""Helpers for the RL-32 conformance suite (derived from docs/machine.md alone).

``run(src)`` assembles an RL-32 program and runs it natively; it returns docs/machine.md's ``--json`` object
as a dict, plus ``rec`` (the ``name=hex`` lines the recording handler printed) and ``sym`` (the
image's symbols).

``kernel(body, ...)`` wraps a test body in a small ring-0 prelude:

* ``esp`` = ``rl_kstack0_top``; ``lidt`` of an IDT with 64 gates; ``ltr`` of a TSS whose ring
  stacks are ``rl_kstack0_top`` (esp0, TSS+4), ``rl_kstack1_top`` (esp1, TSS+12) and
  ``rl_kstack2_top`` (esp2, TSS+20);
* default gates: vectors 0-32 -> the *recording handler* (interrupt gate, ring 0, DPL 0);
  0x30 -> ``out 0xF4, eax`` (DPL 3: "power off with my eax" from any ring);
  0x31 -> the recording handler with DPL 3 ("record my state and stop" from any ring);
* optional identity paging of the first 4 MiB (every page P|W|U) through ``rl_pd``/``rl_pt0``.

The recording handler (``rl_h_<vector>``) stores the interrupted registers, the handler's own
``esp``, ``eflags`` and ``cs``, ``cr2`` (when it runs at ring 0) and the six dwords on top of its
stack, prints them as ``name=xxxxxxxx`` lines and powers off with exit code = vector.  So for a
fault with an error code: s0 = error code, s1 = eip, s2 = cs, s3 = eflags (s4 = old esp after a
ring switch); without one: s0 = eip, s1 = cs, s2 = eflags, s3 = old esp.
It works at any ring as long as ``out`` is allowed there (CPL <= IOPL).
"""

from __future__ import annotations

import json
import re
from typing import Any

CF = 1 << 0
ZF = 1 << 6
SF = 1 << 7
IF = 1 << 9
OF = 1 << 11
IOPL_MASK = 3 << 12
ARITH = CF | ZF | SF | OF

NVEC = 64
SYS_OFF = 0x30
SYS_REC = 0x31
DEFAULT_RAM = 4 << 20


def gate(
    handler: str, *, dpl: int = 0, ring: int = 0, trap: bool = False, present: bool = True
) -> tuple[str, int]:
    """An IDT entry: (handler label, attribute dword) per docs/machine.md "Interrupts and exceptions"."""
    attrs = (0x8000 if present else 0) | (dpl << 13) | (0 if trap else 0x100) | ring
    return handler, attrs


def rec_gate(vector: int, **kw: Any) -> tuple[str, int]:
    return gate(f"rl_h_{vector}", **kw)


_FIELDS = [
    ("vec", "rl_r_vec"),
    ("eax", "rl_r_eax"),
    ("ebx", "rl_r_ebx"),
    ("ecx", "rl_r_ecx"),
    ("edx", "rl_r_edx"),
    ("esi", "rl_r_esi"),
    ("edi", "rl_r_edi"),
    ("ebp", "rl_r_ebp"),
    ("esp", "rl_r_esp"),
    ("hfl", "rl_r_hfl"),
    ("hcs", "rl_r_hcs"),
    ("cr2", "rl_r_cr2"),
    ("s0", "rl_r_s0"),
    ("s1", "rl_r_s1"),
    ("s2", "rl_r_s2"),
    ("s3", "rl_r_s3"),
    ("s4", "rl_r_s4"),
    ("s5", "rl_r_s5"),
    ("count", "rl_r_count"),
    ("user", "rl_r_user"),
]


def _record_handler() -> str:
    lines = [
        "rl_record:",
        "    mov [rl_r_eax], eax",
        "    mov [rl_r_ebx], ebx",
        "    mov [rl_r_ecx], ecx",
        "    mov [rl_r_edx], edx",
        "    mov [rl_r_esi], esi",
        "    mov [rl_r_edi], edi",
        "    mov [rl_r_ebp], ebp",
        "    mov [rl_r_esp], esp",
        "    pushf",
        "    pop eax",
        "    mov [rl_r_hfl], eax",
        "    mov eax, cs",
        "    mov [rl_r_hcs], eax",
    ]
    for i in range(6):
        lines += [f"    mov eax, [esp + {4 * i}]", f"    mov [rl_r_s{i}], eax"]
    lines += [
        "    inc [rl_r_count]",
        "    mov eax, [rl_r_hcs]",
        "    test eax, eax",
        "    jnz rl_record_nocr2",
        "    mov eax, cr2",
        "    mov [rl_r_cr2], eax",
        "rl_record_nocr2:",
    ]
    for name, label in _FIELDS:
        lines += [
            f"    mov esi, rl_s_{name}",
            "    call rl_puts",
            f"    mov eax, [{label}]",
            "    call rl_puthex",
        ]
    lines += [
        "    mov eax, [rl_r_vec]",
        "    out 0xF4, eax",
        "rl_dead:",
        "    jmp rl_dead",  # not reached: power off
        "rl_puts:",
        "    movzx ebx, byte [esi]",
        "    test ebx, ebx",
        "    jz rl_puts_done",
        "    out 0x3F8, ebx",
        "    inc esi",
        "    jmp rl_puts",
        "rl_puts_done:",
        "    ret",
        "rl_puthex:",
        "    mov ecx, 8",
        "rl_puthex_loop:",
        "    mov ebx, eax",
        "    shr ebx, 28",
        "    movzx edx, byte [rl_hexdigits + ebx]",
        "    out 0x3F8, edx",
        "    shl eax, 4",
        "    dec ecx",
        "    jnz rl_puthex_loop",
        "    mov edx, 10",
        "    out 0x3F8, edx",
        "    ret",
    ]
    return "\n".join(lines) + "\n"


def kernel(
    body: str,
    *,
    gates: dict[int, tuple[str, int] | None] | None = None,
    idt_limit: int | None = None,
    paging: bool = False,
    wp: bool = False,
    data: str = "",
) -> str:
    """The prelude + ``main:`` + body + the prelude's data (see module doc)."""
    table: dict[int, tuple[str, int] | None] = {v: rec_gate(v) for v in range(33)}
    table[SYS_OFF] = gate("rl_sys_off", dpl=3)
    table[SYS_REC] = rec_gate(SYS_REC, dpl=3)
    table.update(gates or {})
    limit = NVEC * 8 - 1 if idt_limit is None else idt_limit

    stubs = []
    for v in sorted({*range(33), SYS_REC, *(gates or {})}):
        stubs.append(f"rl_h_{v}:\n    mov [rl_r_vec], {v}\n    jmp rl_record\n")

    setup = ""
    if paging:
        setup = (
            "    mov eax, rl_pd\n"
            "    mov cr3, eax\n"
            f"    mov eax, {0x80010001 if wp else 0x80000001}\n"
            "    mov cr0, eax\n"
        )

    idt_lines = []
    for v in range(NVEC):
        g = table.get(v)
        if g is None:
            idt_lines.append("    .dword 0\n    .dword 0")
        else:
            idt_lines.append(f"    .dword {g[0]}\n    .dword {g[1]:#x}")

    strings = "\n".join(f'rl_s_{name}: .asciz "{name}="' for name, _ in _FIELDS)
    recvars = "\n".join(f"{label}: .dword 0" for _, label in _FIELDS)

    paging_data = ""
    if paging:
        ptes = "\n".join(f"    .dword {(i << 12) | 7:#x}" for i in range(1024))
        paging_data = f"""
.align 4096
rl_pd:
    .dword rl_pt0 + 7
    .space 4092
rl_pt0:
{ptes}
"""

    return f"""\
.entry rl_start
rl_start:
    mov esp, rl_kstack0_top
    lidt [rl_idtr]
    mov eax, rl_tss
    ltr eax
{setup}    mov eax, 0
    jmp main

rl_sys_off:
    out 0xF4, eax
    jmp rl_sys_off

{"".join(stubs)}
{_record_handler()}

main:
{body}

; ---------------- prelude data ----------------
.align 16
rl_hexdigits: .ascii "0123456789abcdef"
{strings}
.align 4
{recvars}
{data}
.align 8
rl_idtr:
    .word {limit:#x}
    .dword rl_idt
.align 4096
rl_idt:
{chr(10).join(idt_lines)}
.align 16
rl_tss:
    .dword 0
    .dword rl_kstack0_top
    .dword 0
    .dword rl_kstack1_top
    .dword 0
    .dword rl_kstack2_top
    .dword 0
    .space 64
.align 16
    .space 2048
rl_kstack0_top:
    .space 64
    .space 2048
rl_kstack1_top:
    .space 64
    .space 2048
rl_kstack2_top:
    .space 64
    .space 2048
rl_ustack_top:
    .space 64
{paging_data}
"""


def to_ring(
    ring: int,
    target: str,
    *,
    iopl: int = 0,
    if_: bool = False,
    esp: str = "rl_ustack_top",
    extra_flags: int = 0,
) -> str:
    """Drop from ring 0 to ``ring`` at ``target`` with an iret frame (eip, cs, eflags, esp)."""
    eflags = (iopl << 12) | (IF if if_ else 0) | extra_flags
    return f"""\
    push {esp}
    push {eflags:#x}
    push {ring}
    push {target}
    iret
"""


_LINE = re.compile(r"^([a-z0-9]+)=([0-9a-f]{8})$")


def parse_dump(console: str) -> dict[str, int]:
    rec: dict[str, int] = {}
    for line in console.splitlines():
        m = _LINE.match(line)
        if m:
            rec[m.group(1)] = int(m.group(2), 16)
    return rec


def run(
    src: str,
    *,
    memory_size: int = DEFAULT_RAM,
    max_instructions: int | None = 200_000,
    input: bytes = b"",
) -> dict[str, Any]:
    """Assemble and run natively; the docs/machine.md JSON dict + ``rec`` (dump lines) + ``sym``."""
    from ringlab.asm import assemble
    from ringlab.machine import run_image

    image = assemble(src)
    result = run_image(image, memory_size=memory_size, max_instructions=max_instructions, input=input)
    out = result.to_json()
    if isinstance(out, (str, bytes)):
        out = json.loads(out)
    out = dict(out)
    out["rec"] = parse_dump(out["console"])
    out["sym"] = dict(image.symbols)
    return out


def regs(src: str, **kw: Any) -> dict[str, int]:
    """Run a program that ends with a power off and return its final registers."""
    r = run(src, **kw)
    assert r["exit"]["reason"] == "poweroff", r["exit"]
    return r["registers"]


def flags(value: int) -> set[str]:
    names = {"CF": CF, "ZF": ZF, "SF": SF, "OF": OF, "IF": IF}
    return {n for n, m in names.items() if value & m}


def arith_flags(value: int) -> set[str]:
    return flags(value) - {"IF"}


def at_ring(ring: int, user_code: str, *, iopl: int = 0, if_: bool = False, pre: str = "", **kw: Any) -> str:
    """A kernel() program that runs ``pre`` at ring 0, then drops to ``ring`` at ``user:``."""
    return kernel(pre + to_ring(ring, "user", iopl=iopl, if_=if_) + "user:\n" + user_code, **kw)


def frame(rec: dict[str, int], *, err: bool) -> dict[str, int]:
    """The interrupt frame the recording handler found on its stack."""
    i = 1 if err else 0
    f = {"eip": rec[f"s{i}"], "cs": rec[f"s{i + 1}"], "eflags": rec[f"s{i + 2}"], "esp": rec[f"s{i + 3}"]}
    if err:
        f["err"] = rec["s0"]
    return f
