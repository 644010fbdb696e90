"""A VM as the hypervisor holds it: the VMM's whole state for one VM and its copy of the vCPU.

``ringlab.vmm.VM`` is the VMM of one VM (virtual CPU, shadow page tables, P2M, translation
cache, device back end, counters).  Its ``CoreRunner``, the one place a technique runs guest code
on the core, is ``VmCopy`` here: each run is a world switch (``ports.Pcpu``): what the handlers
changed since the last exit goes to the pCPU, the pCPU runs the guest until its next exit, and what
that run changed comes back (``ringlab.machine.context``).  The technique's one handler then
handles the exit here, on this copy, exactly as in-process: emulation, hypercalls, shadow syncs,
translation and devices all happen in the hypervisor; the pCPU only does what hardware does.

Under ``bt`` the guest kernel's translation runs on the pCPU too (``run_translated``): the
hypervisor translates on a miss and installs the block there, and every call the translated code
makes into the VMM (a callout, a fault, a deliverable tick) ends the pCPU's run and is answered
here (``ringlab.vmm.translated``).

The VMM's state is not in the store.  A hypervisor that has no copy of a VM (it restarted, another
replica ran the VM, a slice was lost) rebuilds it by *replaying* the VM in-process from its boot
to the committed instruction count: runs are deterministic (docs/design.md), so the state is the
same, and the first switch hands the pCPU every page the replay wrote.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

from ringlab.hypervisor.ports import SliceCommit, Switched, SwitchFailed
from ringlab.hypervisor.results import stop_status
from ringlab.isa import decode
from ringlab.machine import Controls, Exit
from ringlab.machine.context import ContextDelta, ContextMismatch, apply_delta, take_delta
from ringlab.machine.exits import IoIn
from ringlab.machine.faults import Fault
from ringlab.machine.mmu import TLB_FLUSH
from ringlab.machine.stats import stats_to_json
from ringlab.vmm import IN_PROCESS, VM, Stop
from ringlab.vmm.bt import BinaryTranslation
from ringlab.vmm.costs import vmm_cycles
from ringlab.vmm.translated import TcRun, ToVmm, VmmCall

__all__ = ["MAX_RUN_BUDGET", "Link", "VmCopy"]

MAX_RUN_BUDGET = 50_000_000
"""The most instructions one world switch may run (a few seconds), so that a pCPU stays
responsive: the cpu service refuses more, and a longer run takes several switches (a ``Budget``
exit each)."""

Link = Callable[[int, ContextDelta, Controls, int, TcRun | None], Switched]
"""One world switch of the slice being run: (budget, the hypervisor's changes, controls, nested
RAM, bt's translation to run instead of the core) -> the pCPU's answer."""


class VmCopy:
    """The hypervisor's VMM for one VM, and the ``CoreRunner`` of that VM: once replayed to its
    commit of ``retired`` instructions, its core runs cross to the pCPU through ``link`` (set per
    slice by the driver).  ``vm`` is the VM booted from its definition, with this copy as its
    runner (``boot.vm_from(..., runner=copy)``): ``VmCopy(lambda copy: vm_from(...), retired)``.
    A VM restored from a snapshot starts at the snapshot's count, and replays from there."""

    def __init__(self, make_vm: Callable[[VmCopy], VM], retired: int, name: str = "") -> None:
        self.remote = False
        """False while the replay runs the VM in-process; then every core run is a world switch."""
        self.vm = vm = make_vm(self)
        start = vm.cpu.stats.retired  # 0, or where the snapshot a restored VM starts from was taken
        if retired > start:
            outcome = vm.advance(retired - start)  # the replay: in-process, on this copy's own core
            if vm.cpu.stats.retired != retired or isinstance(outcome, Stop):
                raise RuntimeError(
                    f"replaying VM {name!r} to its commit at {retired} instructions "
                    f"reached {vm.cpu.stats.retired} ({outcome}): the run is not deterministic"
                )
        elif retired and retired != start:
            raise RuntimeError(
                f"VM {name!r} has a commit at {retired} instructions, before the {start} it starts from"
            )
        vm.cpu.mmu.log = [TLB_FLUSH]  # the pCPU's copy starts with whatever TLB it has
        self.base = vm.cpu.stats.retired
        """Retired instructions of the pCPU's copy as of the last switch."""
        self.console_committed = len(vm.devices.console)
        self.console_quota: int | None = None
        """Console bytes the VM may write (None: no limit); a commit carries none past it."""
        self.link: Link | None = None
        self._as_sent: tuple[dict[str, Any], dict[str, Any]] | None = None
        """Registers and counters as the pCPU returned them at the last switch."""
        self._controls: tuple[Controls, Controls] | None = None
        self._tc_reset = True
        """The pCPU may hold translations of an earlier copy of this VM: forget them first."""
        self.remote = True
        vm.yield_when_idle = True  # an idle guest yields its slice, whoever emulated its hlt

    # -- the VM's CoreRunner -------------------------------------------------------------------
    def run_core(self, vm: VM, budget: int) -> Exit:
        """A world switch: the guest runs on the pCPU until its next exit (during the replay, on
        this copy's own core)."""
        if not self.remote:
            return IN_PROCESS.run_core(vm, budget)
        return self._switch(budget, None).exit

    def run_translated(self, vm: VM, budget: int) -> Exit | ToVmm:
        """bt: the guest kernel's translation runs on the pCPU until it exits or calls the VMM."""
        bt = vm.technique
        assert isinstance(bt, BinaryTranslation)
        switched = self._switch(budget, bt.tc_run(vm, reset=self._tc_reset))
        self._tc_reset = False
        report = switched.tc
        if report is None:
            raise RuntimeError("the pCPU ran the translation but sent no report of it")
        bt.tc_report(vm, report)
        if report.event is VmmCall.RESET:  # a pCPU that loaded the VM afresh: send it everything
            self._tc_reset = True
        if report.event is None:
            return switched.exit
        fault = None if report.fault is None else Fault(*report.fault)
        insn = decode(report.instruction) if report.instruction else None
        return ToVmm(report.event, report.eip, fault=fault, insn=insn)

    def _switch(self, budget: int, tc: TcRun | None) -> Switched:
        assert self.link is not None, "no pCPU to run on: set link for the slice"
        cpu = self.vm.cpu
        nested = self.vm.p2m.ram_size if cpu.mmu.second_stage is not None else 0
        budget = min(budget, MAX_RUN_BUDGET)  # a longer run takes several switches
        switched = self.link(budget, take_delta(cpu, self.base), self.controls(), nested, tc)
        self.accept(switched)
        if isinstance(switched.exit, IoIn):  # the guest's in completes when the VMM answers
            cpu.expect_in(switched.exit.register)
        return switched

    def accept(self, switched: Switched) -> None:
        """Take what the pCPU's run changed: from now on both copies stand at the same place
        (the base of the next switch's changes)."""
        cpu = self.vm.cpu
        try:
            apply_delta(cpu, switched.delta)
        except ContextMismatch as exc:  # as the pCPU does: start again from the last commit
            raise SwitchFailed(f"{exc}: resynchronising from the last commit") from None
        self.base = cpu.stats.retired
        self._as_sent = (switched.delta.state, switched.delta.stats)

    def controls(self) -> Controls:
        """The technique's intercepts, as the pCPU runs with them (the same object while the
        technique keeps them: a change of controls drops the pCPU's compiled code)."""
        controls = self.vm.cpu.controls
        if self._controls is None or self._controls[0] is not controls:
            # idle hlt exits so the vCPU yields its slice (DESIGN: boosted when it wakes)
            self._controls = (controls, dataclasses.replace(controls, exit_on_idle_hlt=True))
        return self._controls[1]

    def sync(self) -> ContextDelta:
        """What the handlers changed since the last switch (sent with the slice's commit)."""
        return take_delta(self.vm.cpu, self.base)

    def changed_since_switch(self) -> bool:
        """Whether the handlers changed anything since the last switch (after which a commit the
        pCPU made at that switch is not the whole story)."""
        cpu = self.vm.cpu
        return (
            self._as_sent is None
            or bool(cpu.mmu.log)
            or cpu.memory.has_recent()
            or self._as_sent != (cpu.state.to_dict(), stats_to_json(cpu.stats))
        )

    # -- commits -------------------------------------------------------------------------------
    def commit(self, vmm: dict[str, Any], stop: Stop | None = None) -> SliceCommit:
        """What a commit now adds besides the vCPU: the console since the last commit, the
        statistics, the VMM's record ``vmm``, and the VM's end if ``stop``."""
        console = bytes(self.vm.devices.console[self.console_committed : self.console_quota])
        if stop is None:
            return SliceCommit(console, self.statistics(None), json.dumps(vmm))
        status, code, detail = stop_status(stop)
        return SliceCommit(console, self.statistics(stop), json.dumps(vmm), status, code, detail)

    def committed(self) -> None:
        """A commit that carried the console up to now has been applied."""
        self.console_committed = len(self.vm.devices.console)

    def statistics(self, stop: Stop | None) -> str:
        """The VMM's statistics for a commit: the cycles its events add (constant while the
        guest runs on the pCPU), its world switches, and at the end docs/run.md's JSON object as
        ``run_vm(...).to_json()`` builds it (console and wall time are filled in from the
        committed stream and the clock when it is read)."""
        counters = self.vm.counters
        out: dict[str, Any] = {"vmm_cycles": vmm_cycles(counters), "world_switches": counters.world_switches}
        if stop is not None:
            out["result"] = self.vm.result(stop, 0.0).to_json()
            out["result"]["console"] = ""  # the reader takes it from the committed stream
        return json.dumps(out)
