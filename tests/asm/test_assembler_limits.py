"""The assembler always answers: the inputs a fuzzing run found crashing or hanging it (issue 14),
each pinned by name, and the limits that bound its work (ringlab.asm.limits; docs/assembly.md,
"Limits").

Every input here either assembles (it is legitimate) or raises ``AssemblyError`` naming
file:line:column and the limit with its value.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from ringlab.asm import assemble, assemble_file
from ringlab.asm.limits import (
    MAX_CONDITIONAL_DEPTH,
    MAX_EXPANDED_BYTES,
    MAX_EXPRESSION_DEPTH,
    MAX_IMAGE_BYTES,
    MAX_INCLUDE_DEPTH,
    MAX_MACRO_DEPTH,
    MAX_SOURCE_BYTES,
    size_text,
)
from ringlab.cli.exitstatus import EXIT_USAGE
from ringlab.cli.main import main
from ringlab.errors import AssemblyError


def error(source: str, *, filename: str = "t.s") -> AssemblyError:
    with pytest.raises(AssemblyError) as info:
        assemble(source, filename=filename)
    return info.value


def file_error(path: Path) -> AssemblyError:
    with pytest.raises(AssemblyError) as info:
        assemble_file(path)
    return info.value


def where(err: AssemblyError) -> tuple[str, int, int]:
    return (err.file, err.line, err.column)


DEPTH = (
    f"expression nested deeper than {MAX_EXPRESSION_DEPTH} levels of parentheses and unary operators"
    " (give a part a name with .equ)"
)
EXPANDED = (
    f"macro expansions and repeated .includes add more than {size_text(MAX_EXPANDED_BYTES)} of text in all"
)
CONDITIONALS = f"conditionals nested deeper than {MAX_CONDITIONAL_DEPTH}"


# ---------------------------------------------------------------- the fuzzing run's crashes and hangs


def test_500_nested_parentheses_are_an_expression_depth_error() -> None:
    err = error("mov eax, " + "(" * 500 + "1" + ")" * 500)
    assert where(err) == ("t.s", 1, 10 + MAX_EXPRESSION_DEPTH)  # the 65th '('
    assert err.message == DEPTH


def test_a_1000_term_sum_assembles() -> None:
    terms = "+".join(["1"] * 1000)
    image = assemble(f".equ N, {terms}\n.if {terms}\n.dword N, {terms}, LATER\n.endif\n.equ LATER, {terms}")
    assert image.data == struct.pack("<3I", 1000, 1000, 1000)


@pytest.mark.parametrize(
    ("op", "value"),
    [("-", (1 - 999) & 0xFFFFFFFF), ("*", 1), ("/", 1), ("%", 0), ("&", 1), ("|", 1), ("<<", 1), (">>", 1)],
)
def test_a_1000_term_chain_of_one_binary_operator_assembles(op: str, value: int) -> None:
    right = "0" if op in ("<<", ">>") else "1"
    image = assemble(".dword 1" + f" {op} {right}" * 999)
    assert image.data == struct.pack("<I", value)


@pytest.mark.parametrize("count", [300, 5000])
def test_chained_equ_that_name_later_symbols_assemble(count: int) -> None:
    lines = [f".equ A{i}, A{i + 1} + 1" for i in range(count)]
    lines += [f".equ A{count}, 0", ".dword A0", ".if A0", ".byte 1", ".endif"]
    image = assemble("\n".join(lines))
    assert image.data == struct.pack("<IB", count, 1)
    assert image.symbols["A0"] == count


@pytest.mark.parametrize("ops", ["-", "~", "+", "-~", "~-(", "(-"])
def test_long_unary_chains_are_an_expression_depth_error(ops: str) -> None:
    source = "mov eax, " + ops * (2000 // len(ops)) + "1"
    err = error(source + ")" * source.count("("))
    assert where(err) == ("t.s", 1, 10 + MAX_EXPRESSION_DEPTH)  # the 65th operator or '('
    assert err.message == DEPTH


def test_nested_parentheses_in_a_macro_argument_are_an_error_in_the_body() -> None:
    err = error(".macro m x\n  mov eax, \\x\n.endm\nnop\nm " + "(" * 500 + "1" + ")" * 500)
    assert where(err) == ("t.s", 2, 12 + MAX_EXPRESSION_DEPTH)
    assert err.message == f"{DEPTH} (in macro m expanded at t.s:5)"


def test_a_utf16_file_is_an_error_naming_file_line_column(tmp_path: Path) -> None:
    path = tmp_path / "utf16.s"
    path.write_bytes(b"\xff\xfe" + "nop\n".encode("utf-16-le"))
    err = file_error(path)
    assert where(err) == (str(path), 1, 1)
    assert err.message == (
        "not UTF-8 text: byte 0xff cannot be decoded"
        " (it starts with a UTF-16 byte order mark: save the file as UTF-8)"
    )


def test_a_bad_byte_is_reported_at_its_line_and_character_column(tmp_path: Path) -> None:
    path = tmp_path / "latin1.s"
    path.write_bytes("nop\n  nop ; café ".encode() + b"\xe9t\xe9\nnop\n")
    err = file_error(path)
    assert where(err) == (str(path), 2, 14)  # columns count characters: 'é' is one
    assert err.message == "not UTF-8 text: byte 0xe9 cannot be decoded (save the file as UTF-8)"


def test_a_bad_byte_at_the_start_of_a_line(tmp_path: Path) -> None:
    path = tmp_path / "crlf.s"
    path.write_bytes(b"nop\r\nnop\r\n\x80nop\r\n")
    assert where(file_error(path)) == (str(path), 3, 1)


def test_a_bad_byte_in_an_included_file_names_that_file(tmp_path: Path) -> None:
    (tmp_path / "inc.s").write_bytes(b'nop\n\n.ascii "\x80"\n')
    (tmp_path / "main.s").write_text('nop\n.include "inc.s"\n')
    err = file_error(tmp_path / "main.s")
    assert where(err) == (str(tmp_path / "inc.s"), 3, 9)
    assert err.message.startswith("not UTF-8 text: byte 0x80"), err.message


def test_exponential_macro_expansion_hits_the_expansion_limit() -> None:
    err = error(".macro r x\nr \\x\\x\n.endm\nr a")
    assert where(err) == ("t.s", 2, 1)
    assert err.message.startswith(
        f"{EXPANDED} (the limit; does 'r' grow its arguments at each level, or expand too often?)"
        " (in macro r expanded at t.s:2, in macro r expanded at t.s:2, ..."
    ), err.message
    assert err.message.endswith("in macro r expanded at t.s:4)")


def test_100000_nested_ifs_hit_the_conditional_depth_limit() -> None:
    err = error("  .if 1\n" * 100_000 + ".endif\n" * 100_000)
    assert where(err) == ("t.s", MAX_CONDITIONAL_DEPTH + 1, 3)
    assert err.message == f"{CONDITIONALS} (the outermost open one is at t.s:1:3; is an .endif missing?)"


def test_100000_nested_false_ifs_hit_the_conditional_depth_limit() -> None:
    err = error(".if 0\n" * 100_000 + ".endif\n" * 100_000)
    assert where(err) == ("t.s", MAX_CONDITIONAL_DEPTH + 1, 1)
    assert err.message.startswith(CONDITIONALS), err.message


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_include_of_a_symlink_to_dev_zero_is_refused(tmp_path: Path) -> None:
    (tmp_path / "zero.s").symlink_to("/dev/zero")
    (tmp_path / "main.s").write_text('nop\n  .include "zero.s"\n')
    err = file_error(tmp_path / "main.s")
    assert where(err) == (str(tmp_path / "main.s"), 2, 12)
    assert err.message == (
        ".include file 'zero.s' is not a regular file (a character device); only regular files are read as source"
    )


def test_an_include_name_holding_a_nul_is_an_error_not_a_value_error(tmp_path: Path) -> None:
    # found while writing the fuzzer: os.stat raised ValueError (embedded null byte)
    err = error('nop\n.include "a\\0b.s"', filename=str(tmp_path / "main.s"))
    assert (err.line, err.column, err.message) == (
        2,
        10,
        ".include file name 'a\\0b.s' holds a NUL character (\\0)",
    )
    assert file_error(tmp_path / "a\0b.s").message == "cannot read the program: embedded null byte"


# ---------------------------------------------------------------- each limit: at it, and past it


def test_expressions_nest_exactly_to_the_limit() -> None:
    half = MAX_EXPRESSION_DEPTH // 2
    deepest = "-(" * half + "1" + ")" * half
    assert assemble(f".dword {deepest}").data == struct.pack("<I", 1)
    err = error(f".dword -{deepest}")
    assert (err.line, err.column, err.message) == (1, 8 + MAX_EXPRESSION_DEPTH, DEPTH)


def test_expression_depth_counts_what_is_open_not_what_was_closed() -> None:
    many = " + ".join(["((((1))))"] * 200)
    assert assemble(f".dword {many}").data == struct.pack("<I", 200)


def test_a_long_expression_naming_many_later_symbols_assembles() -> None:
    names = [f"S{i}" for i in range(2000)]
    lines = [".equ TOTAL, " + " + ".join(names), ".dword TOTAL"]
    lines += [f".equ {name}, {i % 2}" for i, name in enumerate(names)]
    assert assemble("\n".join(lines)).data == struct.pack("<I", 1000)


def test_a_pending_equ_chain_asked_for_again_and_again_assembles() -> None:
    # each .equ names the previous one, which waits for X: pass 1 remembers what blocks the chain
    lines = (
        [".equ B0, X"] + [f".equ B{i}, B{i - 1} + 1" for i in range(1, 5000)] + [".equ X, 1", ".dword B4999"]
    )
    assert assemble("\n".join(lines)).data == struct.pack("<I", 5000)


def test_a_cycle_among_waiting_equ_is_still_an_error() -> None:
    err = error(".equ A, B + 1\n.equ B, C\n.equ C, A\nnop")
    assert (err.line, err.column, err.message) == (3, 9, "symbol 'A' is defined in terms of itself")


def test_conditionals_nest_exactly_to_the_limit() -> None:
    source = ".if 1\n" * MAX_CONDITIONAL_DEPTH + ".byte 7\n" + ".endif\n" * MAX_CONDITIONAL_DEPTH
    assert assemble(source).data == b"\x07"
    err = error(".if 1\n" * MAX_CONDITIONAL_DEPTH + ".ifdef X\n")
    assert (err.line, err.column) == (MAX_CONDITIONAL_DEPTH + 1, 1)
    assert err.message.startswith(CONDITIONALS)


def test_macros_nest_exactly_to_the_limit() -> None:
    lines = [".macro m0\n.byte 7\n.endm"]
    lines += [f".macro m{i}\nm{i - 1}\n.endm" for i in range(1, MAX_MACRO_DEPTH + 1)]
    assert assemble("\n".join([*lines, f"m{MAX_MACRO_DEPTH - 1}"])).data == b"\x07"
    err = error("\n".join([*lines, f"m{MAX_MACRO_DEPTH}"]))
    assert err.message.startswith(f"macros nested deeper than {MAX_MACRO_DEPTH} (does 'm0' invoke itself?)")


def test_includes_nest_exactly_to_the_limit(tmp_path: Path) -> None:
    (tmp_path / f"i{MAX_INCLUDE_DEPTH}.s").write_text(".byte 7\n")
    for i in range(MAX_INCLUDE_DEPTH):
        (tmp_path / f"i{i}.s").write_text(f'.include "i{i + 1}.s"\n')
    assert assemble_file(tmp_path / "i0.s").data == b"\x07"
    (tmp_path / f"i{MAX_INCLUDE_DEPTH}.s").write_text('.include "i999.s"\n')
    err = file_error(tmp_path / "i0.s")
    assert err.file == str(tmp_path / f"i{MAX_INCLUDE_DEPTH}.s")
    assert err.message.startswith(f".include nested deeper than {MAX_INCLUDE_DEPTH}")


def test_the_deepest_nesting_of_everything_at_once_assembles(tmp_path: Path) -> None:
    # the deepest of everything at once: includes, conditionals in each, macros, expressions
    half = MAX_EXPRESSION_DEPTH // 2
    macros = [f".macro m0\n.byte {'-(' * half}7{')' * half}\n.endm"]
    macros += [f".macro m{i}\nm{i - 1}\n.endm" for i in range(1, MAX_MACRO_DEPTH)]
    (tmp_path / f"i{MAX_INCLUDE_DEPTH}.s").write_text(f".if 1\nm{MAX_MACRO_DEPTH - 1}\n.endif\n")
    for i in range(1, MAX_INCLUDE_DEPTH):
        (tmp_path / f"i{i}.s").write_text(f'.if 1\n.include "i{i + 1}.s"\n.endif\n')
    (tmp_path / "main.s").write_text("\n".join(macros) + '\n.include "i1.s"\n')
    assert assemble_file(tmp_path / "main.s").data == b"\x07"


def test_macros_invoking_macros_many_times_hit_the_expansion_limit() -> None:
    lines = [".macro m0", *["nop"] * 16, ".endm"]
    for level in range(1, 6):
        lines += [f".macro m{level}", *[f"m{level - 1}"] * 16, ".endm"]
    err = error("\n".join([*lines, "m5"]))
    assert err.message.startswith(EXPANDED), err.message


def test_one_line_longer_than_the_expansion_limit_is_refused_before_it_is_built() -> None:
    body = "\\x" * 1000
    err = error(f'.macro m x\n.ascii "{body}"\n.endm\nm {"a" * (MAX_EXPANDED_BYTES // 1000 + 1)}')
    assert where(err) == ("t.s", 4, 1)
    assert err.message.startswith(EXPANDED), err.message


def test_a_file_included_once_does_not_count_as_expanded_text(tmp_path: Path) -> None:
    (tmp_path / "table.s").write_text(".byte 1\n" * (MAX_EXPANDED_BYTES // 8 + 100))
    (tmp_path / "main.s").write_text('.include "table.s"\n')
    assert len(assemble_file(tmp_path / "main.s").data) == MAX_EXPANDED_BYTES // 8 + 100


def test_a_file_included_over_and_over_hits_the_expansion_limit(tmp_path: Path) -> None:
    (tmp_path / "nops.s").write_text("nop\n" * 1000)
    # another name for the same file counts as the same file
    (tmp_path / "main.s").write_text('.include "nops.s"\n.include "./nops.s"\n' * 1000)
    err = file_error(tmp_path / "main.s")
    assert err.file == str(tmp_path / "main.s")
    assert err.message.startswith(EXPANDED), err.message
    assert "is './nops.s' included over and over (or by itself)?" in err.message


def test_a_file_including_itself_twice_per_level_hits_a_limit(tmp_path: Path) -> None:
    (tmp_path / "twice.s").write_text('nop\n.include "twice.s"\n.include "twice.s"\n')
    err = file_error(tmp_path / "twice.s")
    assert err.message.startswith((EXPANDED, ".include nested deeper than")), err.message


@pytest.mark.parametrize("kind", ["directory", "fifo", "too big"])
def test_only_regular_files_of_bounded_size_are_included(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "x.s"
    if kind == "directory":
        target.mkdir()
        reason = "is not a regular file (a directory); only regular files are read as source"
    elif kind == "fifo":
        os.mkfifo(target)
        reason = "is not a regular file (a FIFO); only regular files are read as source"
    else:
        target.write_bytes(b"nop\n" * (MAX_SOURCE_BYTES // 4) + b"\n")
        reason = f"is {MAX_SOURCE_BYTES + 1:,} bytes, over the {size_text(MAX_SOURCE_BYTES)} a source file may hold"
    (tmp_path / "main.s").write_text('.include "x.s"\n')
    err = file_error(tmp_path / "main.s")
    assert where(err) == (str(tmp_path / "main.s"), 1, 10)
    assert err.message == f".include file 'x.s' {reason}"
    assert file_error(target).message == f"the program {reason}"


def test_a_file_at_the_size_limit_is_read(tmp_path: Path) -> None:
    (tmp_path / "x.s").write_bytes(b";" * (MAX_SOURCE_BYTES - 4) + b"\nnop")
    assert assemble_file(tmp_path / "x.s").data == assemble("nop").data


def test_a_huge_number_is_too_big_not_malformed() -> None:
    err = error("mov eax, " + "9" * 5000)
    assert (err.column, err.message) == (10, f"number {'9' * 5000} does not fit in 32 bits")
    assert assemble(".byte " + "0" * 5000 + "7").data == b"\x07"


# ---------------------------------------------------------------- the CLI: one line, status 2


@pytest.mark.parametrize(
    ("source", "line", "column", "message"),
    [
        ("mov eax, " + "(" * 500 + "1" + ")" * 500, 1, 10 + MAX_EXPRESSION_DEPTH, DEPTH),
        ("mov eax, " + "-" * 2000 + "1", 1, 10 + MAX_EXPRESSION_DEPTH, DEPTH),
        (".macro r x\nr \\x\\x\n.endm\nr a", 2, 1, EXPANDED),
        (".if 1\n" * 100_000, MAX_CONDITIONAL_DEPTH + 1, 1, CONDITIONALS),
        ('.include "zero.s"', 1, 10, ".include file 'zero.s' is not a regular file (a character device)"),
    ],
    ids=["parentheses", "unary", "macro", "conditionals", "dev-zero"],
)
def test_ringlab_asm_prints_limits_as_file_line_column_with_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], source: str, line: int, column: int, message: str
) -> None:
    if "zero.s" in source:
        if not Path("/dev/zero").exists():
            pytest.skip("needs /dev/zero")
        (tmp_path / "zero.s").symlink_to("/dev/zero")
    path = tmp_path / "p.s"
    path.write_text(source)
    status = main(["asm", str(path), "-o", str(tmp_path / "p.img")])
    err = capsys.readouterr().err
    assert status == EXIT_USAGE, err
    assert err.startswith(f"ringlab: {path}:{line}:{column}: {message}"), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "p.img").exists()


def test_ringlab_asm_of_a_file_that_is_not_utf8_is_one_line_with_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "utf16.s"
    path.write_bytes(b"\xff\xfenop\n")
    status = main(["asm", str(path), "-o", str(tmp_path / "p.img")])
    err = capsys.readouterr().err
    assert status == EXIT_USAGE, err
    assert err.startswith(f"ringlab: {path}") and "UTF-8" in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


# ---------------------------------------------------------------- the docs list each limit


def test_docs_list_every_limit_with_its_value() -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "assembly.md").read_text()
    section = page.split("### Limits", 1)[1]
    rows = {
        cells[0]: cells[1]
        for line in section.splitlines()
        if line.startswith("| ") and not line.startswith("| limit")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    assert rows == {
        "expression nesting": str(MAX_EXPRESSION_DEPTH),
        "conditional nesting": str(MAX_CONDITIONAL_DEPTH),
        "macro nesting": str(MAX_MACRO_DEPTH),
        "`.include` nesting": str(MAX_INCLUDE_DEPTH),
        "expanded text": size_text(MAX_EXPANDED_BYTES),
        "a source file": size_text(MAX_SOURCE_BYTES),
        "the image": size_text(MAX_IMAGE_BYTES),
    }
