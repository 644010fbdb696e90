"""The cost model (vmm/costs.py): profiles by era, and what each priced event adds."""

from __future__ import annotations

from collections import Counter

import pytest

from ringlab.errors import UsageError
from ringlab.guestos.build import build_image
from ringlab.machine.stats import Stats
from ringlab.vmm import run_vm
from ringlab.vmm.costs import (
    COSTS,
    DEFAULT_PROFILE,
    EPT_2008,
    P4_2006,
    PROFILES,
    core_cycles,
    cycles,
    profile,
    vmm_cycles,
)
from ringlab.vmm.counters import EventCounter
from ringlab.vmm.exit_reasons import VmxExitReason as R


def test_the_default_profile_is_the_paper_s_machine() -> None:
    assert DEFAULT_PROFILE == "p4-2006"
    assert profile().costs is P4_2006 is COSTS
    assert profile(None) is profile("p4-2006") is PROFILES["p4-2006"]


def test_the_2008_profile_prices_every_event_and_makes_exits_cheaper() -> None:
    assert set(EPT_2008) == set(P4_2006)
    assert EPT_2008["vm_exit"] < P4_2006["vm_exit"]
    assert profile("ept-2008").costs is EPT_2008


def test_an_unknown_profile_is_a_usage_error_naming_the_valid_ones() -> None:
    with pytest.raises(UsageError, match="p4-2006, ept-2008"):
        profile("pentium-pro")


def test_a_tlb_miss_costs_its_walk_s_memory_references() -> None:
    walk = P4_2006["walk_reference"]
    one_d, two_d = (
        Stats(retired=10, tlb_misses=1, walk_references=2),
        Stats(retired=10, tlb_misses=1, walk_references=8),
    )
    assert core_cycles("hw", one_d) == 10 + 2 * walk
    assert core_cycles("hw", two_d) == 10 + 8 * walk


def test_a_nested_miss_costs_four_times_a_shadow_miss_in_a_real_run() -> None:
    """The same loop, the same misses per round; only the walks' references (and so the cycles)
    differ: 8 against 2 references a miss."""

    def per_round(nested: bool) -> tuple[float, float, float]:
        runs = [
            run_vm(
                build_image("tlbmiss", "stock", {"PAGES": 128, "ITERATIONS": n}),
                technique="hw",
                nested_paging=nested,
            )
            for n in (2, 6)
        ]
        a, b = (r.stats for r in runs)
        return (
            (b.tlb_misses - a.tlb_misses) / 4,
            (b.walk_references - a.walk_references) / 4,
            (runs[1].cycles - runs[0].cycles) / 4,
        )

    (misses, refs, shadow), (np_misses, np_refs, nested) = per_round(False), per_round(True)
    assert misses == np_misses >= 128
    assert (refs, np_refs) == (2 * misses, 8 * misses)
    assert nested - shadow == 6 * misses * P4_2006["walk_reference"]


def test_device_access_is_priced_natively_not_under_a_vmm() -> None:
    """Natively an in/out is a bus transaction; under a VMM its device is the VMM's model."""
    stats = Stats(retired=5, io=2)
    assert core_cycles("native", stats) == 5 + 2 * P4_2006["device_io"]
    for technique in ("trap-emulate", "bt", "pv", "hw"):
        assert core_cycles(technique, stats) == 5


def test_every_port_access_a_device_model_serves_is_priced() -> None:
    c = P4_2006
    trapped = EventCounter(traps=Counter({"in": 1}))
    assert vmm_cycles(trapped) == c["trap"] + c["emulation"] + c["io_emulation"]
    called_out = EventCounter(callouts=1, sensitive={"out": Counter({"callout": 1})})
    assert vmm_cycles(called_out) == c["callout"] + c["io_emulation"]
    tpr = EventCounter(callouts=1, sensitive={"mov": Counter({"callout": 1})})
    assert vmm_cycles(tpr) == c["callout"]  # no device behind a cr8 write
    exited = EventCounter(vm_exits=Counter({R.IO_INSTRUCTION.label: 1}))
    assert vmm_cycles(exited) == c["vm_exit"] + c["emulation"] + c["io_emulation"] + c["io_exit"]
    passed = EventCounter(io_passthrough=1)
    assert vmm_cycles(passed) == c["device_io"]


def test_a_profile_changes_the_price_never_the_counts() -> None:
    image = build_image("pagefault", "stock", {"ITERATIONS": 4})
    result = run_vm(image, technique="hw")
    p4, ept = (cycles("hw", result.stats, result.counters, name) for name in ("p4-2006", "ept-2008"))
    assert result.cycles == p4
    exits = sum(result.counters.vm_exits.values())
    assert p4 - ept == exits * (P4_2006["vm_exit"] - EPT_2008["vm_exit"]) > 0
