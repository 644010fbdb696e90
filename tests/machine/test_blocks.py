"""The block compiler against the interpreter: same final state, same ``stats.guest``, exact
budgets and ticks inside compiled loops, precise faults mid-block, self-modifying code."""

from __future__ import annotations

import pytest

from ringlab.machine import Cpu, ExitReason, IoOut, blocks, run_image
from tests.machine.conftest import gate, image, kernel, reg, run, stack, sym
from tests.machine.test_events import to_ring

PROGRAMS = {
    "fnv1a": """
.entry start
start:  mov esi, buf                ; fill 512 bytes with an LCG, then FNV-1a them 4 times
        mov edi, buf + 512
        mov eax, 1
.fill:  imul eax, 1103515245
        add eax, 12345
        mov edx, eax
        shr edx, 16
        mov byte [esi], edx
        inc esi
        cmp esi, edi
        jne .fill
        mov ebx, 2166136261
        mov ecx, 4
.round: mov esi, buf
.inner: movzx eax, byte [esi]
        xor ebx, eax
        imul ebx, 16777619
        inc esi
        cmp esi, edi
        jne .inner
        dec ecx
        jnz .round
        out 0xF4, ebx
buf:    .space 512
""",
    "flags-mix": """
.entry start
start:  mov ecx, 300                ; every flag writer, with the flags live across the loop
        mov eax, 0x7FFFFFF0
.l:     add eax, ecx
        sub edx, eax
        neg edx
        sar edx, 1
        shl eax, ecx
        shr eax, 3
        test eax, 0x80000000
        jns .p
        or ebx, 1
.p:     imul eax, -7
        and esi, eax
        xor edi, eax
        inc esi
        dec ecx
        ja .l
        pushf
        pop eax
        out 0xF4, eax
""",
    "memory-forms": """
.entry start
start:  mov ecx, 200
.l:     mov [data + 1], ecx         ; unaligned, RMW, byte and stack forms
        add [data + 1], 3
        sub [data + 5], ecx
        inc [data + 9]
        neg [data + 13]
        not [data + 13]
        mov byte [data + 2], ecx
        movzx eax, byte [data + 1]
        push eax
        push 7
        pop edx
        pop esi
        cmp [data + 9], 150
        jl .skip
        xor [data + 17], ecx
.skip:  call f

        dec ecx
        jne .l
        mov eax, [data + 9]
        out 0xF4, eax
f:      lea edi, [esp + 4]
        xchg eax, edx
        ret
data:   .space 32
""",
}


def final(
    src: str, fast: bool, *, budget: int = 1_000_000
) -> tuple[dict[str, object], dict[str, object], bytes]:
    cpu = Cpu.boot(image(src), fast=fast)
    exit = cpu.run(budget)
    return (
        cpu.state.to_dict() | {"exit": exit.reason, "value": exit.value if isinstance(exit, IoOut) else None},
        cpu.stats.guest(cpu.state.tsc),
        bytes(cpu.memory.data),
    )


@pytest.mark.parametrize("name", sorted(PROGRAMS))
@pytest.mark.parametrize("hot", [1, 3])
def test_block_compiler_matches_the_interpreter(monkeypatch: pytest.MonkeyPatch, name: str, hot: int) -> None:
    monkeypatch.setattr(blocks, "HOT", hot)
    assert final(PROGRAMS[name], True) == final(PROGRAMS[name], False)


@pytest.mark.parametrize("budget", [1, 7, 100, 1001, 4099])
def test_budgets_are_exact_inside_compiled_loops(monkeypatch: pytest.MonkeyPatch, budget: int) -> None:
    monkeypatch.setattr(blocks, "HOT", 1)
    src = PROGRAMS["fnv1a"]
    assert final(src, True, budget=budget) == final(src, False, budget=budget)


def test_kernel_with_timer_and_user_code_matches_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    # ring-3 loop under a period-37 timer whose handler counts ticks: same state, same stats
    monkeypatch.setattr(blocks, "HOT", 1)
    body = f"""        mov eax, 37
        out 0x40, eax
{to_ring(3, flags=0x200)}
        mov ecx, 3000
.l:     add ebx, ecx
        imul ebx, 3
        dec ecx
        jne .l
        int 33"""
    src = kernel(
        body, gates={32: gate("tick"), 33: gate("fault_33", dpl=3)}, tail="tick:   inc edi\n        iret"
    )
    cpu_states = []
    for fast in (False, True):
        cpu = Cpu.boot(image(src), fast=fast)
        assert run(cpu).reason is ExitReason.HALT
        cpu_states.append((cpu.state, cpu.stats.guest(cpu.state.tsc)))
    assert cpu_states[0] == cpu_states[1]
    assert cpu_states[0][0].regs[7] == cpu_states[0][1]["interrupts"] > 200


def test_fault_in_the_middle_of_a_block_is_precise(fast: bool) -> None:
    # the third instruction of a straight-line run touches a not-present page
    body = """        mov [0x81000 + 0x300 * 4], 0
        mov eax, 0
again:  add eax, 1
        add ebx, 2
faulting: mov edx, [0x300000]
        add esi, 1
        jmp again"""
    src = kernel(body, paging=True)
    cpu = Cpu.boot(image(src), fast=fast)
    assert run(cpu).reason is ExitReason.HALT
    assert (reg(cpu, "eax"), reg(cpu, "ebx"), reg(cpu, "esi")) == (1, 2, 0)
    assert stack(cpu, 2) == [0, sym(src, "faulting")]


def test_writing_code_drops_the_compiled_block(fast: bool) -> None:
    # the loop patches the immediate of its own `add eax, 1` after 10 passes
    src = """
.entry start
start:  mov ecx, 20
patch:  add eax, 1
        dec ecx
        cmp ecx, 10
        jne .n
        mov [patch + 2], 100        ; imm32 of `add eax, imm` (opcode, register, imm)
.n:     cmp ecx, 0
        jne patch
        hlt
"""
    cpu = Cpu.boot(image(src), fast=fast)
    assert run(cpu).reason is ExitReason.HALT
    assert reg(cpu, "eax") == 10 + 10 * 100
    if fast:
        assert cpu.stats.block_invalidations >= 1


def test_data_writes_next_to_code_keep_the_block(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blocks, "HOT", 1)
    src = ".entry s\ns: mov ecx, 500\n.l: inc [counter]\n   dec ecx\n   jne .l\n   hlt\ncounter: .dword 0"
    cpu = Cpu.boot(image(src), fast=True)
    assert run(cpu).reason is ExitReason.HALT
    assert cpu.memory.read32(image(src).symbols["counter"]) == 500
    assert cpu.stats.block_invalidations == 0


def test_run_image_is_identical_under_both_engines() -> None:
    a, b = (run_image(image(PROGRAMS["fnv1a"]), fast=f).to_json() for f in (False, True))
    assert a["console"] == b["console"] and a["exit"] == b["exit"] and a["registers"] == b["registers"]
    assert a["stats"]["guest"] == b["stats"]["guest"]
