"""The RL-32 CPU core: memory, state, MMU/TLB, interpreter, block compiler, exits, platform.

    mem = Memory(size=4 << 20)
    cpu = Cpu.boot(image, memory_size=4 << 20, controls=None, fast=True)
    exit = cpu.run(budget=100_000)       # until an exit or `budget` retired instructions
    result = run_image(image)            # the native platform, to the end

The core never sleeps, prints or does I/O: every device it does not model is an ``Exit``
(``exits.py``: one small class per reason, matched with class patterns).
"""

from ringlab.machine.cpu import Cpu
from ringlab.machine.exits import (
    Budget,
    Controls,
    Exit,
    ExitReason,
    Halt,
    Idle,
    Intercept,
    IoIn,
    IoOut,
    Raised,
    Shutdown,
)
from ringlab.machine.memory import Memory
from ringlab.machine.platform import RunResult, run_image
from ringlab.machine.state import CpuState

__all__ = [
    "Budget",
    "Controls",
    "Cpu",
    "CpuState",
    "Exit",
    "ExitReason",
    "Halt",
    "Idle",
    "Intercept",
    "IoIn",
    "IoOut",
    "Memory",
    "Raised",
    "RunResult",
    "Shutdown",
    "run_image",
]
