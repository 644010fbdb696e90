"""The block compiler (in progress): for now every block is interpreted."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ringlab.machine.exits import Exit

if TYPE_CHECKING:
    from ringlab.machine.cpu import Cpu

__all__ = ["TranslationCache"]


class TranslationCache:
    def __init__(self, cpu: Cpu) -> None:
        self.cpu = cpu

    def clear(self) -> None:
        pass

    def run(self, end: int) -> Exit:
        return self.cpu.interpret(end)
