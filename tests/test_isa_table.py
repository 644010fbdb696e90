"""The instruction table (src/ringlab/isa.py) against docs/machine.md, its encoding, and docs/isa.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from ringlab import isa
from ringlab.cli.isa_doc import isa_markdown

ROOT = Path(__file__).resolve().parents[1]

# docs/machine.md, "Instruction classes", copied literally: the table must classify exactly these.
ISA_MD_CLASSES = {
    isa.Class.INNOCUOUS: "mov movzx lea push pop xchg add sub and or xor not neg inc dec cmp test shl shr sar "
    "imul div jmp call ret nop rdtsc cpuid je jne jl jle jg jge jb jbe ja jae js jns jo jno",
    isa.Class.PRIVILEGED: "hlt lgdt lidt ltr lmsw invlpg mov",
    isa.Class.IOPL: "cli sti in out",
    isa.Class.SENSITIVE: "pushf popf sgdt sidt smsw str mov",
    isa.Class.CONTROL: "int iret",
    isa.Class.VIRTUALIZATION: "vmcall",
}


def _sample_operands(spec: isa.Spec) -> tuple[isa.Operand, ...]:
    samples: dict[str, isa.Operand] = {
        "r": 6,
        "i": 0x89ABCDEF,
        "i8": 0x80,
        "m": isa.Mem(5, 0xFFFFFFFC),
        "m8": isa.Mem(None, 0x1234),
        "cr": 3,
    }
    return tuple(samples[k] for k in isa.FORMS[spec.form].operands if k in samples)


def test_every_class_of_isa_md_is_the_table_class() -> None:
    for cls, names in ISA_MD_CLASSES.items():
        in_table = {s.mnemonic for s in isa.TABLE if s.cls is cls}
        assert in_table == set(names.split()), cls


def test_mov_to_and_from_control_registers_is_privileged_and_mov_from_cs_is_sensitive() -> None:
    assert isa.BY_NAME[("mov", isa.Form.CRR)].cls is isa.Class.PRIVILEGED
    assert isa.BY_NAME[("mov", isa.Form.RCR)].cls is isa.Class.PRIVILEGED
    assert isa.BY_NAME[("mov", isa.Form.RCS)].cls is isa.Class.SENSITIVE


@pytest.mark.parametrize("spec", isa.TABLE, ids=lambda s: f"{s.mnemonic}_{s.form.value or 'none'}")
def test_every_form_encodes_to_its_length_and_decodes_back(spec: isa.Spec) -> None:
    ops = _sample_operands(spec)
    code = isa.encode(spec, ops)
    assert len(code) == spec.length == isa.FORMS[spec.form].length
    assert isa.decode(code) == isa.Instruction(spec, ops)


def test_opcode_zero_is_undefined_so_zeroed_memory_raises_ud() -> None:
    assert isa.decode(bytes(16)) is None


@pytest.mark.parametrize(
    "code",
    [
        bytes([0x01, 0x08]),  # mov r,r with a register number above 7 in the high nibble
        bytes([0x03, 0x09, 0, 0, 0, 0]),  # base 9 does not exist
        bytes([0x91, 0x15, 0, 0, 0, 0]),  # lgdt [m] with a register nibble set
        bytes([0x96, 0x01]),  # mov cr1, eax: RL-32 has no cr1
        bytes([0x02, 0x00, 0x01]),  # mov r,i cut short
    ],
)
def test_reserved_bits_and_short_encodings_are_not_instructions(code: bytes) -> None:
    assert isa.decode(code) is None


def test_jcc_aliases_share_the_opcode_of_their_canonical_name() -> None:
    assert isa.BY_NAME[("jz", isa.Form.I)] is isa.BY_NAME[("je", isa.Form.I)]
    assert isa.BY_NAME[("jc", isa.Form.I)] is isa.BY_NAME[("jb", isa.Form.I)]
    assert isa.BY_NAME[("jnc", isa.Form.I)] is isa.BY_NAME[("jae", isa.Form.I)]


def test_docs_isa_md_carries_the_table_generated_from_isa_py() -> None:
    text = (ROOT / "docs" / "isa.md").read_text()
    assert isa_markdown() in text, "docs/isa.md drifted from isa.py: regenerate with 'ringlab isa --markdown'"
