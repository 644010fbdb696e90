"""Why ``Cpu.run`` returned (an ``Exit``) and what a VMM asks the core to intercept (``Controls``).

The core runs until an exit, like ``KVM_RUN``; each exit says what state the CPU is in and what
the caller must do before the next ``run``.  ``Exit`` is a closed set of small frozen classes, one
per ``ExitReason``, each with exactly the fields its reason has (Firecracker's ``VcpuExit`` sum
type): a VMM dispatches with class patterns, ``match exit: case IoOut(port=p, value=v): ...``.
Each class's ``reason`` (a class attribute) is its ``ExitReason``, the key exits are counted by
and the proto's ``ExitReason`` (``rpc/convert.py``); it is typed as a ``Literal``, so a type checker
narrows ``exit`` on ``exit.reason is ExitReason.IO_IN`` as on ``isinstance(exit, IoIn)``.

A VMM layer (trap-and-emulate, binary translation, paravirt, VT-x-like hardware) drives the
core only through these, the ``CpuState`` it exports and imports, and the small set of ``Cpu``
helpers for emulation (``retire``, ``inject``, ``complete_in``, ``flush_tlb``,
``invalidate_page``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import ClassVar, Literal, TypeAlias

from ringlab.isa import Instruction, Spec

__all__ = [
    "Budget",
    "Controls",
    "Exit",
    "ExitReason",
    "Halt",
    "Idle",
    "Intercept",
    "IoIn",
    "IoOut",
    "Raised",
    "Shutdown",
]


class ExitReason(enum.Enum):
    """Why the core exited: one per ``Exit`` class (its ``reason``)."""

    IO_OUT = "io_out"
    """``IoOut``."""
    IO_IN = "io_in"
    """``IoIn``."""
    HALT = "halt"
    """``Halt``."""
    SHUTDOWN = "shutdown"
    """``Shutdown``."""
    BUDGET = "budget"
    """``Budget``."""
    EXCEPTION = "exception"
    """``Raised``."""
    INSTRUCTION = "instruction"
    """``Intercept``."""
    IDLE = "idle"
    """``Idle``."""


@dataclass(frozen=True, slots=True)
class IoOut:
    """``out`` to a port the core does not model (every port under ``Controls.intercept_io``);
    it has retired."""

    reason: ClassVar[Literal[ExitReason.IO_OUT]] = ExitReason.IO_OUT
    port: int
    value: int
    """The value written (the whole register)."""
    eip: int
    """The ``out``'s address."""


@dataclass(frozen=True, slots=True)
class IoIn:
    """``in`` from such a port; it has retired; call ``cpu.complete_in(value)`` before the next
    ``run``."""

    reason: ClassVar[Literal[ExitReason.IO_IN]] = ExitReason.IO_IN
    port: int
    register: int
    """Register number (``isa.REGISTERS`` index) the ``in`` completes."""
    eip: int
    """The ``in``'s address."""


@dataclass(frozen=True, slots=True)
class Halt:
    """``hlt`` with IF = 0 or the timer off: the machine stops (the ``hlt`` retired)."""

    reason: ClassVar[Literal[ExitReason.HALT]] = ExitReason.HALT
    eip: int
    """The ``hlt``'s address."""
    detail: str


@dataclass(frozen=True, slots=True)
class Shutdown:
    """Triple fault: ``vector`` was raised while delivering #DF for the instruction at ``eip``."""

    reason: ClassVar[Literal[ExitReason.SHUTDOWN]] = ExitReason.SHUTDOWN
    vector: int
    eip: int
    detail: str


@dataclass(frozen=True, slots=True)
class Budget:
    """``budget`` instructions retired (or, from a VMM's loop, it hands back to the caller)."""

    reason: ClassVar[Literal[ExitReason.BUDGET]] = ExitReason.BUDGET


@dataclass(frozen=True, slots=True)
class Raised:
    """A vector in ``Controls.intercept_vectors`` was raised (an exception, ``int n`` or the
    timer) and not delivered; the state is as before the faulting instruction (for ``int n``,
    ``eip`` at the ``int``)."""

    reason: ClassVar[Literal[ExitReason.EXCEPTION]] = ExitReason.EXCEPTION
    vector: int
    eip: int
    """The instruction it was raised at (for the timer, the one it fell before)."""
    error_code: int | None = None
    """The exception's error code, None for one that pushes none (``int n``, the timer)."""
    cr2: int | None = None
    """The faulting address of a #PF, else None."""
    delivering: int | None = None
    """The vector whose delivery raised this one, None when the instruction itself did."""
    chain: tuple[int, ...] = ()
    """The exceptions the core counted, in this attempt, for the events before this one (the
    fault that started an escalation, the #DF it became): a VMM that retries the instruction
    uncounts them, since the retry raises and counts them again."""
    tick: bool = False
    """The timer's tick is in it: with ``vector`` TIMER, this is the tick itself, intercepted
    (not an ``int 32`` at ``eip``, which exits with the same vector); with another vector, the
    attempt began with the pending tick, which the core left pending: a retry takes it again; a
    VMM that makes the delivery go on instead consumes it (``timer_pending``)."""


@dataclass(frozen=True, slots=True)
class Intercept:
    """An intercepted instruction (``Controls.intercept_mnemonics``, ``vmcall`` in VMX non-root
    mode) is about to execute, before any check; the state is before it."""

    reason: ClassVar[Literal[ExitReason.INSTRUCTION]] = ExitReason.INSTRUCTION
    instruction: Instruction
    eip: int


@dataclass(frozen=True, slots=True)
class Idle:
    """``hlt`` with IF = 1 and ``Controls.exit_on_idle_hlt``: it retired; virtual time has not
    jumped yet (the next ``run`` does that first, unless the VMM clears ``state.halted``)."""

    reason: ClassVar[Literal[ExitReason.IDLE]] = ExitReason.IDLE
    eip: int | None = None
    """The ``hlt``'s address; None when a VMM emulated the ``hlt`` (``VM.advance``)."""


Exit: TypeAlias = IoOut | IoIn | Halt | Shutdown | Budget | Raised | Intercept | Idle
"""Why ``Cpu.run`` returned: one of these classes, matched with class patterns."""


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
    """VMX non-root mode: ``vmcall`` exits (``Intercept``) instead of raising #UD."""
    cpuid_hypervisor_bit: bool = False
    """``cpuid`` leaf 1 ``ecx`` bit 31."""
    guest_perms: bool = False
    """Shadow paging: the TLB's entries carry the guest's own U|W, and a fault they allow keeps
    the entry (``Mmu.guest_perms``)."""

    def intercepts(self, spec: Spec) -> bool:
        names = self.intercept_mnemonics
        if spec.mnemonic in names or f"{spec.mnemonic} {spec.form.value}" in names:
            return True
        return spec.mnemonic == "vmcall" and self.vmx_nonroot
