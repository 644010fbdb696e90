"""Virtual time, rdtsc and the timer (docs/machine.md "Devices" and "Precise rules > Time").

Virtual time = instructions retired + time skipped in hlt.  rdtsc returns the time before its own
retirement.  After ``out 0x40, N`` retires (at time T0) ticks fall at T0 + k*N; a tick is taken
before the next instruction once IF = 1, so a handler's first ``rdtsc`` reads the tick's time
(delivery retires nothing).  The idiom

    rdtsc              ; t      (t+1 after)
    mov esi, eax       ;        (t+2)
    add esi, 4         ;        (t+3)
    out 0x40, ebx      ; T0 = t+4 = esi

leaves T0 in esi.
"""

from __future__ import annotations

from .conftest import at_ring, frame, gate, kernel, rec_gate, regs, run

ARM = """
        rdtsc
        mov esi, eax
        add esi, 4
        out 0x40, ebx
"""


def test_rdtsc_first_instruction_reads_zero():
    r = regs("""
        rdtsc
        out 0xF4, eax
    """)
    assert (r["eax"], r["edx"]) == (0, 0)


def test_rdtsc_returns_time_before_its_own_retirement():
    r = regs("""
        rdtsc          ; 0
        mov esi, eax   ; retired: 2
        nop
        nop            ; retired: 4
        rdtsc          ; reads 4
        out 0xF4, eax
    """)
    assert r["esi"] == 0
    assert r["eax"] == 4
    assert r["edx"] == 0


def test_timer_first_tick_after_n_retired_instructions():
    # out retires at T0; 5 further instructions (n1..n5) retire; the tick is taken before n6
    src = kernel(
        """
        sti
        mov ebx, 5
"""
        + ARM
        + """
    n1: nop
    n2: nop
    n3: nop
    n4: nop
    n5: nop
    n6: nop
    n7: nop
        jmp n7
    tick:
        rdtsc
        sub eax, esi
        mov ecx, [esp]
        out 0xF4, eax
    """,
        gates={32: gate("tick")},
    )
    r = run(src)
    assert r["registers"]["eax"] == 5
    assert r["registers"]["ecx"] == r["sym"]["n6"]


def test_timer_ticks_fall_at_fixed_multiples():
    src = kernel(
        """
        sti
        mov edi, buf
        mov ebx, 20
"""
        + ARM
        + """
    waitl:
        cmp edi, buf + 12
        jne waitl
        mov eax, [buf]
        mov ebx, [buf + 4]
        mov ecx, [buf + 8]
        out 0xF4, eax
    tick:
        rdtsc
        sub eax, esi
        mov [edi], eax
        add edi, 4
        iret
    .align 4
    buf: .space 16
    """,
        gates={32: gate("tick")},
    )
    reg = run(src)["registers"]
    assert (reg["eax"], reg["ebx"], reg["ecx"]) == (20, 40, 60)


def test_ticks_while_one_is_pending_are_lost_and_do_not_shift_later_ticks():
    # Period 20: ticks at T0+20, 40, 60, 80 ...  The first handler runs 50 instructions with IF = 0
    # (T0+20 .. T0+70): the ticks at 40 and 60 leave one pending tick, taken right after its iret
    # at T0+70.  That short handler (7 instructions) ends at 77; the next tick falls at 80 (a fixed
    # multiple: not 77 as if the lost tick were kept, not 90 as if delivery restarted the period).
    src = kernel(
        """
        sti
        mov edi, buf
        mov ebx, 20
"""
        + ARM
        + """
    waitl:
        cmp edi, buf + 12
        jne waitl
        mov eax, [buf]
        mov ebx, [buf + 4]
        mov ecx, [buf + 8]
        out 0xF4, eax
    tick:
        rdtsc                 ; 1
        sub eax, esi          ; 2
        mov [edi], eax        ; 3
        add edi, 4            ; 4
        cmp edi, buf + 4      ; 5
        jne tk_short          ; 6
        mov ecx, 21           ; 7
    spin:
        dec ecx
        jnz spin              ; 7 + 42 = 49
    tk_short:
        iret                  ; long: 50, short: 7
    .align 4
    buf: .space 16
    """,
        gates={32: gate("tick")},
    )
    reg = run(src)["registers"]
    assert (reg["eax"], reg["ebx"], reg["ecx"]) == (20, 70, 80)


def test_writing_timer_port_discards_a_pending_tick():
    # IF = 0: the tick at T0+10 stays pending; rewriting port 0x40 discards it and restarts the
    # period, so after sti the first tick falls 10 instructions after the second out.
    src = kernel(
        """
        cli
        mov ebx, 10
        out 0x40, ebx
        mov ecx, 10
    spin:
        dec ecx
        jnz spin              ; 20 instructions: the first tick is pending
"""
        + ARM
        + """
        sti
    idle:
        jmp idle
    tick:
        rdtsc
        sub eax, esi
        out 0xF4, eax
    """,
        gates={32: gate("tick")},
    )
    assert run(src)["registers"]["eax"] == 10


def test_pending_tick_is_taken_once_if_becomes_1_with_no_sti_shadow():
    src = kernel(
        """
        mov ebx, 3
        out 0x40, ebx
        nop
        nop
        nop
        nop                   ; tick at +3 is pending (IF = 0)
        sti
    after_sti:
        mov edx, 1
    idle:
        jmp idle
    tick:
        mov ecx, [esp]
        out 0xF4, eax
    """,
        gates={32: gate("tick")},
    )
    r = run(src)
    assert r["registers"]["ecx"] == r["sym"]["after_sti"]
    assert r["registers"]["edx"] == 0


def test_timer_period_zero_turns_it_off():
    src = kernel(
        """
        sti
        mov ebx, 5
        out 0x40, ebx
        mov ebx, 0
        out 0x40, ebx
        mov ecx, 20
    spin:
        dec ecx
        jnz spin
        out 0xF4, eax
    tick:
        mov ecx, 0xBAD
        out 0xF4, eax
    """,
        gates={32: gate("tick")},
    )
    r = run(src)
    assert r["registers"]["ecx"] == 0


def test_timer_interrupt_frame_and_interrupt_gate_clears_if():
    src = kernel(
        """
        mov esp, 0x3FF00
        sti
        mov ebx, 4
        out 0x40, ebx
    l:  jmp l
    """,
    )
    r = run(src)
    rec = r["rec"]
    assert rec["vec"] == 32
    assert rec["esp"] == 0x3FF00 - 12  # no error code
    f = frame(rec, err=False)
    assert f["eip"] == r["sym"]["l"]
    assert f["eflags"] == 0x200
    assert not rec["hfl"] & 0x200


def test_timer_ignores_gate_dpl_at_ring3():
    # gate 32 has DPL 0; int 32 from ring 3 would #GP, the timer does not
    src = at_ring(
        3,
        """
        mov ebx, 0
    l:  inc ebx
        jmp l
    """,
        pre="    mov ebx, 10\n    out 0x40, ebx\n",
        if_=True,
    )
    r = run(src)
    rec = r["rec"]
    assert rec["vec"] == 32, r["console"]
    f = frame(rec, err=False)
    assert f["cs"] == 3
    assert f["esp"] == r["sym"]["rl_ustack_top"]
    assert rec["esp"] == r["sym"]["rl_kstack0_top"] - 16


def test_timer_through_not_present_gate_raises_gp_258_as_itself():
    src = kernel(
        """
        sti
        mov ebx, 3
        out 0x40, ebx
    l:  jmp l
    """,
        gates={32: None},
    )
    r = run(src)
    rec = r["rec"]
    assert rec["vec"] == 13, r["console"]
    f = frame(rec, err=True)
    assert f["err"] == 32 * 8 + 2
    assert f["eip"] == r["sym"]["l"]


def test_timer_gate_ring_above_cpl_raises_gp_258():
    src = kernel(
        """
        sti
        mov ebx, 3
        out 0x40, ebx
    l:  jmp l
    """,
        gates={32: rec_gate(32, ring=3, dpl=3)},
    )
    r = run(src)
    assert r["rec"]["vec"] == 13
    assert r["rec"]["s0"] == 258


def test_cr8_does_not_mask_the_timer():
    src = kernel(
        """
        mov eax, 15
        mov cr8, eax
        sti
        mov ebx, 5
        out 0x40, ebx
    l:  jmp l
    """,
    )
    assert run(src)["rec"]["vec"] == 32


def test_timer_tick_waits_while_if_is_0_then_is_taken_after_sti():
    src = kernel(
        """
        mov ebx, 5
"""
        + ARM
        + """
        mov ecx, 10
    spin:
        dec ecx
        jnz spin              ; T0 + 21
        sti                   ; T0 + 22: the tick (pending since T0+5) is taken right after
    l:  jmp l
    tick:
        rdtsc
        sub eax, esi
        out 0xF4, eax
    """,
        gates={32: gate("tick")},
    )
    assert run(src)["registers"]["eax"] == 22


def test_in_timer_port_reads_current_period():
    r = regs("""
        in ecx, 0x40
        mov ebx, 1234
        out 0x40, ebx
        in eax, 0x40
        out 0xF4, eax
    """)
    assert r["ecx"] == 0
    assert r["eax"] == 1234


# ---------------------------------------------------------------- hlt


def test_hlt_with_if_jumps_time_to_next_tick_and_saves_eip_after_hlt():
    src = kernel(
        """
        sti
        mov ebx, 100
"""
        + ARM
        + """
        nop
        hlt                   ; retires at T0+2, time jumps to T0+100
    after:
        jmp after
    tick:
        rdtsc
        sub eax, esi
        mov ecx, [esp]
        out 0xF4, eax
    """,
        gates={32: gate("tick")},
    )
    r = run(src)
    assert r["registers"]["eax"] == 100
    assert r["registers"]["ecx"] == r["sym"]["after"]


def test_hlt_retires_one_unit_before_time_jumps():
    # retired: prelude 6, sti, mov, out, hlt, iret (handler), rdtsc, out = 13.
    # virtual time: out retires at 9 = T0; hlt retires (10), jumps to T0+50 = 59; iret -> 60;
    # rdtsc reads 60.
    src = kernel(
        """
        sti
        mov ebx, 50
        out 0x40, ebx
        hlt
        rdtsc
        out 0xF4, eax
    tick:
        iret
    """,
        gates={32: gate("tick")},
    )
    r = run(src)
    assert r["registers"]["eax"] == 60
    assert r["stats"]["guest"]["retired"] == 13


def test_time_continues_after_hlt_skip():
    src = kernel(
        """
        sti
        mov ebx, 50
"""
        + ARM
        + """
        hlt                   ; T0+1, jumps to T0+50, handler: iret (1) -> T0+51
        rdtsc                 ; reads T0+51
        sub eax, esi
        out 0xF4, eax
    tick:
        iret
    """,
        gates={32: gate("tick")},
    )
    assert run(src)["registers"]["eax"] == 51


def test_hlt_with_if_0_halts_the_machine():
    r = run("""
        mov ebx, 5
        out 0x40, ebx
        hlt
        mov eax, 1
        out 0xF4, eax
    """)
    assert r["exit"]["reason"] == "halt"
    assert r["registers"]["eax"] == 0


def test_hlt_with_if_1_and_timer_off_halts_the_machine():
    r = run("""
        push 0x200
        popf
        hlt
        mov eax, 1
        out 0xF4, eax
    """)
    assert r["exit"]["reason"] == "halt"
    assert r["registers"]["eflags"] == 0x200


# ---------------------------------------------------------------- --max-instructions


def test_max_instructions_stops_with_limit():
    r = run(
        """
    l:  jmp l
    """,
        max_instructions=1000,
    )
    assert r["exit"]["reason"] == "limit"
    assert r["stats"]["guest"]["retired"] == 1000


def test_max_instructions_counts_retired_instructions_only():
    # prelude: 6 instructions (mov esp, lidt, mov, ltr, mov, jmp); main: 1.
    # each iteration: div faults (not retired), handler mov+iret (2), inc ecx, jmp again (2).
    # 7 + 4*10 + 2 retired: ten full iterations, the 11th div faulted and the handler returned.
    src = kernel(
        """
        mov ebx, 0
    again:
        div ebx
    after_div:
        inc ecx
        jmp again
    de:
        mov [esp], after_div
        iret
    """,
        gates={0: gate("de")},
    )
    r = run(src, max_instructions=7 + 40 + 2)
    assert r["exit"]["reason"] == "limit"
    assert r["registers"]["ecx"] == 10
    assert r["registers"]["eip"] == r["sym"]["after_div"]


def test_max_instructions_ignores_time_skipped_in_hlt():
    # the hlt skips ~10000 units of virtual time, but only about 20 instructions retire
    src = kernel(
        """
        sti
        mov ebx, 10000
        out 0x40, ebx
        hlt
    idle2:
        jmp idle2
    tick:
        rdtsc
        out 0xF4, eax
    """,
        gates={32: gate("tick")},
    )
    r = run(src, max_instructions=50)
    assert r["exit"]["reason"] == "poweroff"
    assert r["registers"]["eax"] == 9 + 10000


def test_pending_tick_is_taken_right_after_popf_sets_if():
    src = kernel(
        """
        mov ebx, 2
        out 0x40, ebx
        nop
        nop
        nop                   ; tick pending, IF = 0
        push 0x200
        popf
    after_popf:
        mov edx, 1
    idle3:
        jmp idle3
    tick:
        mov ecx, [esp]
        out 0xF4, eax
    """,
        gates={32: gate("tick")},
    )
    r = run(src)
    assert r["registers"]["ecx"] == r["sym"]["after_popf"]
    assert r["registers"]["edx"] == 0


def test_fault_while_delivering_the_timer_is_delivered_as_itself():
    # ring 3 with IF = 1; the timer's ring-0 gate needs esp0, which is beyond RAM: the push
    # raises #MC, delivered as #MC (not #DF) through a ring-3 gate on the user stack.
    src = at_ring(
        3,
        """
        mov esp, 0x3E000
    spin3:
        jmp spin3
    """,
        pre="    mov [rl_tss + 4], 0x80000\n    mov ebx, 10\n    out 0x40, ebx\n",
        iopl=3,
        if_=True,
        gates={18: rec_gate(18, ring=3)},
    )
    r = run(src, memory_size=0x40000)
    rec = r["rec"]
    assert rec["vec"] == 18, r["console"]
    assert rec["hcs"] == 3
    assert rec["esp"] == 0x3E000 - 12
    f = frame(rec, err=False)
    assert (f["eip"], f["cs"]) == (r["sym"]["spin3"], 3)


def test_max_instructions_stops_mid_straight_line_code():
    r = run(
        """
        inc eax
        inc eax
        inc eax
        inc eax
        inc eax
    sixth:
        inc eax
        inc eax
        out 0xF4, eax
    """,
        max_instructions=5,
    )
    assert r["exit"]["reason"] == "limit"
    assert r["registers"]["eax"] == 5
    assert r["registers"]["eip"] == r["sym"]["sixth"]
