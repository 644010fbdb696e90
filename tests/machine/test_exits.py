"""The exit API (the Exit classes, Controls), state export/import, dirty tracking, boot and run_image."""

from __future__ import annotations

import pytest

from ringlab.errors import ImageError
from ringlab.image import Image
from ringlab.machine import (
    Controls,
    Cpu,
    CpuState,
    ExitReason,
    Intercept,
    IoIn,
    IoOut,
    Memory,
    Raised,
    run_image,
)
from tests.machine.conftest import boot, image, kernel, reg, run, stopped_at_vector, sym
from tests.machine.test_events import to_ring


def test_out_and_in_to_platform_ports_exit_after_retiring(fast: bool) -> None:
    src = """
.entry start
start:  mov eax, 0x41
        out 0x3F8, eax
        mov edx, 0x3F8
        in ecx, edx
        hlt
"""
    cpu = boot(src, fast)
    exit = run(cpu)
    assert isinstance(exit, IoOut) and (exit.port, exit.value) == (0x3F8, 0x41)
    assert cpu.stats.retired == 2
    exit = run(cpu)
    assert isinstance(exit, IoIn) and (exit.port, exit.register) == (0x3F8, 1)
    with pytest.raises(RuntimeError):
        run(cpu)
    cpu.complete_in(0x5A)
    assert run(cpu).reason is ExitReason.HALT
    assert reg(cpu, "ecx") == 0x5A
    assert cpu.stats.io == 2


def test_intercept_io_exits_for_the_core_ports_too(fast: bool) -> None:
    cpu = boot(
        ".entry s\ns: out 0x40, eax\n   in eax, 0x80\n   hlt", fast, controls=Controls(intercept_io=True)
    )
    exit = run(cpu)
    assert isinstance(exit, IoOut | IoIn) and exit.port == 0x40
    assert cpu.state.timer_period == 0
    assert run(cpu).reason is ExitReason.IO_IN


def test_intercepted_mnemonic_exits_before_any_check(fast: bool) -> None:
    src = kernel(f"{to_ring(3)}\nfaulting: mov cr3, eax")
    cpu = boot(src, fast, controls=Controls(intercept_mnemonics=frozenset({"mov cr,r"})))
    exit = run(cpu)
    assert isinstance(exit, Intercept)
    assert exit.eip == cpu.state.eip == sym(src, "faulting")
    assert exit.instruction.mnemonic == "mov"
    assert cpu.state.cs == 3  # no #GP was raised


def test_intercepted_vector_exits_with_state_before_the_faulting_instruction(fast: bool) -> None:
    src = kernel(f"{to_ring(1)}\n        mov eax, 1\nfaulting: cli")
    cpu = boot(src, fast, controls=Controls(intercept_vectors=frozenset({13})))
    retired = None
    exit = run(cpu)
    retired = cpu.stats.retired
    assert isinstance(exit, Raised) and (exit.vector, exit.error_code) == (13, 0)
    assert cpu.state.eip == sym(src, "faulting") and cpu.state.cs == 1
    # a VMM emulates the cli for its ring-1 guest, then resumes it
    cpu.state.eip += 1
    cpu.retire(cpu.state.cs)
    assert cpu.stats.retired == retired + 1


def test_intercepted_page_fault_reports_cr2_and_leaves_cr2(fast: bool) -> None:
    src = kernel("        mov [0x81000 + 0x300 * 4], 0\nfaulting: mov eax, [0x300004]", paging=True)
    cpu = boot(src, fast, controls=Controls(intercept_vectors=frozenset({14})))
    exit = run(cpu)
    assert isinstance(exit, Raised) and (exit.vector, exit.error_code, exit.cr2) == (14, 0, 0x300004)
    assert cpu.state.cr2 == 0
    assert cpu.inject(14, error_code=0, cr2=0x300004) is None  # reflect it into the guest
    assert cpu.state.cr2 == 0x300004 and cpu.state.eip == sym(src, "fault_14")


def test_intercepted_int_n_exits_at_the_int_without_retiring(fast: bool) -> None:
    src = kernel("        nop\nfaulting: int 0x82")
    cpu = boot(src, fast, controls=Controls(intercept_vectors=frozenset({0x82})))
    exit = run(cpu)
    assert isinstance(exit, Raised) and (exit.vector, exit.eip) == (0x82, sym(src, "faulting"))
    assert cpu.state.eip == sym(src, "faulting")
    assert cpu.stats.retired == 6


def test_intercepted_timer_exits_and_leaves_delivery_to_the_vmm(fast: bool) -> None:
    src = kernel("        mov eax, 3\n        out 0x40, eax\n        sti\n.l:     jmp .l")
    cpu = boot(src, fast, controls=Controls(intercept_vectors=frozenset({32})))
    exit = run(cpu)
    assert isinstance(exit, Raised) and exit.vector == 32
    assert not cpu.state.timer_pending


def test_vmcall_raises_ud_natively_and_exits_in_vmx_non_root(fast: bool) -> None:
    src = kernel("faulting: vmcall")
    cpu = boot(src, fast)
    assert run(cpu).reason is ExitReason.HALT
    assert stopped_at_vector(cpu, src) == 6
    cpu = boot(src, fast, controls=Controls(vmx_nonroot=True))
    exit = run(cpu)
    assert isinstance(exit, Intercept)
    assert exit.instruction.mnemonic == "vmcall"


def test_cpuid_hypervisor_bit(fast: bool) -> None:
    cpu = boot(
        ".entry s\ns: mov eax, 1\n   cpuid\n   hlt", fast, controls=Controls(cpuid_hypervisor_bit=True)
    )
    run(cpu)
    assert reg(cpu, "ecx") == 1 << 31


def test_budget_exits_after_exactly_that_many_instructions(fast: bool) -> None:
    cpu = boot(".entry s\ns: inc eax\n   jmp s", fast)
    for _ in range(5):
        assert run(cpu, 1001).reason is ExitReason.BUDGET
    assert cpu.stats.retired == 5005
    assert reg(cpu, "eax") == 2503


def test_state_round_trip_resumes_identically(fast: bool) -> None:
    # run halfway, export state and memory, import into a fresh CPU, finish: same as one run
    src = ".entry s\ns: mov ecx, 1000\n.l: add eax, ecx\n   imul eax, 3\n   dec ecx\n   jne .l\n   hlt"
    whole = boot(src, fast)
    run(whole)
    half = boot(src, fast)
    run(half, 1234)
    exported = half.state.to_dict()
    assert CpuState.from_dict(exported) == half.state
    memory = Memory(half.memory.size)
    memory.load(0, bytes(half.memory.data))
    resumed = Cpu(memory, CpuState.from_dict(exported), fast=not fast)
    assert run(resumed).reason is ExitReason.HALT
    assert resumed.state == whole.state


def test_dirty_pages_track_writes_until_cleared(fast: bool) -> None:
    src = (
        ".entry s\ns: mov [0x5000], eax\n   mov [0x7FFE], eax\n   out 0x80, eax\n   mov [0x5004], eax\n   hlt"
    )
    cpu = boot(src, fast, controls=Controls(intercept_io=True))
    assert cpu.memory.dirty_pages() == frozenset()
    run(cpu)
    assert cpu.memory.dirty_pages() == {5, 7, 8}
    cpu.memory.clear_dirty()
    run(cpu)
    assert cpu.memory.dirty_pages() == {5}


def test_boot_rejects_an_image_outside_ram() -> None:
    with pytest.raises(ImageError, match="RAM"):
        Cpu.boot(Image(0x3FF000, b"\x00" * 0x2000, 0x3FF000), memory_size=4 << 20)


def test_reset_state(fast: bool) -> None:
    cpu = Cpu.boot(image(".org 0x2000\n.entry s\nnop\ns: hlt"), memory_size=1 << 20, fast=fast)
    s = cpu.state
    assert (s.eip, s.regs[4], s.eflags, s.cs, s.cr0, s.idtr_limit, s.timer_period) == (
        0x2001,
        1 << 20,
        0,
        0,
        1,
        0,
        0,
    )


def test_run_image_json_shape(fast: bool) -> None:
    src = """
.entry start
start:  mov esi, msg
.next:  movzx eax, byte [esi]
        test eax, eax
        je .done
        out 0x3F8, eax
        inc esi
        jmp .next
.done:  in eax, 0x3F8
        out 0x3F8, eax
        in eax, 0x3F8
        out 0xF4, eax
msg:    .asciz "hi\\xe9"
"""
    result = run_image(image(src), input=b"!", fast=fast)
    data = result.to_json()
    assert data["console"] == "hié!"
    assert data["exit"] == {"reason": "poweroff", "code": 0xFF, "detail": "power off with code 255"}
    assert list(data["registers"]) == [
        "eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eip", "eflags", "cs", "cr0", "cr2", "cr3",
    ]  # fmt: skip
    guest = data["stats"]["guest"]
    assert set(guest) == {"retired", "retired_by_ring", "virtual_time", "exceptions", "interrupts", "io"}
    assert guest["retired_by_ring"] == {"0": guest["retired"], "1": 0, "2": 0, "3": 0}
    assert {"wall_seconds", "runs", "blocks_compiled", "block_cache_hits", "block_invalidations"} <= set(
        data["stats"]["host"]
    )


def test_run_image_reasons(fast: bool) -> None:
    assert run_image(image(".entry s\ns: hlt"), fast=fast).reason == "halt"
    limited = run_image(image(".entry s\ns: jmp s"), max_instructions=500, fast=fast)
    assert (limited.reason, limited.stats.retired) == ("limit", 500)
    shut = run_image(image(".entry s\ns: .byte 0"), fast=fast)  # #UD, no IDT: triple fault
    assert shut.reason == "shutdown" and "triple fault" in shut.detail
