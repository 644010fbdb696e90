"""The core's devices: the timer (port 0x40) and POST (0x80); hlt; virtual time."""

from __future__ import annotations

from ringlab.machine import Controls, ExitReason
from tests.machine.conftest import IF, boot, gate, kernel, reg, run, run_to_halt, stack, sym


def test_first_tick_falls_n_instructions_after_the_out_retires(fast: bool) -> None:
    # out 0x40, eax (period 5) then nops with IF = 1: the tick interrupts after 5 more retire
    body = """        mov eax, 5
        sti
        out 0x40, eax
n1:     nop
n2:     nop
n3:     nop
n4:     nop
n5:     nop
n6:     nop
n7:     nop"""
    src = kernel(body)
    cpu = run_to_halt(src, fast)
    assert stack(cpu, 1) == [sym(src, "n6")]
    assert cpu.stats.interrupts == 1


def test_ticks_fall_at_fixed_multiples_and_only_one_is_pending(fast: bool) -> None:
    # period 10, IF = 0 for 32 instructions: ticks at T+10, T+20, T+30 -> one pending, two
    # lost; sti takes it at once; the next tick still falls at T+40 (lost ticks do not shift)
    body = """        mov eax, 10
        out 0x40, eax
        rdtsc                   ; T: the time after the out retired
        mov ebp, eax
        mov ecx, 14
.spin:  dec ecx
        jne .spin
        sti
.idle:  jmp .idle"""
    tail = """tick:   rdtsc
        mov [times + edi], eax
        add edi, 4
        cmp edi, 8
        je .stop
        iret
.stop:  hlt
times:  .space 8"""
    src = kernel(body, gates={32: gate("tick")}, tail=tail)
    cpu = run_to_halt(src, fast)
    t = reg(cpu, "ebp")
    first, second = (cpu.memory.read32(sym(src, "times") + 4 * i) for i in range(2))
    assert first == t + 3 + 28 + 1  # rdtsc, mov ebp, mov ecx, the spin, sti
    assert second == t + 40
    assert cpu.stats.interrupts == 2


def test_tick_timing_is_exact(fast: bool) -> None:
    # each tick handler records rdtsc: ticks fall at T+10, T+20, ... where T = time after the out
    body = """        mov eax, 10
        out 0x40, eax
        rdtsc                   ; T: rdtsc reads the time before itself
        mov ebp, eax
        sti
.idle:  jmp .idle"""
    tail = """tick:   rdtsc
        mov [times + edi], eax
        add edi, 4
        cmp edi, 12
        je .stop
        iret
.stop:  hlt
times:  .space 12"""
    src = kernel(body, gates={32: gate("tick")}, tail=tail)
    cpu = run_to_halt(src, fast)
    t_out = reg(cpu, "ebp")  # the time when the out had retired
    times = [cpu.memory.read32(sym(src, "times") + 4 * i) for i in range(3)]
    assert times == [t_out + 10, t_out + 20, t_out + 30]


def test_writing_the_timer_port_discards_a_pending_tick_and_in_reads_the_period(fast: bool) -> None:
    body = """        mov eax, 3
        out 0x40, eax
        nop
        nop
        nop
        nop                     ; a tick is pending (IF = 0)
        mov eax, 1000
        out 0x40, eax           ; discards it
        in ebx, 0x40
        sti
        nop
        cli
        hlt"""
    cpu = run_to_halt(kernel(body, gates={32: gate("fault_32")}), fast)
    assert cpu.stats.interrupts == 0
    assert reg(cpu, "ebx") == 1000


def test_hlt_with_if_jumps_time_to_the_next_tick(fast: bool) -> None:
    body = """        mov eax, 1000
        out 0x40, eax
        sti
        hlt
after:  nop"""
    src = kernel(body, gates={32: gate("fault_32")})
    cpu = run_to_halt(src, fast)
    assert stack(cpu, 1) == [sym(src, "after")]  # the saved eip is the one after hlt
    out_time = 5 + 2  # prelude (mov, lidt, mov, ltr, jmp) + mov eax + out
    assert cpu.state.tsc == out_time + 1000 + 1  # + the handler's hlt
    assert cpu.stats.idle == 1000 - 2


def test_hlt_with_if_clear_or_timer_off_halts(fast: bool) -> None:
    cpu = boot(kernel("        hlt"), fast)
    exit = run(cpu)
    assert exit.reason is ExitReason.HALT and "IF = 0" in exit.detail
    cpu = boot(kernel("        sti\n        hlt"), fast)
    exit = run(cpu)
    assert exit.reason is ExitReason.HALT and "timer off" in exit.detail
    assert cpu.stats.retired == 7  # hlt retires


def test_idle_hlt_exits_when_asked_and_the_next_run_waits_for_the_tick(fast: bool) -> None:
    body = "        mov eax, 100\n        out 0x40, eax\n        sti\n        hlt\nafter:  nop"
    src = kernel(body, gates={32: gate("fault_32")})
    cpu = boot(src, fast, controls=Controls(exit_on_idle_hlt=True))
    exit = run(cpu)
    assert exit.reason is ExitReason.IDLE
    assert cpu.state.halted and cpu.state.tsc == 9
    assert run(cpu).reason is ExitReason.HALT
    assert stack(cpu, 1) == [sym(src, "after")]
    assert cpu.state.tsc == 7 + 100 + 1


def test_timer_is_not_masked_by_cr8(fast: bool) -> None:
    body = "        mov eax, 0xFF\n        mov cr8, eax\n        mov ebx, cr8\n        mov eax, 2\n        out 0x40, eax\n        sti\n        nop\n        nop\n        nop"
    src = kernel(body, gates={32: gate("fault_32")})
    cpu = run_to_halt(src, fast)
    assert reg(cpu, "ebx") == 0xF
    assert cpu.stats.interrupts == 1


def test_post_port_and_no_interrupt_shadow_after_sti(fast: bool) -> None:
    # a tick pending under IF = 0 is taken right after sti, before the next instruction
    body = "        mov eax, 1\n        out 0x40, eax\n        out 0x80, eax\n        in ebx, 0x80\n        sti\nnext:   nop"
    src = kernel(body, gates={32: gate("fault_32")})
    cpu = run_to_halt(src, fast)
    assert stack(cpu, 3) == [sym(src, "next"), 0, IF]
    assert reg(cpu, "ebx") == 0
