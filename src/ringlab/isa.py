"""The RL-32 instruction set as one table.

Every instruction form is declared exactly once, in ``TABLE`` below: its mnemonic, its operand
form, its privilege class and its opcode byte.  The executor, the privilege checks, the
assembler, the disassembler, the documentation (``docs/isa.md``) and the table-driven tests all
read this table; nothing else lists instructions.

Encoding (see docs/isa.md): one opcode byte names mnemonic *and* operand form, followed by a
fixed layout per form (``FORMS``).  Register bytes hold a register number 0-7 (``eax`` = 0 ...
``edi`` = 7, in x86 order); a memory operand is a byte ``reg << 4 | base`` (base 8 = no base
register, an absolute address) followed by a 32-bit little-endian displacement.  Jump and call
targets are absolute 32-bit addresses.  Opcode 0x00 is undefined, so executing zeroed memory
raises #UD.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "REGISTERS",
    "CONTROL_REGISTERS",
    "JCC",
    "Class",
    "Form",
    "FORMS",
    "Spec",
    "TABLE",
    "BY_OPCODE",
    "BY_NAME",
    "Mem",
    "Instruction",
    "encode",
    "decode",
    "EFLAGS",
    "MASK32",
]

MASK32 = 0xFFFFFFFF

REGISTERS: tuple[str, ...] = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
"""Register names in x86 numbering order (the number is the encoding)."""

CONTROL_REGISTERS: tuple[int, ...] = (0, 2, 3, 8)
"""The control registers RL-32 has: cr0, cr2, cr3, cr8."""

NO_BASE = 8
"""Base nibble of a memory operand that has no base register (``[expr]``)."""


class EFLAGS:
    """Bit masks of the architectural flags (docs/machine.md, State)."""

    CF = 1 << 0
    ZF = 1 << 6
    SF = 1 << 7
    IF = 1 << 9
    OF = 1 << 11
    IOPL = 3 << 12
    IOPL_SHIFT = 12
    MASK = CF | ZF | SF | IF | OF | IOPL
    """Bits that exist; every other bit reads as 0."""


class Class(enum.Enum):
    """Privilege classes of docs/machine.md's "Instruction classes" table."""

    INNOCUOUS = "innocuous"
    PRIVILEGED = "privileged"
    """#GP(0) at CPL > 0."""
    IOPL = "iopl-sensitive"
    """#GP(0) when CPL > IOPL."""
    SENSITIVE = "sensitive-unprivileged"
    """Runs at any CPL but shows or silently ignores privileged state (the x86 flaw)."""
    CONTROL = "control"
    """``int n`` and ``iret``: their checks are part of the event machinery."""
    VIRTUALIZATION = "virtualization"
    """``vmcall``: #UD unless in VMX non-root mode."""


class Form(enum.Enum):
    """Operand forms.  The value is the form's name as used in the table and docs."""

    NONE = ""
    R = "r"
    I = "i"
    I8 = "i8"
    M = "m"
    RR = "r,r"
    RI = "r,i"
    RM = "r,m"
    MR = "m,r"
    MI = "m,i"
    RM8 = "r,m8"
    M8R = "m8,r"
    RI8 = "r,i8"
    RECX = "r,ecx"
    REDX = "r,edx"
    IR = "i,r"
    EDXR = "edx,r"
    RCR = "r,cr"
    CRR = "cr,r"
    RCS = "r,cs"


@dataclass(frozen=True)
class FormLayout:
    """How a form is laid out after the opcode byte."""

    length: int
    """Total instruction length in bytes, opcode included."""
    operands: tuple[str, ...]
    """Operand kinds in assembly order: 'r' register, 'i' imm32, 'i8' imm8, 'm' memory,
    'm8' byte memory, 'cr' control register, and fixed operands 'ecx', 'edx', 'cs'."""


FORMS: dict[Form, FormLayout] = {
    Form.NONE: FormLayout(1, ()),
    Form.R: FormLayout(2, ("r",)),
    Form.I: FormLayout(5, ("i",)),
    Form.I8: FormLayout(2, ("i8",)),
    Form.M: FormLayout(6, ("m",)),
    Form.RR: FormLayout(2, ("r", "r")),
    Form.RI: FormLayout(6, ("r", "i")),
    Form.RM: FormLayout(6, ("r", "m")),
    Form.MR: FormLayout(6, ("m", "r")),
    Form.MI: FormLayout(10, ("m", "i")),
    Form.RM8: FormLayout(6, ("r", "m8")),
    Form.M8R: FormLayout(6, ("m8", "r")),
    Form.RI8: FormLayout(3, ("r", "i8")),
    Form.RECX: FormLayout(2, ("r", "ecx")),
    Form.REDX: FormLayout(2, ("r", "edx")),
    Form.IR: FormLayout(6, ("i", "r")),
    Form.EDXR: FormLayout(2, ("edx", "r")),
    Form.RCR: FormLayout(2, ("r", "cr")),
    Form.CRR: FormLayout(2, ("cr", "r")),
    Form.RCS: FormLayout(2, ("r", "cs")),
}


@dataclass(frozen=True)
class Spec:
    """One row of the table: one mnemonic in one operand form."""

    opcode: int
    mnemonic: str
    form: Form
    cls: Class
    summary: str

    @property
    def length(self) -> int:
        return FORMS[self.form].length


JCC: dict[str, str] = {
    # mnemonic -> condition (canonical name); jc/jnc and jz/jnz are aliases
    "je": "e",
    "jz": "e",
    "jne": "ne",
    "jnz": "ne",
    "jl": "l",
    "jle": "le",
    "jg": "g",
    "jge": "ge",
    "jb": "b",
    "jc": "b",
    "jbe": "be",
    "ja": "a",
    "jae": "ae",
    "jnc": "ae",
    "js": "s",
    "jns": "ns",
    "jo": "o",
    "jno": "no",
}
"""Conditional jumps.  Aliases share one opcode; the disassembler prints the first name."""

_I, _P, _IO, _S, _C, _V = (
    Class.INNOCUOUS,
    Class.PRIVILEGED,
    Class.IOPL,
    Class.SENSITIVE,
    Class.CONTROL,
    Class.VIRTUALIZATION,
)
F = Form

# (opcode, mnemonic, form, class, summary).  Opcodes are grouped by family; 0x00 stays undefined.
_ROWS: list[tuple[int, str, Form, Class, str]] = [
    # data movement
    (0x01, "mov", F.RR, _I, "r1 = r2"),
    (0x02, "mov", F.RI, _I, "r = imm"),
    (0x03, "mov", F.RM, _I, "r = dword [m]"),
    (0x04, "mov", F.MR, _I, "dword [m] = r"),
    (0x05, "mov", F.MI, _I, "dword [m] = imm"),
    (0x06, "movzx", F.RM8, _I, "r = zero-extended byte [m]"),
    (0x07, "mov", F.M8R, _I, "byte [m] = low byte of r"),
    (0x08, "lea", F.RM, _I, "r = address of [m]"),
    (0x09, "xchg", F.RR, _I, "swap r1 and r2"),
    (0x0A, "push", F.R, _I, "esp -= 4; dword [esp] = r"),
    (0x0B, "push", F.I, _I, "esp -= 4; dword [esp] = imm"),
    (0x0C, "pop", F.R, _I, "r = dword [esp]; esp += 4"),
    # arithmetic and logic: add sub and or xor cmp test, each r,r r,i r,m m,r m,i
    *[
        (base + k, name, form, _I, summary)
        for base, name, summary in (
            (0x10, "add", "dst += src"),
            (0x18, "sub", "dst -= src"),
            (0x20, "and", "dst &= src"),
            (0x28, "or", "dst |= src"),
            (0x30, "xor", "dst ^= src"),
            (0x38, "cmp", "flags of dst - src"),
            (0x40, "test", "flags of dst & src"),
        )
        for k, form in enumerate((F.RR, F.RI, F.RM, F.MR, F.MI))
    ],
    (0x48, "imul", F.RR, _I, "r1 = low 32 bits of r1 * r2 (signed)"),
    (0x49, "imul", F.RI, _I, "r = low 32 bits of r * imm (signed)"),
    (0x4A, "imul", F.RM, _I, "r = low 32 bits of r * dword [m] (signed)"),
    (0x4B, "div", F.R, _I, "eax = eax / r, edx = eax % r (unsigned); #DE on 0"),
    (0x50, "inc", F.R, _I, "r += 1 (CF kept)"),
    (0x51, "inc", F.M, _I, "dword [m] += 1 (CF kept)"),
    (0x52, "dec", F.R, _I, "r -= 1 (CF kept)"),
    (0x53, "dec", F.M, _I, "dword [m] -= 1 (CF kept)"),
    (0x54, "neg", F.R, _I, "r = -r"),
    (0x55, "neg", F.M, _I, "dword [m] = -dword [m]"),
    (0x56, "not", F.R, _I, "r = ~r (flags kept)"),
    (0x57, "not", F.M, _I, "dword [m] = ~dword [m] (flags kept)"),
    (0x58, "shl", F.RI8, _I, "r <<= imm & 31"),
    (0x59, "shl", F.RECX, _I, "r <<= ecx & 31"),
    (0x5A, "shr", F.RI8, _I, "r >>= imm & 31 (logical)"),
    (0x5B, "shr", F.RECX, _I, "r >>= ecx & 31 (logical)"),
    (0x5C, "sar", F.RI8, _I, "r >>= imm & 31 (arithmetic)"),
    (0x5D, "sar", F.RECX, _I, "r >>= ecx & 31 (arithmetic)"),
    # control flow
    (0x60, "jmp", F.I, _I, "eip = target"),
    (0x61, "jmp", F.R, _I, "eip = r"),
    (0x62, "call", F.I, _I, "push eip of next; eip = target"),
    (0x63, "call", F.R, _I, "push eip of next; eip = r"),
    (0x64, "ret", F.NONE, _I, "eip = pop"),
    *[
        (0x70 + k, "j" + cond, F.I, _I, f"jump if {cond}")
        for k, cond in enumerate(
            ("e", "ne", "l", "le", "g", "ge", "b", "be", "a", "ae", "s", "ns", "o", "no")
        )
    ],
    (0x80, "nop", F.NONE, _I, "nothing"),
    (0x81, "rdtsc", F.NONE, _I, "edx:eax = virtual time"),
    (0x82, "cpuid", F.NONE, _I, "identification leaves (eax = leaf)"),
    # privileged
    (0x90, "hlt", F.NONE, _P, "wait for an interrupt (IF = 1) or stop"),
    (0x91, "lgdt", F.M, _P, "gdtr = 6-byte descriptor at [m]"),
    (0x92, "lidt", F.M, _P, "idtr = 6-byte descriptor at [m]"),
    (0x93, "ltr", F.R, _P, "tr = r"),
    (0x94, "lmsw", F.R, _P, "low 16 bits of cr0 = r (only WP/PG exist, PE stays 1)"),
    (0x95, "invlpg", F.M, _P, "drop the TLB entry of the address [m] names"),
    (0x96, "mov", F.CRR, _P, "crN = r"),
    (0x97, "mov", F.RCR, _P, "r = crN"),
    # IOPL-sensitive
    (0xA0, "cli", F.NONE, _IO, "IF = 0"),
    (0xA1, "sti", F.NONE, _IO, "IF = 1"),
    (0xA2, "in", F.RI, _IO, "r = port imm"),
    (0xA3, "in", F.REDX, _IO, "r = port edx"),
    (0xA4, "out", F.IR, _IO, "port imm = r"),
    (0xA5, "out", F.EDXR, _IO, "port edx = r"),
    # sensitive, unprivileged
    (0xB0, "pushf", F.NONE, _S, "push eflags (the real IF shows)"),
    (0xB1, "popf", F.NONE, _S, "eflags = pop (IF kept when CPL > IOPL, IOPL kept when CPL > 0)"),
    (0xB2, "sgdt", F.M, _S, "6-byte descriptor at [m] = gdtr"),
    (0xB3, "sidt", F.M, _S, "6-byte descriptor at [m] = idtr"),
    (0xB4, "str", F.R, _S, "r = tr"),
    (0xB5, "smsw", F.R, _S, "r = low 16 bits of cr0"),
    (0xB6, "mov", F.RCS, _S, "r = cs (the real CPL shows)"),
    # control transfer
    (0xC0, "int", F.I8, _C, "software interrupt through the IDT gate n"),
    (0xC1, "iret", F.NONE, _C, "return from an interrupt"),
    # virtualization
    (0xD0, "vmcall", F.NONE, _V, "VM exit in VMX non-root mode, else #UD"),
]

TABLE: tuple[Spec, ...] = tuple(Spec(op, mn, form, cls, summary) for op, mn, form, cls, summary in _ROWS)

BY_OPCODE: dict[int, Spec] = {}
BY_NAME: dict[tuple[str, Form], Spec] = {}
for _spec in TABLE:
    assert _spec.opcode not in BY_OPCODE, f"opcode {_spec.opcode:#x} declared twice"
    BY_OPCODE[_spec.opcode] = _spec
    BY_NAME[(_spec.mnemonic, _spec.form)] = _spec
for _alias, _cond in JCC.items():
    BY_NAME.setdefault((_alias, Form.I), BY_NAME[("j" + _cond, Form.I)])

MNEMONICS: frozenset[str] = frozenset(m for m, _ in BY_NAME)
"""Every mnemonic the assembler accepts (aliases included)."""


class Mem(NamedTuple):
    """A memory operand: ``[base + disp]``; base is a register number or None."""

    base: int | None
    disp: int


Operand = int | Mem
"""Register numbers, control-register numbers and immediates are ints; memory is ``Mem``."""


class Instruction(NamedTuple):
    """A decoded (or to-be-encoded) instruction."""

    spec: Spec
    operands: tuple[Operand, ...]
    """One entry per *variable* operand of the form, in assembly order (fixed operands such as
    ``ecx``, ``edx`` and ``cs`` are not listed)."""

    @property
    def length(self) -> int:
        return self.spec.length

    @property
    def mnemonic(self) -> str:
        return self.spec.mnemonic


_FIXED = frozenset({"ecx", "edx", "cs"})


def _mem_byte(reg: int, mem: Mem) -> int:
    return (reg << 4) | (NO_BASE if mem.base is None else mem.base)


def encode(spec: Spec, operands: tuple[Operand, ...]) -> bytes:
    """Encode one instruction.  Operands as in ``Instruction.operands``; immediates are taken
    modulo 2**32 (2**8 for imm8).  Raises ValueError for operands that do not fit the form."""
    kinds = [k for k in FORMS[spec.form].operands if k not in _FIXED]
    if len(kinds) != len(operands):
        raise ValueError(f"{spec.mnemonic} {spec.form.value} takes {len(kinds)} operands")
    regs: list[int] = []
    crs: list[int] = []
    imms: list[int] = []
    imm8s: list[int] = []
    mem: Mem | None = None
    for kind, op in zip(kinds, operands, strict=True):
        if isinstance(op, Mem):
            if kind not in ("m", "m8"):
                raise ValueError(f"{spec.mnemonic} {spec.form.value}: a memory operand where {kind} belongs")
            mem = op
        elif kind == "r":
            if not 0 <= op < 8:
                raise ValueError(f"bad register number {op!r}")
            regs.append(op)
        elif kind == "cr":
            if op not in CONTROL_REGISTERS:
                raise ValueError(f"cr{op} does not exist (RL-32 has cr0, cr2, cr3, cr8)")
            crs.append(op)
        elif kind == "i":
            imms.append(op & MASK32)
        elif kind == "i8":
            imm8s.append(op & 0xFF)
        else:
            raise ValueError(f"{spec.mnemonic} {spec.form.value}: operand {op!r} is not a memory operand")
    out = bytearray([spec.opcode])
    if mem is not None:
        out.append(_mem_byte(regs[0] if regs else 0, mem))
        out += struct.pack("<I", mem.disp & MASK32)
    elif crs:
        out.append((regs[0] << 4) | crs[0])
    elif len(regs) == 2:
        out.append((regs[0] << 4) | regs[1])
    elif regs:
        out.append(regs[0])
    for imm in imms:
        out += struct.pack("<I", imm)
    out += bytes(imm8s)
    assert len(out) == spec.length, (spec, len(out))
    return bytes(out)


def decode(code: bytes | bytearray | memoryview, offset: int = 0) -> Instruction | None:
    """Decode the instruction at ``offset``.  Returns None when the bytes are not a valid
    instruction (undefined opcode, too few bytes, or reserved bits set): the CPU raises #UD,
    the disassembler prints ``.byte``."""
    if offset >= len(code):
        return None
    spec = BY_OPCODE.get(code[offset])
    if spec is None or offset + spec.length > len(code):
        return None
    b = code[offset + 1] if spec.length > 1 else 0
    form = spec.form
    ops: tuple[Operand, ...]
    if form is Form.NONE:
        ops = ()
    elif form in (Form.R, Form.RECX, Form.REDX, Form.EDXR, Form.RCS):
        if b > 7:
            return None
        ops = (b,)
    elif form is Form.RR:
        ops = (b >> 4, b & 15)
        if ops[0] > 7 or ops[1] > 7:
            return None
    elif form in (Form.RCR, Form.CRR):
        r, c = b >> 4, b & 15
        if r > 7 or c not in CONTROL_REGISTERS:
            return None
        ops = (r, c) if form is Form.RCR else (c, r)
    elif form is Form.I8:
        ops = (b,)
    elif form is Form.RI8:
        if b > 7:
            return None
        ops = (b, code[offset + 2])
    elif form is Form.I:
        ops = (struct.unpack_from("<I", code, offset + 1)[0],)
    elif form in (Form.RI, Form.IR):
        if b > 7:
            return None
        imm = struct.unpack_from("<I", code, offset + 2)[0]
        ops = (b, imm) if form is Form.RI else (imm, b)
    else:  # memory forms
        reg, base = b >> 4, b & 15
        if reg > 7 or base > NO_BASE:
            return None
        mem = Mem(None if base == NO_BASE else base, struct.unpack_from("<I", code, offset + 2)[0])
        if form in (Form.M, Form.MI):
            if reg:
                return None
            ops = (mem,) if form is Form.M else (mem, struct.unpack_from("<I", code, offset + 6)[0])
        elif form in (Form.RM, Form.RM8):
            ops = (reg, mem)
        else:  # MR, M8R
            ops = (mem, reg)
    return Instruction(spec, ops)
