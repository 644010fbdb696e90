"""The RL-32 CPU core: memory, state, MMU/TLB, interpreter, block compiler, exits, platform.

    mem = Memory(size=4 << 20)
    cpu = Cpu.boot(image, memory_size=4 << 20, controls=None, fast=True)
    exit = cpu.run(budget=100_000)       # until an exit or `budget` retired instructions
    result = run_image(image)            # the native platform, to the end

The core never sleeps, prints or does I/O: every device it does not model is an ``Exit``.
"""

from ringlab.machine.cpu import Cpu
from ringlab.machine.exits import Controls, Exit, ExitReason
from ringlab.machine.memory import Memory
from ringlab.machine.platform import RunResult, run_image
from ringlab.machine.state import CpuState

__all__ = ["Controls", "Cpu", "CpuState", "Exit", "ExitReason", "Memory", "RunResult", "run_image"]
