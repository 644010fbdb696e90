"""bt with its translation cache in another CPU (``ringlab.vmm.translated``): the VMM translates,
the other side runs what it installed and comes back for every call into the VMM, each side's
changes crossing as ``machine.context`` deltas - the cpu service's protocol without gRPC.
Self-modifying code is the hard case: blocks dropped by the VMM (a write-protected page written)
and by the other side's self-checks (a page left writable) must never run again on either side."""

from __future__ import annotations

from ringlab.guestos.build import build_image
from ringlab.image import Image
from ringlab.machine import Cpu, Exit, IoIn, Memory
from ringlab.machine.context import apply_delta, take_delta, track
from ringlab.vmm import VM, make_technique
from ringlab.vmm.bt import BinaryTranslation
from ringlab.vmm.translated import Executor, ToVmm
from tests.vmm.conftest import native, observable, program
from tests.vmm.test_bt_fast_path import _loop, _sum


class _Split:
    """A ``CoreRunner`` with a second CPU that runs the VM's guest code and its translation;
    ``crossed`` counts what crossed."""

    remote = True

    def __init__(self) -> None:
        self.crossed = {"switches": 0, "events": 0, "reset": 1}
        self.there: Cpu | None = None
        self.executor: Executor | None = None

    def switch(self, vm: VM, budget: int, translated: bool) -> Exit | ToVmm:
        here, crossed = vm.cpu, self.crossed
        if self.there is None:  # the first switch: the other CPU starts as a copy of this one
            self.there = Cpu(Memory(here.memory.size), here.state.copy())
            self.there.memory.data[:] = here.memory.data
            track(here)
            track(self.there)
            self.executor = Executor(self.there)
        there, executor = self.there, self.executor
        assert executor is not None
        bt = vm.technique
        assert isinstance(bt, BinaryTranslation)
        apply_delta(there, take_delta(here, there.stats.retired))
        there.controls = here.controls
        before = there.stats.retired
        outcome: Exit | ToVmm
        if translated:
            executor.apply(bt.tc_run(vm, reset=bool(crossed["reset"])))
            crossed["reset"] = 0
            outcome = executor.run(budget)
            report = executor.report(outcome)
        else:
            outcome = there.run(budget)
        apply_delta(here, take_delta(there, before))
        if translated:
            bt.tc_report(vm, report)
        crossed["switches"] += 1
        if isinstance(outcome, ToVmm):
            crossed["events"] += 1
        elif isinstance(outcome, IoIn):
            here.expect_in(outcome.register)
        return outcome

    def run_core(self, vm: VM, budget: int) -> Exit:
        outcome = self.switch(vm, budget, False)
        assert isinstance(outcome, Exit)
        return outcome

    def run_translated(self, vm: VM, budget: int) -> Exit | ToVmm:
        return self.switch(vm, budget, True)


def _split(image: Image) -> tuple[VM, dict[str, int]]:
    """A bt VM whose guest code and translation run on a second CPU; returns it and what crossed."""
    split = _Split()
    return VM(image, make_technique("bt"), runner=split), split.crossed


def test_self_modifying_kernel_code_runs_the_same_with_the_translation_on_the_other_cpu() -> None:
    for shared_data in (False, True):  # write-protected pages, then self-checking ones
        source = _loop(3, shared_data=shared_data)
        image = program(source)
        machine, crossed = _split(image)
        result = machine.run(1_000_000).to_json()
        expected = native(image)
        assert observable(result) == observable(expected)
        assert result["registers"]["esi"] == _sum(3)  # every patch was seen
        assert crossed["events"] > 0  # misses, callouts: the VMM's turn, across the switch
        assert result["stats"]["host"]["translation_invalidations"] >= 3


def test_a_workload_with_its_translation_on_the_other_cpu_equals_the_in_process_run() -> None:
    image = build_image("spawnwait", "stock")
    machine, _crossed = _split(image)
    got = machine.run().to_json()
    want = VM(image, make_technique("bt")).run().to_json()
    assert (got["console"], got["exit"], got["registers"]) == (
        want["console"],
        want["exit"],
        want["registers"],
    )
    slice_dependent = ("translations", "translated_instructions", "cycles")
    assert {k: v for k, v in got["stats"]["guest"].items() if k not in slice_dependent} == {
        k: v for k, v in want["stats"]["guest"].items() if k not in slice_dependent
    }


def test_retired_instructions_count_the_guests_ring_with_the_translation_on_the_other_cpu() -> None:
    """Which guest ring real ring 1 stands for (``Stats.ring_1_counts_as``) is the VMM's to say
    and the other CPU's to count by: it crosses with the counters, so a kernel that moves
    between rings 0 and 2 counts per ring as natively, and where it really ran (ring 1) shows
    in ``stats.host`` as in-process."""
    from tests.vmm.test_equivalence_regressions import COUNT_DOWN, RING_2

    for source in (COUNT_DOWN, RING_2):
        image = program(source)
        machine, crossed = _split(image)
        got = machine.run(10_000).to_json()
        want = VM(image, make_technique("bt")).run(10_000).to_json()
        assert crossed["switches"] > 0
        assert got["stats"]["guest"]["retired_by_ring"] == native(image)["stats"]["guest"]["retired_by_ring"]
        assert got["stats"]["host"]["retired_by_real_ring"] == want["stats"]["host"]["retired_by_real_ring"]
        assert got["stats"]["host"]["retired_by_real_ring"]["1"] > 0
