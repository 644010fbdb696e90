"""Faults: how the core signals an exception internally.

A ``Fault`` is raised by the MMU, the memory and the instruction semantics, and caught by the
CPU loop, which either delivers it through the IDT or, when a VMM intercepts its vector, turns
it into an ``Exit``.  Guest misbehaviour never escapes the core as a Python exception.
"""

from __future__ import annotations

__all__ = ["DE", "DF", "GP", "MC", "PF", "TIMER", "UD", "Fault", "HAS_ERROR_CODE"]

DE = 0
"""#DE: divide by zero."""
UD = 6
"""#UD: undefined opcode, or ``vmcall`` outside VMX non-root mode."""
DF = 8
"""#DF: a fault while delivering an exception."""
GP = 13
"""#GP: privilege violations and bad IDT gates."""
PF = 14
"""#PF: page fault (error code bits: 0 present, 1 write, 2 user)."""
MC = 18
"""#MC: an access to physical memory that does not exist."""
TIMER = 32
"""The timer's interrupt vector."""

HAS_ERROR_CODE = frozenset({DF, GP, PF})
"""Exceptions that push an error code (``int n`` never does)."""


class Fault(Exception):
    """An exception raised by the guest's instruction.  ``cr2`` is set for #PF only."""

    def __init__(self, vector: int, error_code: int | None = None, cr2: int | None = None) -> None:
        super().__init__(vector, error_code, cr2)
        self.vector = vector
        self.error_code = error_code
        self.cr2 = cr2

    def __repr__(self) -> str:
        return f"Fault(vector={self.vector}, error_code={self.error_code}, cr2={self.cr2})"
