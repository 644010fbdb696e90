"""The TLB (machine/tlb.py, mmu.py): bounded and set-associative, first-in first-out within a
set; a miss is a page walk of 2 memory references (8 under nested paging); its size changes the
walks, never what the guest computes or the virtual time it takes."""

from __future__ import annotations

from typing import Any

import pytest

from ringlab.guestos.build import build_image
from ringlab.machine.stats import Stats
from ringlab.machine.tlb import DEFAULT_ENTRIES, DEFAULT_WAYS, Tlb, TlbGeometry
from ringlab.vmm import run_vm
from tests.machine.conftest import PT, boot, kernel, reg, run


def _fill(tlb: Tlb, *vpns: int) -> list[int | None]:
    return [tlb.insert(vpn, (vpn << 12, 6)) for vpn in vpns]


# ---------------------------------------------------------------- the cache itself


def test_the_default_is_64_entries_4_way() -> None:
    tlb = Tlb()
    assert (tlb.geometry.entries, tlb.geometry.ways, tlb.geometry.sets) == (64, 4, 16)
    assert (DEFAULT_ENTRIES, DEFAULT_WAYS) == (64, 4)


def test_a_set_holds_ways_pages_and_evicts_its_oldest_fill() -> None:
    tlb = Tlb(TlbGeometry(8, 2))  # 4 sets of 2
    assert _fill(tlb, 0x1, 0x5) == [None, None]  # both in set 1
    assert _fill(tlb, 0x9) == [0x1]  # set 1 is full: the first fill goes
    assert 0x1 not in tlb and {0x5, 0x9} <= set(tlb)


def test_pages_of_other_sets_do_not_evict_each_other() -> None:
    tlb = Tlb(TlbGeometry(8, 2))
    assert _fill(tlb, *range(8)) == [None] * 8  # two per set: exactly the capacity
    assert len(tlb) == 8
    assert _fill(tlb, 8) == [0]  # the ninth page evicts from its own set only


def test_a_hit_does_not_change_which_page_goes_next() -> None:
    """FIFO: lookups leave the replacement state alone (what lets compiled code hit in its fast
    caches without telling the TLB)."""
    tlb = Tlb(TlbGeometry(2, 2))
    _fill(tlb, 1, 2)
    for _ in range(3):
        assert tlb.get(1) == (0x1000, 6)
    assert _fill(tlb, 3) == [1]


def test_invalidate_and_clear_free_their_slots() -> None:
    tlb = Tlb(TlbGeometry(2, 2))
    _fill(tlb, 1, 2)
    tlb.invalidate(1)
    tlb.invalidate(7)  # not there: nothing happens
    assert _fill(tlb, 3) == [None]  # the slot 1 held is free again
    tlb.clear()
    assert len(tlb) == 0 and _fill(tlb, 4, 5) == [None, None]


def test_a_snapshot_loads_into_a_tlb_that_evicts_the_same_page_next() -> None:
    a, b = Tlb(TlbGeometry(4, 2)), Tlb(TlbGeometry(4, 2))
    _fill(a, 0, 2, 1, 4)  # set 0: 0 then 2 (4 evicts 0); set 1: 1
    b.load(a.snapshot())
    assert sorted(b) == sorted(a) == [1, 2, 4]
    assert b.get(4) == (0x4000, 6)
    assert _fill(a, 6) == _fill(b, 6) == [2]


@pytest.mark.parametrize(
    ("text", "entries", "ways"),
    [("64", 64, 4), ("64x4", 64, 4), ("16x16", 16, 16), ("2", 2, 2), ("1x1", 1, 1)],
)
def test_sizes_parse(text: str, entries: int, ways: int) -> None:
    assert TlbGeometry.parse(text) == TlbGeometry(entries, ways)


@pytest.mark.parametrize("text", ["0", "64x3", "64x128", "x4", "lots", str(1 << 20)])
def test_impossible_sizes_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        TlbGeometry.parse(text)


# ---------------------------------------------------------------- the core's misses

SETS = DEFAULT_ENTRIES // DEFAULT_WAYS


def _loop(pages: list[int], rounds: int) -> str:
    """Read one dword from each page (identity-mapped), ``rounds`` times."""
    loads = "\n".join(f"        add eax, [{vpn << 12:#x}]" for vpn in pages)
    return f"""        mov ecx, {rounds}
.round:
{loads}
        dec ecx
        jnz .round
        hlt"""


def _misses_per_round(pages: list[int], fast: bool) -> float:
    misses = []
    for rounds in (2, 6):
        cpu = boot(kernel(_loop(pages, rounds), paging=True), fast)
        run(cpu)
        misses.append(cpu.stats.tlb_misses)
    return (misses[1] - misses[0]) / 4


def test_pages_within_one_set_s_ways_hit_after_the_first_round(fast: bool) -> None:
    pages = [0x309 + k * SETS for k in range(DEFAULT_WAYS)]  # set 9, full
    assert _misses_per_round(pages, fast) == 0


def test_one_page_more_than_a_set_holds_misses_on_every_load(fast: bool) -> None:
    pages = [0x309 + k * SETS for k in range(DEFAULT_WAYS + 1)]  # FIFO over 5 in 4 ways
    assert _misses_per_round(pages, fast) == DEFAULT_WAYS + 1


def test_a_loop_over_more_pages_than_the_tlb_holds_misses_on_every_load(fast: bool) -> None:
    pages = list(range(0x300, 0x300 + 2 * DEFAULT_ENTRIES))
    assert _misses_per_round(pages, fast) >= 2 * DEFAULT_ENTRIES


def test_a_loop_within_capacity_spread_over_the_sets_hits(fast: bool) -> None:
    pages = list(range(0x300, 0x300 + SETS * (DEFAULT_WAYS - 1)))  # 3 of each set's 4 ways
    assert _misses_per_round(pages, fast) == 0


def test_a_walk_makes_two_memory_references(fast: bool) -> None:
    cpu = boot(kernel(_loop(list(range(0x300, 0x380)), 3), paging=True), fast)
    run(cpu)
    assert cpu.stats.tlb_misses > 3 * 128
    assert cpu.stats.walk_references == 2 * cpu.stats.tlb_misses


def test_an_evicted_translation_is_walked_again_so_a_changed_pte_shows(fast: bool) -> None:
    """Architecturally a TLB may drop an entry at any time; x86 software must ``invlpg`` after
    changing a PTE.  Within capacity the stale entry stays (test_paging.py); evicted, it goes."""
    evict = "\n".join(f"        mov ebx, [{(0x305 + k * SETS) << 12:#x}]" for k in range(1, DEFAULT_WAYS + 1))
    body = f"""        mov [0x305000], 0xAAAA
        mov [0x301000], 0xBBBB
        mov eax, [0x305000]
        mov [{PT + 0x305 * 4}], 0x301007      ; remapped, no invlpg
        mov ecx, [0x305000]                    ; stale: still 0xAAAA
{evict}
        mov edx, [0x305000]                    ; evicted, walked again: 0xBBBB
        hlt"""
    cpu = boot(kernel(body, paging=True), fast)
    run(cpu)
    assert (reg(cpu, "eax"), reg(cpu, "ecx"), reg(cpu, "edx")) == (0xAAAA, 0xAAAA, 0xBBBB)


def test_an_eviction_drops_the_page_from_the_fast_caches_too() -> None:
    """The compiled code's caches stay a subset of the TLB: a hit there is a TLB hit."""
    cpu = boot(kernel(_loop(list(range(0x300, 0x300 + 2 * DEFAULT_ENTRIES)), 2), paging=True), True)
    run(cpu)
    mmu = cpu.mmu
    for mode in range(4, 8):  # the paging-on modes
        assert set(mmu.read_cache[mode]) <= set(mmu.tlb)
        assert set(mmu.write_cache[mode]) <= set(mmu.tlb)


# ---------------------------------------------------------------- what the size never changes

WORKLOADS: dict[str, dict[str, int]] = {
    "tlbmiss": {"PAGES": 80, "ITERATIONS": 3},
    "pagefault": {"ITERATIONS": 6},
    "ptemod": {"ITERATIONS": 4},
    "syscall": {"ITERATIONS": 10},
    "spawnwait": {"ITERATIONS": 2},
}
SIZES = [TlbGeometry(1, 1), TlbGeometry(8, 2), TlbGeometry(), TlbGeometry(1024, 1024)]


def _seen(doc: dict[str, Any]) -> dict[str, Any]:
    guest = {k: v for k, v in doc["stats"]["guest"].items() if k != "cycles"}
    return {"console": doc["console"], "exit": doc["exit"], "registers": doc["registers"], "guest": guest}


@pytest.mark.parametrize("technique", ["native", "bt", "hw", "hw+np"])
@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_the_tlb_size_changes_the_walks_never_the_results_or_the_virtual_time(
    workload: str, technique: str
) -> None:
    name, _, np = technique.partition("+")
    image = build_image(workload, "stock", WORKLOADS[workload])
    runs = [run_vm(image, technique=name, nested_paging=bool(np), tlb=size).to_json() for size in SIZES]
    assert all(_seen(doc) == _seen(runs[0]) for doc in runs[1:])
    misses = [doc["stats"]["host"]["tlb_misses"] for doc in runs]
    assert misses[0] > misses[-1]  # one entry against 1,024: the walks differ


def test_the_default_size_is_what_a_run_gets() -> None:
    image = build_image("tlbmiss", "stock", {"PAGES": 80, "ITERATIONS": 3})
    a = run_vm(image, technique="native").to_json()["stats"]["host"]
    b = run_vm(image, technique="native", tlb=TlbGeometry(64, 4)).to_json()["stats"]["host"]
    assert a["tlb_misses"] == b["tlb_misses"]


def test_nested_paging_walks_eight_references_per_miss_shadow_paging_two() -> None:
    """Bhargava et al.: (n+1)^2 - 1 references for n = 2 levels, against n."""
    image = build_image("tlbmiss", "stock", {"PAGES": 128, "ITERATIONS": 4})
    for nested, refs in ((False, 2), (True, 8)):
        host = run_vm(image, technique="hw", nested_paging=nested).to_json()["stats"]["host"]
        assert host["tlb_misses"] > 4 * 128
        assert host["walk_references"] == refs * host["tlb_misses"]


def test_stats_count_walk_references_from_zero() -> None:
    assert Stats().walk_references == 0
