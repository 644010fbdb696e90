"""Why ``Cpu.run`` returned (``Exit``) and what a VMM asks the core to intercept (``Controls``).

The core runs until an exit, like ``KVM_RUN``; each reason says what state the CPU is in and
what the caller must do before the next ``run``.  A VMM layer (trap-and-emulate, binary
translation, paravirt, VT-x-like hardware) drives the core only through these, the
``CpuState`` it exports and imports, and the small set of ``Cpu`` helpers for emulation
(``retire``, ``inject``, ``complete_in``, ``flush_tlb``, ``invalidate_page``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ringlab.isa import Instruction, Spec

__all__ = ["Controls", "Exit", "ExitReason"]


class ExitReason(enum.Enum):
    IO_OUT = "io_out"
    """``out`` to a port the core does not model; it has retired.  Fields: port, value."""
    IO_IN = "io_in"
    """``in`` from such a port; it has retired; call ``cpu.complete_in(value)`` before the next
    ``run``.  Fields: port, register."""
    HALT = "halt"
    """``hlt`` with IF = 0 or the timer off: the machine stops (the ``hlt`` retired)."""
    SHUTDOWN = "shutdown"
    """Triple fault.  Field: detail."""
    BUDGET = "budget"
    """``budget`` instructions retired."""
    EXCEPTION = "exception"
    """A vector in ``Controls.intercept_vectors`` was raised and not delivered; the state is as
    before the faulting instruction (for ``int n``, ``eip`` at the ``int``).  Fields: vector,
    error_code, cr2 (#PF), delivering (the vector whose delivery faulted, if any)."""
    INSTRUCTION = "instruction"
    """An intercepted instruction is about to execute (before any check); the state is before
    it.  Fields: instruction, eip."""
    IDLE = "idle"
    """``hlt`` with IF = 1 and ``Controls.exit_on_idle_hlt``: it retired; virtual time has not
    jumped yet (the next ``run`` does that first, unless the VMM clears ``state.halted``)."""


@dataclass(frozen=True)
class Exit:
    reason: ExitReason
    port: int | None = None
    value: int | None = None
    register: int | None = None
    """Register number (``isa.REGISTERS`` index) an ``IO_IN`` completes."""
    vector: int | None = None
    error_code: int | None = None
    cr2: int | None = None
    delivering: int | None = None
    instruction: Instruction | None = None
    eip: int | None = None
    detail: str = ""

    # -- the fields a reason sets (``ExitReason``), narrowed: one missing is a bug in the core ----
    def io_out(self) -> tuple[int, int]:
        """``IO_OUT``: the port and the value written."""
        if self.port is None or self.value is None:
            raise self._missing("port and value")
        return self.port, self.value

    def io_in_port(self) -> int:
        """``IO_IN``: the port read."""
        if self.port is None:
            raise self._missing("port")
        return self.port

    def exception_at(self) -> tuple[int, int]:
        """``EXCEPTION``: the vector and the ``eip`` of the instruction it was raised at."""
        if self.vector is None or self.eip is None:
            raise self._missing("vector and eip")
        return self.vector, self.eip

    def intercepted(self) -> tuple[Instruction, int]:
        """``INSTRUCTION``: the intercepted instruction and its ``eip``."""
        if self.instruction is None or self.eip is None:
            raise self._missing("instruction and eip")
        return self.instruction, self.eip

    def _missing(self, fields: str) -> AssertionError:
        return AssertionError(f"an {self.reason.value} exit without its {fields}: {self}")


@dataclass(frozen=True)
class Controls:
    """What a VMM layer asks the core to intercept.  The defaults are a bare machine."""

    intercept_vectors: frozenset[int] = field(default_factory=frozenset)
    """Exceptions, ``int n`` vectors and the timer (32) that exit instead of being delivered."""
    intercept_mnemonics: frozenset[str] = field(default_factory=frozenset)
    """Mnemonics that exit before they execute.  An entry may name one operand form as
    ``"mnemonic form"`` (``"mov cr,r"``: writes to control registers only)."""
    intercept_io: bool = False
    """Every ``in``/``out`` exits, the timer and POST ports included (after the IOPL check)."""
    exit_on_idle_hlt: bool = False
    vmx_nonroot: bool = False
    """VMX non-root mode: ``vmcall`` exits as ``INSTRUCTION`` instead of raising #UD."""
    cpuid_hypervisor_bit: bool = False
    """``cpuid`` leaf 1 ``ecx`` bit 31."""

    def intercepts(self, spec: Spec) -> bool:
        names = self.intercept_mnemonics
        if spec.mnemonic in names or f"{spec.mnemonic} {spec.form.value}" in names:
            return True
        return spec.mnemonic == "vmcall" and self.vmx_nonroot
