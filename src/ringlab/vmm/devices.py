"""The VM's device back end: the console (0x3F8) and power (0xF4), as on the native platform.

The port numbers and the "no input" value are the native platform's
(``ringlab.machine.platform``); the guest timer (0x40) and POST (0x80) stay in the core, in the
vCPU context, so a tick costs no exit (DESIGN.md, Devices).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ringlab.machine.platform import CONSOLE_PORT, NO_INPUT, POWER_PORT

__all__ = ["DeviceBackEnd", "PowerOff"]


@dataclass(frozen=True)
class PowerOff:
    code: int


@dataclass
class DeviceBackEnd:
    input: bytes = b""
    console: bytearray = field(default_factory=bytearray)
    _read: int = 0

    def out(self, port: int, value: int) -> PowerOff | None:
        """A guest ``out`` the core did not handle; unknown ports ignore writes."""
        if port == CONSOLE_PORT:
            self.console.append(value & 0xFF)
        elif port == POWER_PORT:
            return PowerOff(value & 0xFF)
        return None

    def in_(self, port: int) -> int:
        """The value of a guest ``in`` the core did not handle."""
        if port == CONSOLE_PORT:
            if self._read < len(self.input):
                self._read += 1
                return self.input[self._read - 1]
            return NO_INPUT
        if port == POWER_PORT:
            return 0
        return NO_INPUT
