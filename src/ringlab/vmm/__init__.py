"""The VMM library: one VM on the RL-32 core under one of the virtualization techniques.

    result = run_vm(image, technique="bt")          # native | trap-emulate | bt | pv | hw
    result = run_vm(image, technique="hw", nested_paging=True)
    result.to_json()                                # docs/machine.md's --json object, + VMM stats

Domain code: no grpc, no redis.  docs/techniques.md explains each technique and its costs.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ringlab.errors import UsageError
from ringlab.image import Image
from ringlab.machine.tlb import TlbGeometry
from ringlab.vmm.insn_trace import InstructionTracer
from ringlab.vmm.recorder import FlightRecorder
from ringlab.vmm.technique import TECHNIQUES, Stop, Technique, TechniqueName, default_kernel
from ringlab.vmm.vm import IN_PROCESS, VM, CoreRunner, InProcessCore, VmRunResult

__all__ = [
    "InstructionTracer",
    "IN_PROCESS",
    "TECHNIQUES",
    "VM",
    "CoreRunner",
    "InProcessCore",
    "Stop",
    "Technique",
    "TechniqueName",
    "VmRunResult",
    "default_kernel",
    "make_technique",
    "run_from",
    "run_vm",
]


def make_technique(technique: str, *, nested_paging: bool = False) -> Technique:
    """The technique object for a name; UsageError for an unknown one."""
    if nested_paging and technique != TechniqueName.HW:
        raise UsageError(f"--nested-paging needs --technique hw, not {technique!r}")
    match technique:
        case TechniqueName.NATIVE:
            from ringlab.vmm.native import Native

            return Native()
        case TechniqueName.HW:
            from ringlab.vmm.hw import Hw

            return Hw(nested_paging)
        case TechniqueName.TRAP_EMULATE:
            from ringlab.vmm.trap_emulate import TrapEmulate

            return TrapEmulate()
        case TechniqueName.BT:
            from ringlab.vmm.bt import BinaryTranslation

            return BinaryTranslation()
        case TechniqueName.PV:
            from ringlab.vmm.pv import Paravirt

            return Paravirt()
    raise UsageError(f"unknown technique {technique!r}; valid techniques: {', '.join(TECHNIQUES)}")


def run_vm(
    image: Image,
    *,
    technique: str,
    nested_paging: bool = False,
    memory_size: int = 4 << 20,
    max_instructions: int | None = None,
    input: bytes = b"",
    fast: bool = True,
    tlb: TlbGeometry | None = None,
    recorder: FlightRecorder | None = None,
    tracer: InstructionTracer | None = None,
    checkpoint: tuple[int, Callable[[VM], None]] | None = None,
) -> VmRunResult:
    """Boot ``image`` as the whole guest under ``technique`` and run it to the end.

    Returns ``machine.RunResult``'s shape (``to_json()`` is docs/machine.md's object) with ``registers``
    the guest-visible (virtual) state; exit reason ``refused`` when the technique will not run
    this guest (a stock kernel under ``pv``).  ``tlb``: the core's TLB size (default 64 entries,
    4-way: ``machine.tlb``); it changes the page walks and their cycles, never the guest's results.
    ``recorder``: a flight recorder to attach (``vmm.recorder``), which records the run's exits
    and its one slice.  ``tracer``: an instruction trace (``vmm.insn_trace``), which runs the
    guest on the interpreter (``fast`` is then off).  ``checkpoint``: ``(N, take)`` calls
    ``take(vm)`` once N instructions have retired (a snapshot, ``vmm.snapshot``), then goes on; a
    guest that ends first is never taken."""
    vm = VM(
        image,
        make_technique(technique, nested_paging=nested_paging),
        memory_size=memory_size,
        input=input,
        fast=fast and tracer is None,
    )
    if tlb is not None:
        vm.cpu.mmu.resize_tlb(tlb)
    if recorder is not None:
        recorder.attach(vm)
    if tracer is not None:
        tracer.attach(vm)
    return run_from(vm, max_instructions, checkpoint)


def run_from(
    vm: VM, max_instructions: int | None = None, checkpoint: tuple[int, Callable[[VM], None]] | None = None
) -> VmRunResult:
    """Run ``vm`` from where it stands to its end (``run_vm``'s loop, for a restored VM too)."""
    if checkpoint is not None:
        at, take = checkpoint
        if max_instructions is not None:
            at = min(at, max_instructions)
        started = time.perf_counter()
        while (left := at - vm.cpu.stats.retired) > 0:
            outcome = vm.advance(left)
            if isinstance(outcome, Stop):
                return vm.result(outcome, time.perf_counter() - started)
        take(vm)
    return vm.run(max_instructions)
