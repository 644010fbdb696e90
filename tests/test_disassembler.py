"""The disassembler (ringlab.asm.disassemble, format_instruction).

The contract: the text it prints assembles back to exactly the same bytes, base and entry,
whatever the image holds.  Each test shows the program it disassembles.
"""

from __future__ import annotations

import random

import pytest

from ringlab import isa
from ringlab.asm import assemble, disassemble, format_instruction
from ringlab.image import Image


def round_trip(image: Image) -> str:
    text = disassemble(image)
    again = assemble(text)
    assert (again.base, again.data, again.entry) == (image.base, image.data, image.entry), text
    return text


def body(text: str) -> list[str]:
    """The instruction and label lines, without address comments."""
    lines = [line.split(";")[0].rstrip() for line in text.splitlines()]
    return [line.strip() for line in lines if line and not line.startswith((".org", ".entry"))]


# ---------------------------------------------------------------- format_instruction


@pytest.mark.parametrize(
    ("source", "text"),
    [
        ("mov eax, [ebx + 8]", "mov eax, [ebx + 8]"),
        ("mov eax, [ebx - 8]", "mov eax, [ebx - 8]"),
        ("mov eax, [ebx + 0x1000]", "mov eax, [ebx + 0x1000]"),
        ("mov [0x2000], 5", "mov [0x2000], 5"),
        ("mov byte [esi], ecx", "mov byte [esi], ecx"),
        ("movzx eax, byte [0x10 + edi]", "movzx eax, byte [edi + 16]"),
        ("add esp, -4", "add esp, -4"),
        ("mov eax, 0xDEADBEEF", "mov eax, 0xdeadbeef"),
        ("shl eax, ecx", "shl eax, ecx"),
        ("sar edx, 31", "sar edx, 31"),
        ("in eax, edx", "in eax, edx"),
        ("out 0x3f8, eax", "out 0x3f8, eax"),
        ("out edx, eax", "out edx, eax"),
        ("mov cr3, eax", "mov cr3, eax"),
        ("mov eax, cr2", "mov eax, cr2"),
        ("mov eax, cs", "mov eax, cs"),
        ("int 0x80", "int 128"),
        ("jz 0x1234", "je 0x1234"),
        ("invlpg [eax]", "invlpg [eax]"),
        ("LGDT [0x3000]", "lgdt [0x3000]"),
        ("iret", "iret"),
    ],
)
def test_format_instruction_prints_lowercase_intel_syntax(source: str, text: str) -> None:
    insn = isa.decode(assemble(source).data)
    assert insn is not None
    assert format_instruction(insn) == text


def test_format_instruction_names_branch_targets_from_labels() -> None:
    insn = isa.decode(assemble("call 0x1000").data)
    assert insn is not None
    assert format_instruction(insn, {0x1000: "main"}) == "call main"


_SAMPLES: dict[str, list[isa.Operand]] = {
    "r": [0, 7],
    "i": [0, 255, 256, 0x7FFFFFFF, 0x80000000, 0xFFFFFF00, 0xFFFFFFFF],
    "i8": [0, 0x7F, 0xFF],
    "m": [isa.Mem(None, 0), isa.Mem(3, 0x80000000), isa.Mem(5, 0xFFFFFFFF), isa.Mem(4, 300)],
    "m8": [isa.Mem(None, 0xFFFFFFFF), isa.Mem(6, 1)],
    "cr": [0, 8],
}


@pytest.mark.parametrize("spec", isa.TABLE, ids=lambda s: f"{s.mnemonic} {s.form.value}")
def test_every_form_formats_to_text_that_assembles_to_the_same_bytes(spec: isa.Spec) -> None:
    kinds = [k for k in isa.FORMS[spec.form].operands if k in _SAMPLES]
    for i in range(max((len(_SAMPLES[k]) for k in kinds), default=1)):
        operands = tuple(_SAMPLES[k][i % len(_SAMPLES[k])] for k in kinds)
        encoded = isa.encode(spec, operands)
        insn = isa.decode(encoded)
        assert insn is not None
        assert assemble(format_instruction(insn)).data == encoded, format_instruction(insn)


# ---------------------------------------------------------------- whole images


def test_disassembly_has_org_entry_labels_and_address_comments() -> None:
    text = round_trip(assemble(".entry main\nmain: mov eax, [ebx + 8]\njmp main"))
    lines = text.splitlines()
    assert ".org 0x1000" in lines and ".entry main" in lines
    assert "    mov eax, [ebx + 8]          ; 0x1000" in lines
    assert "    jmp main                    ; 0x1006" in lines


def test_jump_targets_without_symbols_get_generated_labels() -> None:
    source = """
    start:  mov ecx, 3
    .again: dec ecx
            jne .again
            hlt
    """
    text = round_trip(assemble(source))
    assert body(text) == ["start:", "mov ecx, 3", "L_1006:", "dec ecx", "jne L_1006", "hlt"]


def test_image_symbols_name_labels_and_data() -> None:
    source = '.entry main\nmsg: .asciz "ok"\nmain: mov esi, msg\nhlt'
    text = round_trip(assemble(source))
    assert body(text)[:3] == ["msg:", ".byte 0x6f, 0x6b, 0x00", "main:"]


def test_undecodable_bytes_become_byte_directives() -> None:
    image = Image(base=0x2000, data=bytes([0x00, 0xFF, 0x80, 0x01, 0x99]), entry=0x2002)
    text = round_trip(image)
    # 0x01 = mov r,r needs a register byte: 0x99 has register numbers above 7.
    assert body(text) == [".byte 0x00, 0xff", "L_2002:", "nop", ".byte 0x01, 0x99"]


def test_a_truncated_instruction_at_the_end_is_bytes() -> None:
    image = Image(base=0x1000, data=bytes([0x80, 0x02, 0x00, 0x01]), entry=0x1000)
    assert body(round_trip(image))[-1] == ".byte 0x02, 0x00, 0x01"


def test_data_in_the_middle_round_trips() -> None:
    source = """
    .entry main
    main:   mov esi, table
            jmp after
    table:  .dword 1, 2, 0xFFFFFFFF
            .byte 2, 0, 0x10         ; looks like the start of `mov eax, imm`
    after:  movzx eax, byte [esi]
            .space 40
            .align 16
    tail:   ret
    """
    text = round_trip(assemble(source))
    assert "after:" in body(text) and "tail:" in body(text)
    assert any(line.startswith(".space") for line in body(text))


def test_data_that_decodes_does_not_swallow_a_jump_target() -> None:
    # The byte 0x02 starts a 6-byte `mov r, imm` that would cover `target`; the disassembler
    # must print it as a byte so the label lands on the nop.
    source = "jmp target\n.byte 0x02\ntarget: nop\nnop\nnop\nnop\nnop\nnop"
    text = round_trip(assemble(source))
    assert body(text)[:5] == ["L_1000:", "jmp target", ".byte 0x02", "target:", "nop"]


def test_jump_into_the_middle_of_an_instruction_splits_it_into_bytes() -> None:
    # jmp 0x1006 lands inside `mov eax, 0x80808080`: its last bytes are executable nops.
    source = "jmp 0x1007\nmov eax, 0x80808080"
    text = round_trip(assemble(source))
    assert "L_1007:" in body(text)


def test_targets_outside_the_image_stay_numbers() -> None:
    text = round_trip(assemble("call 0x8000\njmp 0x10"))
    assert body(text) == ["L_1000:", "call 0x8000", "jmp 16"]  # L_1000 is the entry


def test_entry_outside_labels_and_at_the_end_of_the_image() -> None:
    round_trip(Image(base=0x1000, data=b"\x80\x80", entry=0x1002))
    round_trip(Image(base=0x1000, data=b"\x80\x80", entry=0x9999))
    round_trip(Image(base=0x1000, data=b"\x80\x80", entry=0x1001, symbols={"eax": 0x1001, "1bad": 0x1000}))


def test_empty_image_round_trips() -> None:
    round_trip(Image(base=0x4000, data=b"", entry=0x4000))


def test_lowercase_label_names_win_over_constants_at_the_same_address() -> None:
    # .equ PAGE, 0x1000 and kernel_entry: both name 0x1000; the label reads better.
    image = assemble(".equ PAGE, 0x1000\n.equ ABC, 0x1000\nkernel_entry: jmp kernel_entry")
    assert body(round_trip(image)) == ["kernel_entry:", "jmp kernel_entry"]


def test_generated_names_avoid_existing_symbols() -> None:
    image = Image(
        base=0x1000, data=bytes.fromhex("60 05 10 00 00 80 80"), entry=0x1000, symbols={"L_1005": 0x1006}
    )
    text = round_trip(image)
    assert "L_1005_:" in body(text)


def test_a_gap_left_by_org_round_trips() -> None:
    round_trip(assemble("nop\n.org 0x1100\nhlt"))


def test_random_images_round_trip() -> None:
    rng = random.Random(1234)
    opcodes = [spec.opcode for spec in isa.TABLE]
    for _ in range(150):
        data = bytearray(rng.randrange(256) for _ in range(rng.randrange(1, 80)))
        for i in range(0, len(data), 7):  # plenty of real opcodes, so plenty decodes
            data[i] = rng.choice(opcodes)
        entry = 0x3000 + rng.randrange(len(data) + 1)
        round_trip(Image(base=0x3000, data=bytes(data), entry=entry))


def test_a_program_with_everything_round_trips() -> None:
    source = """
    .equ PORT, 0x3F8
    .entry start
    .org 0x2000
    gdt:    .dword 0, 0
    gdtr:   .word 15
            .dword gdt
    start:  lgdt [gdtr]
            mov eax, cr0
            or eax, 0x80000000
            mov cr0, eax
            mov esi, msg
    .next:  movzx eax, byte [esi]
            test eax, eax
            jz .done
            out PORT, eax
            inc esi
            jmp .next
    .done:  push start
            pushf
            popf
            mov eax, cs
            in eax, 0x40
            int 32
            call eax
    msg:    .asciz "done\\n"
    """
    round_trip(assemble(source))
