"""The instruction trace (``ringlab run --trace``): one line per retired guest instruction, as
QEMU's ``-d exec,in_asm`` and OS/161's ``sys161 -t`` print them, with the events the guest saw
(an interrupt or exception delivered through its IDT) and the world switches it did not see.

Each line is what the guest's own machine would show: the instruction's count (1 for the first
retired), its virtual time, its address, the ring the guest believes it runs in (under bt and pv
the kernel really runs in ring 1, and the trace says ring 0 as ``stats.guest.retired_by_ring``
does), its bytes and its disassembly::

           1  tsc 1         0x00001000  r0  b8 01 00 00 00      mov eax, 1

The tracer hangs off the core as the flight recorder hangs off the counters: it wraps the VM's
``Cpu.retire`` (every retired instruction, whichever path ran it: the interpreter, the VMM's
emulation, bt's translated code, a hypercall) and ``Cpu.deliver`` (every event delivered), on
that one ``Cpu`` object only.  The run it traces uses the interpreter (``fast=False``: compiled
blocks retire a whole block at once), which the differential tests hold to the same results as
the compiled code: the guest's console, exit, registers and statistics do not change.

An instruction's address is where the previous instruction or event left ``eip`` (every path
that moves ``eip`` without retiring goes through ``deliver``); its bytes are read afterwards
through the guest's own page tables by a private walker (its own TLB and statistics, as the
shadow-paging VMM walks the guest's tables), so tracing costs the guest nothing it could see.
A self-modifying instruction that rewrote itself shows its new bytes; bytes the walker cannot
reach (the instruction unmapped its own page) show as ``??``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from ringlab.asm import format_instruction
from ringlab.isa import BY_OPCODE, decode
from ringlab.machine.faults import Fault
from ringlab.machine.mmu import Mmu
from ringlab.machine.state import CpuState
from ringlab.machine.stats import Stats

if TYPE_CHECKING:
    from ringlab.vmm.vm import VM

__all__ = ["InstructionTracer"]

_VECTORS = {0: "#DE", 1: "#DB", 3: "#BP", 6: "#UD", 8: "#DF", 13: "#GP", 14: "#PF", 18: "#MC"}


class InstructionTracer:
    """Writes ``vm``'s instruction trace to ``out`` as it runs (``attach`` it before the run)."""

    def __init__(self, out: TextIO, *, limit: int | None = None) -> None:
        self.out = out
        self.limit = limit
        """Stop writing after this many instructions (the run goes on; None: no limit)."""
        self.written = 0
        self._vm: VM | None = None
        self._eip = 0
        self._walker: Mmu | None = None
        self._view = CpuState()
        self._delivered: str | None = None
        """The delivery line of an ``int n`` not yet retired."""

    def attach(self, vm: VM) -> InstructionTracer:
        if vm.cpu.compiled_blocks is not None:
            raise ValueError("an instruction trace needs the interpreter: make the VM with fast=False")
        self._vm = vm
        cpu = vm.cpu
        self._eip = cpu.state.eip
        self._walker = Mmu(cpu.memory, self._view, Stats(), fast_caches=False)
        self._walker.second_stage = vm.p2m
        retire, deliver = cpu.retire, cpu.deliver

        def traced_retire(cpl: int, count: int = 1) -> None:
            eip = self._eip
            retire(cpl, count)
            self._eip = cpu.state.eip
            ring = cpu.stats.ring_1_counts_as if cpl == 1 else cpl
            self._instruction(eip, ring)
            if self._delivered is not None:  # the int's delivery, after the int
                self._line(self._delivered)
                self._delivered = None

        def traced_deliver(vector: int, error_code: int | None, eip: int, *, software: bool) -> None:
            deliver(vector, error_code, eip, software=software)
            if software:
                # ``int n`` is delivered before it retires (every path: the core, the VMMs'
                # reflection): its line keeps its own address, and the delivery follows it.
                self._delivered = self._event(vector, error_code, eip, software, cpu.state.eip)
                return
            self._eip = cpu.state.eip
            self._line(self._event(vector, error_code, eip, software, self._eip))

        # Instance attributes shadow the methods for this one Cpu (instrumentation, as a
        # debugger's breakpoints are): the core's own code is unchanged for every other run.
        cpu.retire = traced_retire  # type: ignore[method-assign]
        cpu.deliver = traced_deliver  # type: ignore[method-assign]
        previous: Callable[[str], None] | None = vm.counters.on_exit

        def on_exit(reason: str) -> None:
            self._line(f"{'':>12}  world switch: {reason}")
            if previous is not None:
                previous(reason)

        vm.counters.on_exit = on_exit
        return self

    # -- the lines --------------------------------------------------------------------------
    def _line(self, text: str) -> None:
        if self.limit is None or self.written < self.limit:
            self.out.write(text + "\n")

    def _instruction(self, eip: int, ring: int) -> None:
        vm = self._vm
        assert vm is not None
        self.written += 1
        if self.limit is not None and self.written > self.limit:
            return
        raw, text = self._read(vm, eip)
        stats = vm.cpu.stats
        self.out.write(
            f"{stats.retired:>12}  tsc {vm.cpu.state.tsc:<10} {eip:#010x}  r{ring}  {raw:<18}  {text}\n"
        )

    def _event(self, vector: int, error_code: int | None, eip: int, software: bool, to: int) -> str:
        name = _VECTORS.get(vector, f"vector {vector}")
        what = f"int {vector:#x}" if software else name
        code = "" if error_code is None else f", error code {error_code:#x}"
        cr2 = f", cr2 {self._vm.cpu.state.cr2:#x}" if vector == 14 and not software and self._vm else ""
        return f"{'':>12}  --> {what} delivered{code}{cr2}: from {eip:#010x} to {to:#010x}"

    def _read(self, vm: VM, eip: int) -> tuple[str, str]:
        """The instruction's bytes and disassembly, read through the guest's own tables."""
        walker = self._walker
        assert walker is not None
        self._view.cr0, self._view.cr3 = vm.paging.guest_cr0(), vm.paging.guest_cr3()
        walker.tlb.clear()
        try:
            spec = BY_OPCODE.get(walker.read8(eip, False))
            blob = walker.read_bytes(eip, spec.length if spec is not None else 1, False)
        except Fault:
            return "??", "(not readable through the guest's page tables)"
        insn = decode(blob) if spec is not None else None
        text = format_instruction(insn) if insn is not None else "(undefined)"
        return " ".join(f"{b:02x}" for b in blob), text
