"""A VM: one vCPU on the core, its device back end, its paging, its counters, and the run loop.

``VM.run`` is the VMM's main loop: let the technique run a slice of guest execution, hand the
exit to the technique's single handler, repeat until the guest stops.  The services layer runs
the same object with a slice per pCPU lease; in-process every exit is a function call.

What runs the guest on a core is the VM's ``CoreRunner``, a constructor argument (the world
switch's seam, as unicorn registers hooks): ``InProcessCore`` by default, the VM's own ``Cpu``; the
hypervisor service passes one whose every run is a world switch to a pCPU.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ringlab.errors import ImageError
from ringlab.image import Image
from ringlab.machine.cpu import Cpu
from ringlab.machine.exits import Budget, Exit, Halt, Idle, IoIn, IoOut, Raised, Shutdown
from ringlab.machine.faults import PF, Fault
from ringlab.machine.p2m import P2M
from ringlab.machine.platform import DeviceBackEnd, RunResult
from ringlab.machine.state import CpuState
from ringlab.machine.stats import Stats
from ringlab.vmm.counters import EventCounter
from ringlab.vmm.events import reflect_exception
from ringlab.vmm.paging import DirectPaging, Paging
from ringlab.vmm.shadow import POOL_PAGES, ShadowPageTables
from ringlab.vmm.technique import Stop, Technique, TechniqueName
from ringlab.vmm.vcpu import SYS_FLAGS, VirtualCpu

if TYPE_CHECKING:
    from ringlab.vmm.recorder import FlightRecorder
    from ringlab.vmm.translated import ToVmm

__all__ = ["IN_PROCESS", "VM", "CoreRunner", "InProcessCore", "VmRunResult"]

ESP = 4
_SLICE = 1 << 40


@dataclasses.dataclass
class VmRunResult(RunResult):
    """``machine.RunResult`` plus what the VMM adds; ``state`` is the guest-visible state."""

    technique: str = TechniqueName.NATIVE.value
    nested_paging: bool = False
    counters: EventCounter = dataclasses.field(default_factory=EventCounter)
    diagnostics: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    cycles: int = 0

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        out["stats"]["guest"].update(self.counters.guest(), cycles=self.cycles)
        out["stats"]["host"].update(self.counters.host(), technique=self.technique)
        if self.nested_paging:
            out["stats"]["host"]["nested_paging"] = True
        if self.diagnostics:
            out["diagnostics"] = self.diagnostics
        return out


class CoreRunner(Protocol):
    """What runs a VM's guest code on a core.  In-process (``InProcessCore``) it is a call to the
    VM's own ``Cpu``; the hypervisor service makes every run a world switch to the pCPU that holds
    the other copy of this vCPU (``machine.context``), so every exit is handled here all the same."""

    @property
    def remote(self) -> bool:
        """Whether the core is across a world switch: bt then runs its translation there too
        (``run_translated``) and answers each call it makes into the VMM (``bt._run_remote``);
        else the VMM runs the translation itself, beside it (``translated.run_translated``)."""
        ...

    def run_core(self, vm: VM, budget: int) -> Exit:
        """Run the guest on the core until an exit or ``budget`` more retired instructions."""
        ...

    def run_translated(self, vm: VM, budget: int) -> Exit | ToVmm:
        """bt, when ``remote``: run the guest kernel's translation on the core until it exits (an
        ``Exit``) or calls the VMM (the ``ToVmm`` that ended the run)."""
        ...


class InProcessCore:
    """The VM's own ``Cpu``: every run is a function call (``ringlab run``, ``ringlab boot``)."""

    remote = False

    @staticmethod
    def run_core(vm: VM, budget: int) -> Exit:
        return vm.cpu.run(budget)

    @staticmethod
    def run_translated(vm: VM, budget: int) -> Exit | ToVmm:
        raise NotImplementedError("in-process, bt runs its translation beside the VMM (translated.py)")


IN_PROCESS: CoreRunner = InProcessCore()


class VM:
    def __init__(
        self,
        image: Image,
        technique: Technique,
        *,
        memory_size: int = 4 << 20,
        input: bytes = b"",
        fast: bool = True,
        runner: CoreRunner = IN_PROCESS,
    ) -> None:
        if image.base < 0 or image.end > memory_size:
            raise ImageError(
                f"the image spans {image.base:#x}-{image.end:#x} but the VM's RAM is {memory_size:#x} "
                f"bytes ({memory_size} B): load it lower or give the VM more memory"
            )
        pool_base = (memory_size + 0xFFF) & ~0xFFF
        host_size = pool_base + POOL_PAGES * 0x1000 if technique.shadow_paging else memory_size
        self.technique = technique
        self.image = image
        self.memory_size = memory_size
        controls = dataclasses.replace(technique.controls(), guest_perms=technique.shadow_paging)
        self.cpu = Cpu.boot(image, memory_size=host_size, controls=controls, fast=fast)
        self.runner = runner
        """What runs the guest on a core: every technique's ``run`` goes through it."""
        self.yield_when_idle = False
        """``advance`` returns when an emulated ``hlt`` idled (the services' scheduling)."""
        self.cpu.state.regs[ESP] = memory_size  # reset: esp = top of the *guest's* RAM
        self.p2m = P2M(memory_size)
        self.counters = EventCounter()
        self._budget_end = 1 << 62
        """Where the current ``advance`` stops (retired instructions)."""
        self._held_tick = False
        """A deliverable tick ``deliver_pending`` held back because the budget was used up."""
        self.recorder: FlightRecorder | None = None
        """The VM's flight recorder, when one is attached (``FlightRecorder.attach``)."""
        self.devices = DeviceBackEnd(input)
        self.vcpu = VirtualCpu()
        self.deprivilege = technique.deprivilege
        self.diagnostics: dict[tuple[int, str], dict[str, Any]] = {}
        self.paging: Paging
        if technique.shadow_paging:
            self.shadow: ShadowPageTables | None = ShadowPageTables(
                self.cpu, self.p2m, pool_base, self.counters, force_wp=technique.deprivilege is not None
            )
            self.paging = self.shadow
        else:
            self.shadow = None
            self.paging = DirectPaging(self.cpu)
        if self.deprivilege is not None:
            self.deprivilege.apply(self.cpu.state, self.vcpu)
        technique.attach(self)

    # -- the loop ---------------------------------------------------------------------------
    def run(self, max_instructions: int | None = None) -> VmRunResult:
        """Run the guest to its end in this process (one slice, for a flight recorder, on the
        pCPU it names: ``FlightRecorder.pcpu``)."""
        started = time.perf_counter()
        if self.recorder is not None:
            self.recorder.begin_slice(self.recorder.pcpu)
        while True:
            budget = _SLICE if max_instructions is None else max_instructions - self.cpu.stats.retired
            if budget <= 0:
                stop = Stop("limit", None, f"{max_instructions} instructions retired")
                break
            outcome = self.advance(budget)
            if isinstance(outcome, Stop):
                stop = outcome
                break
        if self.recorder is not None:
            self.recorder.end_slice(stop.reason)
        return self.result(stop, time.perf_counter() - started)

    def advance(self, budget: int, until: Callable[[], bool] | None = None) -> Stop | Idle | None:
        """Run the guest for ``budget`` more retired instructions, handling every exit: the
        VMM's main loop (the technique runs a stretch of guest code, its one handler takes the
        exit, repeat).  Returns the ``Stop`` when the run is over, an ``Idle`` exit when the guest
        idled in ``hlt`` and the caller wants to know (the core's controls ask for that, or
        ``yield_when_idle`` for a ``hlt`` the VMM emulated: the services yield the pCPU then), or
        None once ``budget`` instructions have retired - or earlier, at an exit after which
        ``until()`` is true (the services bound a slice's host time so)."""
        cpu = self.cpu
        end = cpu.stats.retired + budget
        self._budget_end = end
        while cpu.stats.retired < end:
            outcome: Exit | Stop | None = None
            if self._held_tick:  # a tick the last budget's end held back: first thing now
                self._held_tick = False
                outcome = self.deliver_pending()
            if outcome is None:
                outcome = self.technique.run(self, end - cpu.stats.retired)
            if isinstance(outcome, Idle):
                return outcome
            idle = cpu.stats.idle
            while outcome is not None and not isinstance(outcome, Stop):
                outcome = self.technique.handle(self, outcome)
            if isinstance(outcome, Stop):
                return outcome
            if self.yield_when_idle and cpu.stats.idle != idle:
                return Idle()  # the VMM waited for the tick in the guest's hlt
            if until is not None and until():
                return None
        return None

    def result(self, stop: Stop, wall_seconds: float) -> VmRunResult:
        """The run's result (``to_json()`` is docs/machine.md's object plus the VMM's statistics)."""
        from ringlab.vmm.costs import cycles  # costs reads counters; imported late to keep vm small

        stats = self.guest_stats()
        return VmRunResult(
            console=bytes(self.devices.console),
            reason=stop.reason,
            code=stop.code,
            detail=stop.detail,
            state=self.guest_state(),
            stats=stats,
            wall_seconds=wall_seconds,
            technique=self.technique.name,
            nested_paging=getattr(self.technique, "nested_paging", False),
            counters=self.counters,
            diagnostics=list(self.diagnostics.values()),
            cycles=cycles(self.technique.name, stats, self.counters),
        )

    # -- shared exit handling (called from each technique's one match) ------------------------
    def common_exit(self, exit: Exit) -> Stop | None:
        """The exits every technique handles alike, handled here only: the budget ran out
        (resume), ``in``/``out`` to the device back end, ``hlt`` with nothing to wake it and a
        triple fault (the end).  Any other exit here is a bug in the technique, which handles its
        own before it calls this."""
        match exit:
            case Budget():
                return None
            case IoOut(port=port, value=value):
                off = self.devices.out(port, value)
                if off is not None:
                    return Stop("poweroff", off.code, f"power off with code {off.code}")
                return None
            case IoIn(port=port):
                self.cpu.complete_in(self.devices.in_(port))
                return None
            case Halt(detail=detail):
                return Stop("halt", None, detail)
            case Shutdown(detail=detail):
                return Stop("shutdown", None, detail)
        raise AssertionError(f"unexpected exit under {self.technique.name}: {exit}")

    def shadow_fault(self, exit: Raised, *, counted: bool = True) -> Fault | None:
        """Shadow paging's decision on a #PF the core exited on (and counted as the guest's):
        None when it was the VMM's own (a shadow miss it filled, a write to a page it protects),
        hidden from the guest, and the instruction runs again; else the fault the guest sees,
        its own #PF or the #MC the P2M raised instead (that #PF hidden then): ``reflect_fault``.
        ``counted`` False: a #PF the core did not count (bt's translated code raised it), so
        there is no count to take back."""
        fault = self.paging.page_fault(exit)
        if counted and (fault is None or fault.vector != PF):
            self.hide(PF)
        return fault

    def reflect_fault(self, fault: Fault, *, counted: bool = True) -> Exit | Stop | None:
        """Deliver ``shadow_fault``'s fault through the virtual IDT, counting it unless the core
        did (a #PF it exited on, when ``counted``)."""
        return reflect_exception(self, fault, counted=counted and fault.vector == PF)

    def timer_tick(self) -> Exit | None:
        """A tick fell (the core exited on vector 32, or bt saw it pending): deliver it through
        the virtual IDT if the virtual IF allows, else hold it until it does."""
        self.vcpu.pending_tick = True
        return self.deliver_pending()

    def deliver_pending(self) -> Exit | None:
        """Deliver the pending tick if the virtual IF lets it through - unless the budget is used
        up: the core takes a tick only before an instruction it will run (it checks the budget
        first), so a tick the guest's last instruction of a budget let through (an emulated
        ``sti``, ``popf`` or ``iret``) waits for the next ``advance``, as natively it stays
        pending at the instruction limit."""
        if self.vcpu.pending_tick and self.vcpu.interrupts_enabled:
            if self.cpu.stats.retired >= self._budget_end:
                self._held_tick = True
                return None
            self.vcpu.pending_tick = False
            from ringlab.vmm.events import reflect_interrupt

            return reflect_interrupt(self, 32)
        return None

    def sync(self) -> None:
        """After guest code ran directly: what the real state says about the virtual one."""
        if self.deprivilege is not None:
            self.deprivilege.sync(self.cpu.state, self.vcpu)

    def hide(self, vector: int) -> None:
        """The core counted this exception but the guest never saw it (the VMM absorbed it)."""
        self.counters.hidden[vector] += 1

    # -- results ---------------------------------------------------------------------------
    def guest_state(self) -> CpuState:
        s = self.cpu.state.copy()
        if self.deprivilege is not None:
            v = self.vcpu
            s.cs = v.cs
            s.eflags = (s.eflags & ~SYS_FLAGS) | v.flags
            s.idtr_base, s.idtr_limit, s.gdtr_base, s.gdtr_limit, s.tr = (
                v.idtr_base,
                v.idtr_limit,
                v.gdtr_base,
                v.gdtr_limit,
                v.tr,
            )
        s.cr0, s.cr3 = self.paging.guest_cr0(), self.paging.guest_cr3()
        return s

    def guest_stats(self) -> Stats:
        stats = self.cpu.stats
        seen = Counter(stats.exceptions)
        seen.subtract(self.counters.hidden)
        return dataclasses.replace(
            stats,
            retired_by_ring=list(stats.retired_by_ring),
            exceptions={v: n for v, n in sorted(seen.items()) if n > 0},
        )
