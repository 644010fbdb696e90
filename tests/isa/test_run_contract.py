"""The run contract's JSON object (docs/machine.md "Running a program")."""

from __future__ import annotations

from .conftest import at_ring, kernel, run

REGISTERS = {
    "eax",
    "ebx",
    "ecx",
    "edx",
    "esi",
    "edi",
    "ebp",
    "esp",
    "eip",
    "eflags",
    "cs",
    "cr0",
    "cr2",
    "cr3",
}


def test_json_shape_on_poweroff():
    r = run("""
        mov eax, 'o'
        out 0x3F8, eax
        mov eax, 0x103
        out 0xF4, eax
    """)
    assert set(r) >= {"console", "exit", "registers", "stats"}
    assert isinstance(r["console"], str)
    assert r["console"] == "o"
    assert set(r["exit"]) == {"reason", "code", "detail"}
    assert r["exit"]["reason"] == "poweroff"
    assert r["exit"]["code"] == 3
    assert isinstance(r["exit"]["detail"], str)
    assert set(r["registers"]) >= REGISTERS
    assert all(isinstance(v, int) for v in r["registers"].values())
    assert set(r["stats"]) >= {"guest", "host"}


def test_final_registers_are_the_state_after_the_power_off_out_retired():
    r = run("""
        mov ebx, 17
        out 0xF4, ebx
    done:
    """)
    assert r["registers"]["ebx"] == 17
    assert r["registers"]["eip"] == r["sym"]["done"]


def test_exit_halt_has_reason_halt():
    r = run("""
        hlt
    """)
    assert r["exit"]["reason"] == "halt"


def test_exit_limit_on_max_instructions():
    r = run(
        """
    spin:
        jmp spin
    """,
        max_instructions=500,
    )
    assert r["exit"]["reason"] == "limit"
    assert r["registers"]["eip"] == r["sym"]["spin"]


def test_exit_shutdown_on_triple_fault():
    # no IDT at all (idtr limit 0): #UD -> #GP -> #DF -> shutdown
    r = run("""
        vmcall
    """)
    assert r["exit"]["reason"] == "shutdown"
    assert isinstance(r["exit"]["detail"], str)


def test_registers_show_real_cs_at_ring3_end():
    # max-instructions stops the guest while it spins at ring 3: cs shows CPL 3
    r = run(at_ring(3, "spin3: jmp spin3\n"), max_instructions=300)
    assert r["exit"]["reason"] == "limit"
    assert r["registers"]["cs"] == 3
    assert r["registers"]["eip"] == r["sym"]["spin3"]


def test_stats_guest_retired_by_ring_sums_to_retired():
    # prelude 6 + to_ring 5 at ring 0; the rest (at least 7) at ring 3 (limit 18)
    r = run(at_ring(3, "spin3: jmp spin3\n"), max_instructions=18)
    guest = r["stats"]["guest"]
    assert guest["retired"] == 18
    assert sum(guest["retired_by_ring"].values()) == 18
    assert guest["retired_by_ring"]["3"] >= 7


def test_registers_eflags_cr0_cr2_cr3_after_paging_fault_handler():
    r = run(
        kernel(
            """
        mov eax, [0x400000]
    """,
            paging=True,
        )
    )
    assert r["rec"]["vec"] == 14
    assert r["registers"]["cr2"] == 0x400000
    assert r["registers"]["cr0"] == 0x80000001
    assert r["registers"]["cr3"] == r["sym"]["rl_pd"]
