"""Per-instruction semantics and flags (docs/machine.md "Precise rules > Flags", the SDM elsewhere).

Each case runs a tiny ring-0 program: set eflags, run the instruction, ``pushf``/``pop`` the
flags into ``edx``, stop with ``hlt`` (IF = 0).
"""

from __future__ import annotations

import pytest

from tests.machine.conftest import ARITH, CF, OF, SF, ZF, reg, run_to_halt, stopped_at_vector

M = 0xFFFFFFFF


def flags_program(setup: str, insn: str, flags_in: int = 0) -> str:
    return f"""
.entry start
start:  push {flags_in}
        popf
{setup}
        {insn}
        pushf
        pop edx
        hlt
data:   .dword 0, 0
"""


# op, a, b, result, flags after (from flags 0)
BINARY = [
    ("add", 1, 2, 3, 0),
    ("add", M, 1, 0, CF | ZF),
    ("add", 0x7FFFFFFF, 1, 0x80000000, SF | OF),
    ("add", 0x80000000, 0x80000000, 0, CF | ZF | OF),
    ("sub", 3, 5, (3 - 5) & M, CF | SF),
    ("sub", 5, 5, 0, ZF),
    ("sub", 0x80000000, 1, 0x7FFFFFFF, OF),
    ("sub", 0x7FFFFFFF, M, 0x80000000, CF | SF | OF),
    ("and", 0xF0F0F0F0, 0x0FF00FF0, 0x00F000F0, 0),
    ("and", 0xF0000000, 0x80000000, 0x80000000, SF),
    ("or", 0, 0, 0, ZF),
    ("xor", 0x1234, 0x1234, 0, ZF),
    ("xor", 0x80000000, 1, 0x80000001, SF),
]


@pytest.mark.parametrize(("op", "a", "b", "result", "flags"), BINARY)
def test_binary_result_and_flags(fast: bool, op: str, a: int, b: int, result: int, flags: int) -> None:
    # mov eax, A ; mov ebx, B ; OP eax, ebx
    src = flags_program(f"mov eax, {a}\n        mov ebx, {b}", f"{op} eax, ebx")
    cpu = run_to_halt(src, fast)
    assert reg(cpu, "eax") == result
    assert reg(cpu, "edx") & ARITH == flags


@pytest.mark.parametrize("op", ["add", "sub", "and", "or", "xor"])
@pytest.mark.parametrize(
    ("form", "insn"),
    [
        ("r,r", "{op} eax, ebx"),
        ("r,i", "{op} eax, 0x9abc"),
        ("r,m", "{op} eax, [data]"),
        ("m,r", "{op} [data + 4], ebx"),
        ("m,i", "{op} [data + 4], 0x9abc"),
    ],
)
def test_every_alu_operand_form_computes_the_same(fast: bool, op: str, form: str, insn: str) -> None:
    # eax = [data+4] = 0x12345678 (the destination), ebx = [data] = 0x9abc (the source)
    setup = (
        "mov eax, 0x12345678\n        mov ebx, 0x9abc\n        mov [data], ebx\n        mov [data + 4], eax"
    )
    cpu = run_to_halt(flags_program(setup, insn.format(op=op)), fast)
    expected = {
        "add": 0x12345678 + 0x9ABC,
        "sub": 0x12345678 - 0x9ABC,
        "and": 0x12345678 & 0x9ABC,
        "or": 0x12345678 | 0x9ABC,
        "xor": 0x12345678 ^ 0x9ABC,
    }[op]
    program = flags_program(setup, insn.format(op=op))
    got = reg(cpu, "eax") if form.startswith("r") else cpu.memory.read32(_data(program) + 4)
    assert got == expected & M


def _data(source: str) -> int:
    from ringlab.asm import assemble

    return assemble(source).symbols["data"]


@pytest.mark.parametrize(
    ("op", "a", "b", "flags"), [("cmp", 3, 5, CF | SF), ("test", 0x80, 0x80, 0), ("test", 1, 2, ZF)]
)
def test_cmp_and_test_set_flags_without_writing(fast: bool, op: str, a: int, b: int, flags: int) -> None:
    cpu = run_to_halt(flags_program(f"mov eax, {a}\n        mov ebx, {b}", f"{op} eax, ebx", CF | OF), fast)
    assert reg(cpu, "eax") == a
    assert reg(cpu, "edx") & ARITH == flags


def test_and_or_xor_test_clear_cf_and_of(fast: bool) -> None:
    for op in ("and", "or", "xor", "test"):
        cpu = run_to_halt(flags_program("mov eax, 1", f"{op} eax, 1", CF | OF), fast)
        assert reg(cpu, "edx") & (CF | OF) == 0, op


@pytest.mark.parametrize(
    ("insn", "a", "result", "flags_in", "flags"),
    [
        ("inc eax", M, 0, CF, CF | ZF),  # inc leaves CF
        ("inc eax", 0x7FFFFFFF, 0x80000000, 0, SF | OF),
        ("dec eax", 0, M, 0, SF),
        ("dec eax", 0x80000000, 0x7FFFFFFF, CF, CF | OF),
        ("neg eax", 0, 0, CF, ZF),  # neg: CF = operand != 0
        ("neg eax", 1, M, 0, CF | SF),
        ("neg eax", 0x80000000, 0x80000000, 0, CF | SF | OF),
        ("not eax", 0x0F0F0F0F, 0xF0F0F0F0, CF | ZF, CF | ZF),  # not leaves every flag
    ],
)
def test_unary_ops(fast: bool, insn: str, a: int, result: int, flags_in: int, flags: int) -> None:
    cpu = run_to_halt(flags_program(f"mov eax, {a}", insn, flags_in), fast)
    assert reg(cpu, "eax") == result
    assert reg(cpu, "edx") & ARITH == flags


def test_unary_ops_on_memory(fast: bool) -> None:
    # mov [data], 5 ; inc [data] ; inc [data] ; dec [data] ; neg [data] ; not [data]
    setup = "mov [data], 5\n        inc [data]\n        inc [data]\n        dec [data]\n        neg [data]"
    cpu = run_to_halt(flags_program(setup, "not [data]"), fast)
    assert cpu.memory.read32(_data(flags_program(setup, "not [data]"))) == (~(-6 & M)) & M
    assert reg(cpu, "edx") & ARITH == CF | SF  # from neg 6; not leaves them


@pytest.mark.parametrize(
    ("insn", "a", "result", "flags_in", "flags"),
    [
        ("shl eax, 0", 0x80000000, 0x80000000, ZF | OF, ZF | OF),  # count 0 leaves every flag
        ("shl eax, 32", 5, 5, CF, CF),  # count = low 5 bits: 32 -> 0
        ("shl eax, 1", 0x80000000, 0, 0, CF | ZF | OF),  # OF = MSB(result) ^ CF
        ("shl eax, 1", 0x40000000, 0x80000000, 0, SF | OF),
        ("shl eax, 1", 0xC0000000, 0x80000000, OF, CF | SF),
        ("shl eax, 4", 0x1F000000, 0xF0000000, OF, CF | SF | OF),  # OF left unchanged
        ("shr eax, 1", 0x80000001, 0x40000000, 0, CF | OF),  # OF = old MSB
        ("shr eax, 4", 0x80000010, 0x08000001, OF, OF),
        ("sar eax, 1", 0x80000001, 0xC0000000, OF, CF | SF),  # OF = 0 for 1-bit sar
        ("sar eax, 31", 0x80000000, M, 0, SF),
        ("sar eax, 4", 0x00000018, 1, ZF, CF),
    ],
)
def test_shifts(fast: bool, insn: str, a: int, result: int, flags_in: int, flags: int) -> None:
    cpu = run_to_halt(flags_program(f"mov eax, {a}", insn, flags_in), fast)
    assert reg(cpu, "eax") == result
    assert reg(cpu, "edx") & ARITH == flags


def test_shift_by_ecx_uses_its_low_five_bits(fast: bool) -> None:
    # mov ecx, 33 ; shl eax, ecx   (counts 1)
    cpu = run_to_halt(flags_program("mov eax, 3\n        mov ecx, 33", "shl eax, ecx"), fast)
    assert reg(cpu, "eax") == 6


@pytest.mark.parametrize(
    ("a", "b", "result", "flags_in", "flags"),
    [
        (3, 4, 12, ZF | SF, ZF | SF),  # imul leaves SF and ZF
        (0x10000, 0x10000, 0, 0, CF | OF),
        (M, M, 1, CF | OF, 0),  # -1 * -1 fits
        (0x80000000, M, 0x80000000, 0, CF | OF),  # -2^31 * -1 does not
    ],
)
def test_imul(fast: bool, a: int, b: int, result: int, flags_in: int, flags: int) -> None:
    cpu = run_to_halt(flags_program(f"mov eax, {a}\n        mov ebx, {b}", "imul eax, ebx", flags_in), fast)
    assert reg(cpu, "eax") == result
    assert reg(cpu, "edx") & ARITH == flags


def test_imul_immediate_and_memory_forms(fast: bool) -> None:
    # imul eax, -3 ; imul eax, [data]  with [data] = 7
    cpu = run_to_halt(
        flags_program("mov eax, 5\n        mov [data], 7\n        imul eax, -3", "imul eax, [data]"), fast
    )
    assert reg(cpu, "eax") == (-105) & M


def test_div_sets_quotient_and_remainder_from_old_eax_and_leaves_flags(fast: bool) -> None:
    # mov eax, 100 ; mov edx, 99 ; mov ecx, 7 ; div ecx
    cpu = run_to_halt(flags_program("mov eax, 100\n        mov ecx, 7", "div ecx", CF | ZF), fast)
    assert (reg(cpu, "eax"), reg(cpu, "ecx")) == (14, 7)
    assert reg(cpu, "edx") & ARITH == CF | ZF  # (edx then holds the flags: the remainder was 2)


def test_div_by_edx_divides_by_the_old_edx(fast: bool) -> None:
    src = """
.entry start
start:  mov eax, 100
        mov edx, 7
        div edx
        hlt
"""
    cpu = run_to_halt(src, fast)
    assert (reg(cpu, "eax"), reg(cpu, "edx")) == (14, 2)


def test_data_movement(fast: bool) -> None:
    src = """
.entry start
start:  mov eax, 0x11223344
        mov [data], eax
        movzx ebx, byte [data + 1]      ; 0x33
        mov byte [data + 4], eax        ; low byte 0x44
        mov ecx, [data + 4]
        lea esi, [ebx + 0x100]
        mov edi, 9
        xchg esi, edi
        push 0xABCD
        push eax
        pop ebp
        pop edx
        hlt
data:   .dword 0, 0xAABBCC00
"""
    cpu = run_to_halt(src, fast)
    assert reg(cpu, "ebx") == 0x33
    assert reg(cpu, "ecx") == 0xAABBCC44
    assert (reg(cpu, "esi"), reg(cpu, "edi")) == (9, 0x133)
    assert (reg(cpu, "ebp"), reg(cpu, "edx")) == (0x11223344, 0xABCD)
    assert reg(cpu, "esp") == 4 << 20


def test_push_esp_pushes_the_old_value_and_pop_esp_loads_the_popped_value(fast: bool) -> None:
    src = """
.entry start
start:  push esp
        pop eax
        mov [0x2000], 0x1234
        mov esp, 0x2000
        pop esp
        hlt
"""
    cpu = run_to_halt(src, fast)
    assert reg(cpu, "eax") == 4 << 20
    assert reg(cpu, "esp") == 0x1234


def test_call_ret_and_register_jumps(fast: bool) -> None:
    src = """
.entry start
start:  call f
        mov eax, g
        call eax
        mov ebx, done
        jmp ebx
        mov ecx, 0xBAD
done:   hlt
f:      mov esi, 1
        ret
g:      mov edi, [esp]          ; the return address
        ret
"""
    cpu = run_to_halt(src, fast)
    assert reg(cpu, "esi") == 1
    assert reg(cpu, "ecx") == 0
    from ringlab.asm import assemble

    symbols = assemble(src).symbols
    assert reg(cpu, "edi") == symbols["start"] + 5 + 6 + 2  # after call f, mov eax, g, call eax


JCC = {
    # condition -> flag combinations under which it jumps
    "je": lambda f: bool(f & ZF),
    "jne": lambda f: not f & ZF,
    "jl": lambda f: bool(f & SF) != bool(f & OF),
    "jle": lambda f: bool(f & ZF) or bool(f & SF) != bool(f & OF),
    "jg": lambda f: not f & ZF and bool(f & SF) == bool(f & OF),
    "jge": lambda f: bool(f & SF) == bool(f & OF),
    "jb": lambda f: bool(f & CF),
    "jc": lambda f: bool(f & CF),
    "jbe": lambda f: bool(f & (CF | ZF)),
    "ja": lambda f: not f & (CF | ZF),
    "jae": lambda f: not f & CF,
    "jnc": lambda f: not f & CF,
    "js": lambda f: bool(f & SF),
    "jns": lambda f: not f & SF,
    "jo": lambda f: bool(f & OF),
    "jno": lambda f: not f & OF,
    "jz": lambda f: bool(f & ZF),
    "jnz": lambda f: not f & ZF,
}


@pytest.mark.parametrize("jcc", sorted(JCC))
def test_conditional_jumps_read_the_flags(fast: bool, jcc: str) -> None:
    # for each of the 16 combinations of CF ZF SF OF: push F ; popf ; jcc taken ; (not taken)
    cases = [
        (CF if i & 1 else 0) | (ZF if i & 2 else 0) | (SF if i & 4 else 0) | (OF if i & 8 else 0)
        for i in range(16)
    ]
    body = "\n".join(
        f"""        push {f}
        popf
        {jcc} .t{i}
        jmp .n{i}
.t{i}:  or esi, {1 << i}
.n{i}:"""
        for i, f in enumerate(cases)
    )
    cpu = run_to_halt(f".entry start\nstart:  mov esi, 0\n{body}\n        hlt\n", fast)
    expected = sum(1 << i for i, f in enumerate(cases) if JCC[jcc](f))
    assert reg(cpu, "esi") == expected


def test_cmp_jcc_signed_and_unsigned_orders(fast: bool) -> None:
    # esi counts the taken branches of: cmp -1, 1 -> jl (taken), jb (not), jg (not), ja (taken)
    src = """
.entry start
start:  mov eax, -1
        cmp eax, 1
        jl .a
        jmp .b
.a:     inc esi
.b:     cmp eax, 1
        jb .c
        jmp .d
.c:     add esi, 10
.d:     cmp eax, 1
        ja .e
        jmp .f
.e:     add esi, 100
.f:     hlt
"""
    assert reg(run_to_halt(src, fast), "esi") == 101


def test_rdtsc_returns_the_time_before_its_own_retirement(fast: bool) -> None:
    src = """
.entry start
start:  nop
        nop
        rdtsc
        hlt
"""
    cpu = run_to_halt(src, fast)
    assert (reg(cpu, "eax"), reg(cpu, "edx")) == (2, 0)
    assert cpu.state.tsc == 4


def test_cpuid_leaves(fast: bool) -> None:
    src = """
.entry start
start:  mov eax, 0
        cpuid
        mov [data], ebx
        mov [data + 4], edx
        mov [data + 8], ecx
        mov esi, eax
        mov eax, 1
        cpuid
        mov edi, ecx
        mov eax, 7
        cpuid
        hlt
data:   .space 12
"""
    cpu = run_to_halt(src, fast)
    from ringlab.asm import assemble

    data = assemble(src).symbols["data"]
    assert cpu.memory.read(data, 12) == b"RingLabCPU32"
    assert reg(cpu, "esi") == 1
    assert reg(cpu, "edi") == 0
    assert cpu.state.regs[:4] == [0, 0, 0, 0]


def test_undefined_opcode_raises_ud(fast: bool) -> None:
    from tests.machine.conftest import kernel

    src = kernel("        .byte 0")
    cpu = run_to_halt(src, fast)
    assert stopped_at_vector(cpu, src) == 6
