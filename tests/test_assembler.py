"""The assembler (ringlab.asm.assemble) against docs/machine.md's "Assembly syntax" and "Precise rules".

Every test shows the program it assembles.  Expected bytes come from ``isa.encode`` so the
tests pin the assembler's syntax, not the encoding (tests/test_isa_table.py pins that).
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from ringlab import isa
from ringlab.asm import assemble, assemble_file
from ringlab.errors import AssemblyError

ORIGIN = 0x1000


def enc(mnemonic: str, form: isa.Form, *operands: isa.Operand) -> bytes:
    return isa.encode(isa.BY_NAME[(mnemonic, form)], operands)


def code(source: str, *, defines: dict[str, int] | None = None) -> bytes:
    return assemble(source, defines=defines).data


def error(source: str, *, filename: str = "t.s", defines: dict[str, int] | None = None) -> AssemblyError:
    with pytest.raises(AssemblyError) as info:
        assemble(source, filename=filename, defines=defines)
    return info.value


# ---------------------------------------------------------------- every form of every mnemonic

_SAMPLE_TEXT = {
    "r": "esi",
    "i": "0x89ABCDEF",
    "i8": "0x80",
    "m": "[ebp - 4]",
    "m8": "byte [0x1234]",
    "cr": "cr3",
    "ecx": "ecx",
    "edx": "edx",
    "cs": "cs",
}
_SAMPLE_VALUE: dict[str, isa.Operand] = {
    "r": 6,
    "i": 0x89ABCDEF,
    "i8": 0x80,
    "m": isa.Mem(5, 0xFFFFFFFC),
    "m8": isa.Mem(None, 0x1234),
    "cr": 3,
}


@pytest.mark.parametrize(
    ("mnemonic", "spec"),
    [(mnemonic, spec) for (mnemonic, _form), spec in isa.BY_NAME.items()],
    ids=[f"{m} {f.value}" for m, f in isa.BY_NAME],
)
def test_every_form_of_every_mnemonic_assembles_to_isa_encode(mnemonic: str, spec: isa.Spec) -> None:
    # e.g.  add [ebp - 4], 0x89ABCDEF     movzx esi, byte [0x1234]     shl esi, ecx
    kinds = isa.FORMS[spec.form].operands
    line = f"{mnemonic} " + ", ".join(_SAMPLE_TEXT[k] for k in kinds)
    expected = isa.encode(spec, tuple(_SAMPLE_VALUE[k] for k in kinds if k in _SAMPLE_VALUE))
    assert code(line) == expected, line


def test_mnemonics_and_registers_are_case_insensitive() -> None:
    assert code("MOV EAX, [Ebx + 8]\nMovZx ecx, BYTE [esi]") == code(
        "mov eax, [ebx + 8]\nmovzx ecx, byte [esi]"
    )


def test_jcc_aliases_share_the_opcode_of_their_canonical_name() -> None:
    # jz = je, jnz = jne, jc = jb, jnc = jae
    target = struct.pack("<I", ORIGIN)
    assert code("t: jz t\njnz t\njc t\njnc t") == b"".join(
        bytes([isa.BY_NAME[(name, isa.Form.I)].opcode]) + target for name in ("je", "jne", "jb", "jae")
    )


def test_form_is_chosen_from_operand_syntax_not_label_values() -> None:
    # `mov eax, label` is always r,i even when the label is defined later.
    image = assemble("mov eax, later\nlater: mov eax, [later]")
    assert image.data == enc("mov", isa.Form.RI, 0, ORIGIN + 6) + enc(
        "mov", isa.Form.RM, 0, isa.Mem(None, ORIGIN + 6)
    )


@pytest.mark.parametrize(
    ("text", "mem"),
    [
        ("[ebx]", isa.Mem(3, 0)),
        ("[ebx + 8]", isa.Mem(3, 8)),
        ("[ebx - 8]", isa.Mem(3, 0xFFFFFFF8)),
        ("[ebx - 4 - 2]", isa.Mem(3, 0xFFFFFFFA)),
        ("[ebx + 2 * 3]", isa.Mem(3, 6)),
        ("[0x2000]", isa.Mem(None, 0x2000)),
        ("[0x2000 + esp]", isa.Mem(4, 0x2000)),
        ("[(1 << 12) + 4 + edi]", isa.Mem(7, 0x1004)),
        ("dword [ecx+1]", isa.Mem(1, 1)),
    ],
)
def test_memory_operand_forms(text: str, mem: isa.Mem) -> None:
    # [reg], [reg + expr], [reg - expr], [expr], [expr + reg] (= [reg + expr])
    assert code(f"mov eax, {text}") == enc("mov", isa.Form.RM, 0, mem)


def test_byte_keyword_selects_movzx_and_byte_store_forms() -> None:
    assert code("movzx eax, byte [esi + 1]\nmov byte [edi], eax") == enc(
        "movzx", isa.Form.RM8, 0, isa.Mem(6, 1)
    ) + enc("mov", isa.Form.M8R, isa.Mem(7, 0), 0)


def test_in_and_out_take_an_immediate_port_or_edx() -> None:
    source = "in eax, 0x3F8\nin ebx, edx\nout 0x3F8, ecx\nout edx, esi"
    assert code(source) == (
        enc("in", isa.Form.RI, 0, 0x3F8)
        + enc("in", isa.Form.REDX, 3)
        + enc("out", isa.Form.IR, 0x3F8, 1)
        + enc("out", isa.Form.EDXR, 6)
    )


def test_shifts_take_an_immediate_or_ecx() -> None:
    assert code("shl eax, 3\nsar edx, ecx") == enc("shl", isa.Form.RI8, 0, 3) + enc("sar", isa.Form.RECX, 2)


def test_control_registers_and_cs() -> None:
    source = "mov cr0, eax\nmov ebx, cr2\nmov cr8, ecx\nmov edx, cs"
    assert code(source) == (
        enc("mov", isa.Form.CRR, 0, 0)
        + enc("mov", isa.Form.RCR, 3, 2)
        + enc("mov", isa.Form.CRR, 8, 1)
        + enc("mov", isa.Form.RCS, 2)
    )


def test_jmp_and_call_take_a_label_or_a_register() -> None:
    assert code("here: jmp here\ncall eax") == enc("jmp", isa.Form.I, ORIGIN) + enc("call", isa.Form.R, 0)


def test_int_takes_an_8_bit_number_and_negative_bytes_wrap() -> None:
    assert code("int 0x80\nint -1") == enc("int", isa.Form.I8, 0x80) + enc("int", isa.Form.I8, 0xFF)


# ---------------------------------------------------------------- labels and symbols


def test_label_may_share_a_line_with_an_instruction() -> None:
    image = assemble("start: nop\nnext: two: ret")
    assert image.data == b"\x80\x64"
    assert image.symbols == {"start": ORIGIN, "next": ORIGIN + 1, "two": ORIGIN + 1}


def test_labels_can_be_used_before_they_are_defined() -> None:
    assert code("jmp end\nnop\nend: hlt") == enc("jmp", isa.Form.I, ORIGIN + 6) + b"\x80\x90"


def test_labels_are_case_sensitive() -> None:
    image = assemble("Loop: nop\nloop: jmp Loop")
    assert image.symbols == {"Loop": ORIGIN, "loop": ORIGIN + 1}
    assert image.data[1:] == enc("jmp", isa.Form.I, ORIGIN)


def test_local_labels_are_scoped_to_previous_global_label() -> None:
    source = """
    first:
    .loop: jmp .loop        ; first.loop
    second:
    .loop: jmp .loop        ; second.loop, no clash
    """
    assert code(source) == enc("jmp", isa.Form.I, ORIGIN) + enc("jmp", isa.Form.I, ORIGIN + 5)


def test_local_label_can_be_named_with_its_scope_from_elsewhere() -> None:
    # first.done is the .done of first
    source = "first:\n.done: nop\nsecond: jmp first.done"
    assert code(source)[1:] == enc("jmp", isa.Form.I, ORIGIN)


def test_symbols_hold_non_local_labels_and_equ_values_only() -> None:
    image = assemble(".equ SIZE, 16\nmain:\n.loop: nop", defines={"DEBUG": 1})
    assert image.symbols == {"SIZE": 16, "main": ORIGIN}


def test_equ_may_name_labels_defined_later() -> None:
    assert code(".equ END, stop + 1\nmov eax, END\nstop: nop")[:6] == enc("mov", isa.Form.RI, 0, ORIGIN + 7)


# ---------------------------------------------------------------- expressions


@pytest.mark.parametrize(
    ("expr", "value"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("1 << 2 + 1", 8),  # + binds tighter than <<
        ("1 | 6 & 3", 3),  # & binds tighter than |
        ("8 >> 1 & 2", 0),  # >> binds tighter than &
        ("-2 * 3", (-6) & 0xFFFFFFFF),
        ("~0", 0xFFFFFFFF),
        ("~0 >> 28", 0xF),  # >> is logical
        ("-7 / 2", (-3) & 0xFFFFFFFF),  # / truncates toward zero
        ("-7 % 2", (-1) & 0xFFFFFFFF),
        ("7 % 3 * 2", 2),
        ("10 - 2 - 3", 5),  # left-associative
        ("100 / 10 / 5", 2),
        ("0xFFFFFFFF + 2", 1),  # 32-bit wrap
        ("0x10000 * 0x10000", 0),
        ("1 << 32", 0),
        ("0b1010 | 0X0f", 0xF),
        ("'A' + 1", 0x42),
        ("'\\n'", 10),
        ("'\\x7f'", 0x7F),
        ("'\\''", 0x27),
        ("010", 10),  # a leading zero is still decimal
    ],
)
def test_expression_precedence_and_semantics_follow_c_with_32_bit_wrap(expr: str, value: int) -> None:
    assert code(f".dword {expr}") == struct.pack("<I", value)


# ---------------------------------------------------------------- directives


def test_empty_program_is_an_empty_image_at_the_origin() -> None:
    image = assemble("; nothing\n")
    assert (image.base, image.data, image.entry, image.symbols) == (ORIGIN, b"", ORIGIN, {})


def test_without_entry_execution_starts_at_the_origin() -> None:
    assert assemble("nop").entry == ORIGIN


def test_entry_names_the_start_label() -> None:
    image = assemble(".entry main\n.byte 1, 2\nmain: hlt")
    assert image.entry == ORIGIN + 2


def test_org_moves_forward_and_the_gap_is_zero_filled() -> None:
    image = assemble("nop\n.org 0x1004\nhlt")
    assert (image.base, image.data) == (ORIGIN, b"\x80\0\0\0\x90")


def test_first_org_sets_the_origin_before_anything_is_placed() -> None:
    image = assemble(".org 0x200\nstart: nop")
    assert (image.base, image.entry, image.symbols["start"]) == (0x200, 0x200, 0x200)


def test_base_is_the_lowest_emitted_address() -> None:
    image = assemble(".org 0x1800\n.org 0x2000\nnop")
    assert image.base == 0x2000 and image.data == b"\x80"


def test_org_never_moves_backwards() -> None:
    err = error(".org 0x1200\nnop\n.org 0x100")
    assert (err.line, err.column) == (3, 6)
    assert err.message == ".org 0x100 would move backwards from 0x1201"


def test_data_directives_store_little_endian_values() -> None:
    assert code(".byte 1, -1, 'a'\n.word 0x1234, -2\n.dword 0x12345678, here\nhere:") == (
        b"\x01\xff\x61" + b"\x34\x12\xfe\xff" + b"\x78\x56\x34\x12" + struct.pack("<I", ORIGIN + 15)
    )


def test_byte_also_takes_strings() -> None:
    assert code('.byte "hi", 0') == b"hi\0"


def test_ascii_and_asciz_take_the_string_escapes() -> None:
    source = r'.ascii "a\n\t\r\0\\\"\x41"' + "\n" + r'.asciz "z", "y"'
    assert code(source) == b'a\n\t\r\0\\"A' + b"z\0y\0"


def test_space_and_align_pad_with_zeros() -> None:
    assert code(".byte 7\n.space 2\n.byte 8\n.align 8\n.byte 9") == b"\x07\0\0\x08\0\0\0\0\x09"


def test_align_when_already_aligned_adds_nothing() -> None:
    assert code(".align 16\nnop") == b"\x80"


def test_equ_defines_a_constant_usable_everywhere() -> None:
    source = ".equ PORT, 0x3F8\n.equ TWICE, PORT * 2\nout PORT, eax\n.dword TWICE"
    assert code(source) == enc("out", isa.Form.IR, 0x3F8, 0) + struct.pack("<I", 0x7F0)


def test_include_is_relative_to_the_including_file(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "defs.s").write_text('.include "more.s"\n.equ ONE, 1\n')
    (tmp_path / "lib" / "more.s").write_text("helper: ret\n")
    (tmp_path / "main.s").write_text('.include "lib/defs.s"\nmov eax, ONE\ncall helper\n')
    image = assemble_file(tmp_path / "main.s")
    assert image.data == b"\x64" + enc("mov", isa.Form.RI, 0, 1) + enc("call", isa.Form.I, ORIGIN)


def test_macros_substitute_parameters() -> None:
    source = """
    .macro outc port, ch
        mov eax, \\ch
        out \\port, eax
    .endm
    outc 0x3F8, 'A'
    """
    assert code(source) == enc("mov", isa.Form.RI, 0, 0x41) + enc("out", isa.Form.IR, 0x3F8, 0)


def test_macro_arguments_may_contain_commas_inside_brackets_and_strings() -> None:
    # (1, 2) stays one argument, so .byte sees "(1, 2)" and rejects it.
    source = '.macro two a, b\n.byte \\a\n.ascii \\b\n.endm\ntwo (1, 2), "x,y"'
    with pytest.raises(AssemblyError, match=r"expected '\)' to close '\(', got ','"):
        assemble(source)
    source = '.macro two a, b\nmov eax, \\a\n.ascii \\b\n.endm\ntwo [ebx + 4], "x,y"'
    assert code(source) == enc("mov", isa.Form.RM, 0, isa.Mem(3, 4)) + b"x,y"


def test_macros_may_invoke_other_macros() -> None:
    source = ".macro one r\ninc \\r\n.endm\n.macro two r\none \\r\none \\r\n.endm\ntwo ecx"
    assert code(source) == enc("inc", isa.Form.R, 1) * 2


def test_macro_unique_counter_makes_labels_unique_per_expansion() -> None:
    # \@ differs in every expansion (GNU as style), so each gets its own .wait label.
    source = """
    .macro spin
    .wait\\@: jmp .wait\\@
    .endm
    main:
        spin
        spin
    """
    assert code(source) == enc("jmp", isa.Form.I, ORIGIN) + enc("jmp", isa.Form.I, ORIGIN + 5)


def test_macro_parameter_can_be_ended_with_empty_parens() -> None:
    source = ".macro lbl name\n\\name\\()_end: nop\n.endm\nlbl loop\njmp loop_end"
    assert assemble(source).symbols["loop_end"] == ORIGIN


def test_string_escapes_survive_inside_macro_bodies() -> None:
    assert code('.macro msg\n.asciz "a\\n"\n.endm\nmsg') == b"a\n\0"


def test_conditionals_pick_a_branch_and_nest() -> None:
    source = """
    .equ LEVEL, 2
    .if LEVEL - 2
        .byte 1
    .else
        .if LEVEL
            .byte 2
            .if 0
                .byte 3
            .else
                .byte 4
            .endif
        .endif
    .endif
    """
    assert code(source) == b"\x02\x04"


def test_skipped_lines_may_hold_anything() -> None:
    assert code('.if 0\n  this is "not assembly\n.endif\nnop') == b"\x80"


def test_ifdef_and_ifndef_test_whether_a_symbol_is_defined() -> None:
    source = ".equ A, 0\n.ifdef A\n.byte 1\n.endif\n.ifndef B\n.byte 2\n.else\n.byte 3\n.endif"
    assert code(source) == b"\x01\x02"


def test_defines_are_symbols_and_select_conditionals() -> None:
    source = ".ifdef DEBUG\n.byte DEBUG\n.endif\n.dword SIZE"
    assert code(source, defines={"DEBUG": 1, "SIZE": 0x20}) == b"\x01\x20\0\0\0"
    assert code(".ifdef DEBUG\n.byte 1\n.endif\n.dword 0") == b"\0\0\0\0"


def test_ifndef_gives_a_default_that_a_define_overrides() -> None:
    source = ".ifndef SIZE\n.equ SIZE, 8\n.endif\n.byte SIZE"
    assert code(source) == b"\x08"
    assert code(source, defines={"SIZE": 3}) == b"\x03"


def test_a_3000_line_program_with_macros_and_local_labels_assembles_whole() -> None:
    lines = [".macro save r", "  push \\r", ".endm"]
    for i in range(500):
        lines += [f"f{i}:", f"  mov eax, [ebx + {i} * 4]", ".l: cmp eax, 0x10 ; c", "  jne .l", "  save eax"]
        lines.append(f"  call f{(i + 1) % 500}")
    image = assemble("\n".join(lines))
    # per function: mov r,m 6 + cmp r,i 6 + jne 5 + push 2 + call 5 = 24 bytes
    assert len(image.data) == 500 * 24
    assert image.symbols["f499"] == 0x1000 + 499 * 24


# ---------------------------------------------------------------- errors: file:line:column and why


@pytest.mark.parametrize(
    ("source", "line", "column", "message"),
    [
        ("mvo eax, 1", 1, 1, "unknown mnemonic 'mvo' (did you mean 'mov'?)"),
        ("nop\njmp loop2", 2, 5, "undefined symbol 'loop2'"),
        ("xchg eax, foo", 1, 11, "expected a register after ',', got 'foo'"),
        ("inc foo", 1, 5, "expected a register or memory operand after 'inc', got 'foo'"),
        (
            "add [eax], [ebx]",
            1,
            1,
            "'add' has no form 'm, m' (no memory-to-memory form); forms: r,r r,i r,m m,r m,i",
        ),
        ("int 300", 1, 5, "immediate 300 does not fit in 8 bits (0..255, or -128..-1)"),
        ("shl eax, -129", 1, 10, "immediate -129 does not fit in 8 bits (0..255, or -128..-1)"),
        ('  .ascii "abc', 1, 10, "unterminated string"),
        ("mov eax, 'a", 1, 10, "unterminated character literal"),
        ('.include "x.s"', 1, 10, ".include file 'x.s' not found (looked for x.s)"),
        (".endif", 1, 1, ".endif without .if"),
        (".else", 1, 1, ".else without .if"),
        (".if 1\n.else\n.else\n.endif", 3, 1, ".else after .else (the .if is at t.s:1:1)"),
        ("  .if 1\nnop", 1, 3, "this .if has no .endif before the end of the file"),
        ("x: nop\n  x: nop", 2, 3, "duplicate label 'x' (first defined at t.s:1:1)"),
        (".equ A, 1\n.equ A, 2", 2, 6, "duplicate symbol 'A' (first defined at t.s:1:6)"),
        ("a:\n.l: nop\n.l: nop", 3, 1, "duplicate label '.l' (first defined at t.s:2:1)"),
        (
            "movzx eax, [ebx]",
            1,
            1,
            "'movzx' has no form 'r, m' (write 'byte [m]' for the byte form); forms: r,m8",
        ),
        ("mov eax, cr4", 1, 10, "cr4 does not exist (RL-32 has cr0, cr2, cr3, cr8)"),
        ("mov eax, [ebx + ecx]", 1, 17, "a memory operand has at most one register"),
        ("mov eax, [ebx", 1, 10, "expected ']' to close '['"),
        ("mov eax, ebx + 1", 1, 14, "expected ',' or end of line after operand 'ebx', got '+'"),
        ("mov eax, 1 +", 1, 13, "expected an expression, got end of line"),
        ("mov eax, (1", 1, 12, "expected ')' to close '(', got end of line"),
        ("mov eax, 1 / (2 - 2)", 1, 12, "division by zero ('/' by 0)"),
        ("mov eax, 12ab", 1, 10, "bad number '12ab' (write decimal, 0x hex or 0b binary)"),
        ("mov eax, 0x100000000", 1, 10, "number 0x100000000 does not fit in 32 bits"),
        ("mov eax, '\\q'", 1, 11, "unknown escape '\\q'"),
        ("mov eax, 'ab'", 1, 10, "character literal 'ab' must hold exactly one character"),
        ("mov eax, #", 1, 10, "unexpected character '#'"),
        ("mov eax, ebx + ", 1, 14, "expected ',' or end of line"),
        ("push", 1, 1, "'push' needs operands; forms: r i"),
        ("ret 4", 1, 1, "'ret' takes no operands"),
        (".space later\nlater:", 1, 8, "undefined symbol 'later' (.space needs symbols defined before it)"),
        (".org here\nhere:", 1, 6, "undefined symbol 'here' (.org needs symbols defined before it)"),
        (".if X\n.endif", 1, 5, "undefined symbol 'X' (.if needs symbols defined before it)"),
        (".align 0", 1, 8, ".align needs a positive boundary"),
        (".byte 256", 1, 7, "value 256 does not fit in 8 bits"),
        (".word 0x10000", 1, 7, "value 65536 does not fit in 16 bits"),
        ('.dword "s"', 1, 8, ".dword takes numbers; strings go in .byte or .ascii"),
        (".equ A, B\n.equ B, A", 2, 9, "symbol 'A' is defined in terms of itself"),
        (".equ A, nowhere", 1, 9, "undefined symbol 'nowhere'"),
        (".entry a\n.entry b", 2, 1, ".entry is given twice (first at t.s:1:1)"),
        (".entry nowhere", 1, 8, "undefined symbol 'nowhere'"),
        (".orgg 1", 1, 1, "unknown directive '.orgg' (did you mean '.org'?)"),
        (".endm", 1, 1, ".endm without .macro"),
        (".macro m\nnop", 1, 1, ".macro m has no .endm"),
        (".macro mov\n.endm", 1, 8, "macro name 'mov' is an instruction or register name"),
        (".macro m a\n.endm\nm", 3, 1, "macro m takes 1 argument(s) (a), got 0"),
        ("eax: nop", 1, 1, "'eax' is a register name and cannot be a label"),
        ("mov eax, ebx", 1, 1, ""),  # sanity: this one assembles (checked below)
        ("nop nop", 1, 1, "'nop' takes no operands"),
        ("nop\n.org 0x100", 2, 6, ".org 0x100 would move backwards from 0x1001"),
        ("mov eax, \\x", 1, 10, "unexpected '\\' (\\name only stands for a parameter inside a .macro body)"),
        (".byte 1,", 1, 9, "expected an expression, got end of line"),
        ("1: nop", 1, 1, "expected a label, mnemonic or directive, got '1'"),
        ("mov byte [eax], 5", 1, 1, "'mov' has no form 'm8, i'"),
    ],
)
def test_errors_point_at_the_offending_token(source: str, line: int, column: int, message: str) -> None:
    if not message:
        assemble(source)
        return
    err = error(source)
    assert (err.file, err.line, err.column) == ("t.s", line, column), str(err)
    assert err.message.startswith(message), err.message
    assert str(err) == f"t.s:{line}:{column}: {err.message}"


def test_errors_in_an_included_file_name_that_file(tmp_path: Path) -> None:
    (tmp_path / "inc.s").write_text("nop\n  mov eax, [ebx\n")
    (tmp_path / "main.s").write_text('nop\n.include "inc.s"\n')
    with pytest.raises(AssemblyError) as info:
        assemble_file(tmp_path / "main.s")
    assert (info.value.file, info.value.line, info.value.column) == (str(tmp_path / "inc.s"), 2, 12)


def test_a_missing_include_is_reported_at_the_include_line(tmp_path: Path) -> None:
    (tmp_path / "main.s").write_text('nop\n.include "gone.s"\n')
    with pytest.raises(AssemblyError) as info:
        assemble_file(tmp_path / "main.s")
    assert (info.value.line, info.value.column) == (2, 10)
    assert info.value.message.startswith(".include file 'gone.s' not found")


def test_recursive_include_hits_the_depth_limit(tmp_path: Path) -> None:
    (tmp_path / "self.s").write_text('.include "self.s"\n')
    with pytest.raises(AssemblyError, match=r"\.include nested deeper than 32"):
        assemble_file(tmp_path / "self.s")


def test_errors_inside_a_macro_name_the_expansion() -> None:
    source = ".macro put v\n  mvo eax, \\v\n.endm\nnop\nput 1"
    err = error(source)
    assert (err.line, err.column) == (2, 3)
    assert err.message == "unknown mnemonic 'mvo' (did you mean 'mov'?) (in macro put expanded at t.s:5)"


def test_recursive_macro_hits_the_depth_limit() -> None:
    err = error(".macro again\nagain\n.endm\nagain")
    assert "macros nested deeper than 64 (does 'again' invoke itself?)" in err.message
    assert "in macro again expanded at t.s:4)" in err.message


def test_conditional_must_close_in_the_file_that_opened_it(tmp_path: Path) -> None:
    (tmp_path / "inc.s").write_text(".endif\n")
    (tmp_path / "main.s").write_text('.if 1\n.include "inc.s"\n.endif\n')
    with pytest.raises(AssemblyError, match=r"inc\.s:1:1: \.endif without \.if"):
        assemble_file(tmp_path / "main.s")


def test_assemble_file_reports_an_unreadable_program(tmp_path: Path) -> None:
    with pytest.raises(AssemblyError, match="cannot read the program"):
        assemble_file(tmp_path / "missing.s")


def test_bad_define_name_is_an_assembly_error() -> None:
    with pytest.raises(AssemblyError, match="-D 1x: not a valid symbol name"):
        assemble("nop", defines={"1x": 1})


def test_equ_of_a_defined_name_is_a_duplicate() -> None:
    err = error(".equ DEBUG, 0", defines={"DEBUG": 1})
    assert err.message == "duplicate symbol 'DEBUG' (first defined at -D DEBUG)"
