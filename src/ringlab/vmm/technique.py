"""The techniques' names, and the one small protocol every technique implements (Xen-style: one
ops table per policy).

A technique says how the guest is deprivileged, what the core must intercept, how a slice of
guest execution runs, and handles every exit in ONE place (``handle``: one ``match`` over the
exit's class, ``machine.exits``, Firecracker-style), handing the exits every technique handles
alike to ``VM.common_exit``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ringlab.guestos.build import KernelFlavour
from ringlab.machine.exits import Controls, Exit
from ringlab.vmm.vcpu import Deprivilege

if TYPE_CHECKING:
    from ringlab.vmm.vm import VM

__all__ = ["TECHNIQUES", "Stop", "Technique", "TechniqueName", "default_kernel"]


class TechniqueName(enum.StrEnum):
    """The virtualization techniques, by the names every interface spells (``--technique``, a
    VM's definition, the JSON's ``stats.host.technique``); ``rpc.convert`` maps them to the proto."""

    NATIVE = "native"
    TRAP_EMULATE = "trap-emulate"
    BT = "bt"
    PV = "pv"
    HW = "hw"


TECHNIQUES: tuple[str, ...] = tuple(t.value for t in TechniqueName)
"""Every technique's name, in the order interfaces list them."""


def default_kernel(technique: str) -> str:
    """The guest OS kernel flavour a technique boots unless told otherwise: ``paravirt`` under
    ``pv`` (its guest must be ported to the hypercall ABI), ``stock`` under the others."""
    return KernelFlavour.PARAVIRT.value if technique == TechniqueName.PV else KernelFlavour.STOCK.value


@dataclass(frozen=True)
class Stop:
    """The run is over: docs/machine.md's exit reason, code and detail."""

    reason: str
    code: int | None = None
    detail: str = ""


class Technique(Protocol):
    name: str
    deprivilege: Deprivilege | None
    """Ring compression policy, or None when the guest kernel runs at its own ring 0."""
    shadow_paging: bool
    """Whether the VM needs shadow page tables (and so VMM memory above the guest's RAM)."""

    def controls(self) -> Controls: ...

    def attach(self, vm: VM) -> None:
        """Set the VM up once the CPU exists (paging mode, real registers, hooks)."""
        ...

    def run(self, vm: VM, budget: int) -> Exit | Stop:
        """Run the guest until an exit or ``budget`` more retired instructions."""
        ...

    def handle(self, vm: VM, exit: Exit) -> Exit | Stop | None:
        """Handle one exit: ``None`` resume, ``Stop`` end the run, an ``Exit`` handle that next."""
        ...
