"""Running one instruction, or one event delivery, with the core's own semantics.

A VMM that emulates an instruction must not re-implement it: ``execute`` runs the core's handler
for it (``machine.interpreter.HANDLERS``) exactly as ``Cpu.step`` does after its privilege
checks, and retires it at the ring the caller names (the real ring it ran at).  Together with
``vcpu.guest_view`` this is "emulate against the virtual state".
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from ringlab.isa import MASK32, Instruction
from ringlab.machine.cpu import Cpu
from ringlab.machine.exits import Exit
from ringlab.machine.faults import Fault
from ringlab.machine.interpreter import HANDLERS

__all__ = ["execute", "no_intercepts"]


def execute(cpu: Cpu, insn: Instruction, eip: int, ring: int) -> Exit | None:
    """Run ``insn`` (at ``eip``) through the core's handler; a fault is raised as the CPU would."""
    try:
        outcome = HANDLERS[insn.spec.opcode](cpu, insn, eip, (eip + insn.length) & MASK32)
    except Fault as fault:
        return cpu.exception(fault, eip)
    if outcome is None:
        cpu.retire(ring)
        return None
    if outcome is True:
        return None
    assert not isinstance(outcome, bool)
    return outcome


def no_intercepts(cpu: Cpu) -> AbstractContextManager[None]:
    """Deliver events as bare hardware would (#DF, triple fault) while the VMM reflects one."""
    return cpu.without_intercepts()
