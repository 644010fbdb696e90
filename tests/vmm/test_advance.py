"""``VM.advance``: the VMM's main loop runs a budget of instructions, handling every exit - and
stops early, at an exit, when the caller's ``until`` says so (the services bound the host time
of a stretched slice with it)."""

from __future__ import annotations

from ringlab.asm import assemble
from ringlab.vmm import VM, make_technique

EXITS_FOREVER = "top:\n    out 0x99, eax\n    jmp top\n"


def test_advance_runs_its_whole_budget_through_every_exit() -> None:
    vm = VM(assemble(EXITS_FOREVER), make_technique("native"))
    assert vm.advance(1_000) is None
    assert vm.cpu.stats.retired == 1_000


def test_advance_stops_at_the_first_exit_after_until_turns_true() -> None:
    vm = VM(assemble(EXITS_FOREVER), make_technique("native"))
    asked: list[int] = []

    def until() -> bool:
        asked.append(vm.cpu.stats.retired)
        return len(asked) == 3

    assert vm.advance(1_000, until) is None
    assert asked == [1, 3, 5]  # asked after each exit (every other instruction is an out)
    assert vm.cpu.stats.retired == 5  # and it stopped there, long before its budget
