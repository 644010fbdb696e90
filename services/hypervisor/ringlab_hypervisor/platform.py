"""Exit handling per technique: what the VMM does when a vCPU's exit crosses to it.

The cpu service ran the guest until the exit; here the device back ends (console 0x3F8, power
0xF4) and, per technique, the software half of the VMM decide what happens next.  Each handler
returns a ``Handled``: a value for a pending ``in``, console bytes, or how the VM ended.

``native`` is the reference platform (no hypervisor: the kernel in ring 0, the same devices as
``ringlab.machine.platform``).  The other techniques come from ``ringlab.vmm`` as it lands.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ringlab.machine import Controls
from ringlab.machine.platform import CONSOLE_PORT, NO_INPUT, POWER_PORT
from ringlab.rpc.convert import REASON_NAMES
from ringlab.store import InvalidRequest
from ringlab.v1 import common_pb2, cpu_pb2

__all__ = ["SERVICE_TECHNIQUES", "Handled", "Platform", "platform_for"]

SERVICE_TECHNIQUES = ("native", "trap-emulate", "bt", "pv", "hw")
"""Every technique runs through the services: ``native`` with each exit crossing to this
service, the others *hosted* (their software exits handled beside the core in the pCPU until
``ringlab.vmm`` can handle exits against a remote vCPU)."""
HOSTED = frozenset(SERVICE_TECHNIQUES) - {"native"}
STOP_STATUS = {"poweroff": "poweroff", "halt": "halted", "shutdown": "shutdown", "limit": "limit"}


@dataclass
class Handled:
    in_value: int | None = None
    console: bytes = b""
    ended: tuple[str, int | None, str] | None = None
    """(status, code, detail) when the VM is over."""


class Platform:
    """The native platform: console and power devices, nothing intercepted."""

    technique = "native"

    def __init__(self, definition: dict[str, Any]) -> None:
        self.input: bytes = definition.get("input", "").encode("latin-1")
        # Idle hlt exits so the vCPU yields its slice (DESIGN: boosted when it wakes).
        self.controls = Controls(exit_on_idle_hlt=True)

    def handle(self, exit: cpu_pb2.VcpuExit, vmm: dict[str, Any]) -> Handled:
        reason = exit.reason
        if reason == common_pb2.EXIT_REASON_IO_OUT:
            if exit.port == CONSOLE_PORT:
                return Handled(console=bytes((exit.value & 0xFF,)))
            if exit.port == POWER_PORT:
                code = exit.value & 0xFF
                return Handled(ended=("poweroff", code, f"power off with code {code}"))
            return Handled()  # unknown ports ignore writes
        if reason == common_pb2.EXIT_REASON_IO_IN:
            if exit.port == CONSOLE_PORT:
                pos = int(vmm.get("input_pos", 0))
                if pos < len(self.input):
                    vmm["input_pos"] = pos + 1
                    return Handled(in_value=self.input[pos])
                return Handled(in_value=NO_INPUT)
            return Handled(in_value=0 if exit.port == POWER_PORT else NO_INPUT)
        if reason == common_pb2.EXIT_REASON_HALT:
            return Handled(ended=("halted", None, exit.detail))
        if reason == common_pb2.EXIT_REASON_SHUTDOWN:
            return Handled(ended=("shutdown", None, exit.detail))
        name = REASON_NAMES.get(reason, str(reason))
        return Handled(ended=("shutdown", None, f"the {self.technique} platform cannot handle a {name} exit"))


def platform_for(definition: dict[str, Any]) -> Platform:
    technique = definition.get("technique", "native")
    if technique in HOSTED:
        hosted = Platform(definition)
        hosted.technique = technique
        return hosted
    if technique not in SERVICE_TECHNIQUES:
        raise InvalidRequest(
            f"technique {technique!r} is not available through the services yet "
            f"(available: {', '.join(SERVICE_TECHNIQUES)})"
        )
    return Platform(definition)
