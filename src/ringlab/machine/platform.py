"""The native platform: console, power and the run loop that boots an image with no hypervisor.

This is ``ringlab run --technique native``: the image is the whole guest OS, its kernel runs in
ring 0, and the platform serves the two devices the core does not model, the console (0x3F8)
and power (0xF4).  ``RunResult.to_json()`` is docs/machine.md's ``--json`` object.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ringlab.image import Image
from ringlab.isa import REGISTERS
from ringlab.machine.cpu import Cpu
from ringlab.machine.exits import Budget, Halt, IoIn, IoOut, Shutdown
from ringlab.machine.state import CpuState
from ringlab.machine.stats import Stats
from ringlab.machine.tlb import TlbGeometry

__all__ = [
    "CONSOLE_PORT",
    "CONSOLE_STATUS_PORT",
    "POWER_PORT",
    "DeviceBackEnd",
    "PowerOff",
    "RunResult",
    "run_image",
]

CONSOLE_PORT = 0x3F8
CONSOLE_STATUS_PORT = 0x3FD
"""The console's line-status register (a 16550 UART's LSR): ``in`` only."""
POWER_PORT = 0xF4
LSR_DATA_READY = 0x01
LSR_TRANSMITTER_EMPTY = 0x60
"""THRE | TEMT: the console takes every byte at once, so it always reads empty."""
NO_INPUT = 0xFFFFFFFF
_SLICE = 1 << 40


@dataclass(frozen=True)
class PowerOff:
    code: int


@dataclass
class DeviceBackEnd:
    """The console (0x3F8, its line status 0x3FD) and power (0xF4): the devices the core leaves
    to its platform.
    The native platform and every hypervisor technique use this one back end."""

    input: bytes = b""
    console: bytearray = field(default_factory=bytearray)
    _read: int = 0

    def out(self, port: int, value: int) -> PowerOff | None:
        """An ``out`` the core did not handle; unknown ports ignore writes."""
        if port == CONSOLE_PORT:
            self.console.append(value & 0xFF)
        elif port == POWER_PORT:
            return PowerOff(value & 0xFF)
        return None

    def in_(self, port: int) -> int:
        """The value of an ``in`` the core did not handle."""
        if port == CONSOLE_PORT:
            if self._read < len(self.input):
                self._read += 1
                return self.input[self._read - 1]
            return NO_INPUT
        if port == CONSOLE_STATUS_PORT:
            return LSR_TRANSMITTER_EMPTY | (LSR_DATA_READY if self._read < len(self.input) else 0)
        return 0 if port == POWER_PORT else NO_INPUT


@dataclass
class RunResult:
    console: bytes
    reason: str
    """poweroff, halt, shutdown or limit."""
    code: int | None
    detail: str
    state: CpuState
    stats: Stats
    wall_seconds: float

    @property
    def text(self) -> str:
        return self.console.decode("latin-1")

    def registers(self) -> dict[str, int]:
        s = self.state
        regs = dict(zip(REGISTERS, s.regs, strict=True))
        return regs | {"eip": s.eip, "eflags": s.eflags, "cs": s.cs, "cr0": s.cr0, "cr2": s.cr2, "cr3": s.cr3}

    def to_json(self) -> dict[str, Any]:
        return {
            "console": self.text,
            "exit": {"reason": self.reason, "code": self.code, "detail": self.detail},
            "registers": self.registers(),
            "stats": {
                "guest": self.stats.guest(self.state.tsc),
                "host": {"wall_seconds": self.wall_seconds, **self.stats.host()},
            },
        }


def run_image(
    image: Image,
    *,
    memory_size: int = 4 << 20,
    max_instructions: int | None = None,
    input: bytes = b"",
    fast: bool = True,
    tlb: TlbGeometry | None = None,
) -> RunResult:
    """Boot ``image`` natively and run it until power-off, halt, shutdown or the limit.
    ``tlb``: the TLB's size (default 64 entries, 4-way: ``machine.tlb``)."""
    cpu = Cpu.boot(image, memory_size=memory_size, fast=fast)
    if tlb is not None:
        cpu.mmu.resize_tlb(tlb)
    devices = DeviceBackEnd(input)
    started = time.perf_counter()
    reason, code, detail = "limit", None, ""
    while True:
        if max_instructions is None:
            budget = _SLICE
        else:
            budget = max_instructions - cpu.stats.retired
            if budget <= 0:
                detail = f"{max_instructions} instructions retired"
                break
        match cpu.run(budget):
            case Budget():
                continue
            case IoOut(port=port, value=value):
                off = devices.out(port, value)
                if off is None:
                    continue
                reason, code, detail = "poweroff", off.code, f"power off with code {off.code}"
            case IoIn(port=port):
                cpu.complete_in(devices.in_(port))
                continue
            case Halt(detail=detail):
                reason = "halt"
            case Shutdown(detail=detail):
                reason = "shutdown"
            case exit:  # the native platform intercepts nothing, so no other exit can happen
                raise AssertionError(f"unexpected exit {exit}")
        break
    return RunResult(
        console=bytes(devices.console),
        reason=reason,
        code=code,
        detail=detail,
        state=cpu.state,
        stats=cpu.stats,
        wall_seconds=time.perf_counter() - started,
    )
