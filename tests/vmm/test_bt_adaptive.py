"""bt's indirect branches and adaptive translation (Adams & Agesen 2006, sections 4.2 and 6).

* An indirect branch (``ret``, ``call r``, ``jmp r``) in translated kernel code cannot jump to
  its guest target: it looks the target's translation up, once per branch executed
  (``indirect_lookups``).  User code runs directly on the core, so its branches cost nothing.
* bt traces the guest page tables its shadow mirrors (write-protects them); a kernel write to one
  traps into the VMM, which makes it (``traced_writes``).  After ``ADAPT_AFTER`` traps at one
  instruction, that instruction is translated again as an adaptive callout
  (``sensitive.<mnemonic>.adaptive``) that writes without trapping.  In-process and with the
  translation on another CPU (the services' pCPU) alike, and equivalent to native throughout.
"""

from __future__ import annotations

from typing import Any

import pytest

from ringlab.guestos.build import build_image
from ringlab.vmm import VM, make_technique
from ringlab.vmm.bt import ADAPT_AFTER, BinaryTranslation
from ringlab.vmm.costs import PROFILES, vmm_cycles
from ringlab.vmm.counters import EventCounter
from tests.vmm.conftest import native, observable, program, vm
from tests.vmm.test_translated import _split

ROUNDS = 50
# Ring 0 (a bare program: bt translates it all): per round a direct call whose ret is indirect, a
# call through a register and its ret, and a jump through a register: 4 indirect branches.
INDIRECT = f"""
.entry start
start:
    mov esp, 0x8000
    mov ecx, {ROUNDS}
    mov esi, leaf
    mov edi, back
again:
    call leaf
    call esi
    jmp edi
back:
    dec ecx
    jnz again
    out 0xF4, ecx                   ; power off, code 0
leaf:
    add eax, 1
    ret
"""


def test_each_indirect_branch_in_translated_code_is_one_lookup() -> None:
    image = program(INDIRECT)
    expected = native(image)
    result = vm(image, "bt")
    assert observable(result) == observable(expected)
    assert result["registers"]["eax"] == 2 * ROUNDS
    assert result["stats"]["guest"]["indirect_lookups"] == 4 * ROUNDS


@pytest.mark.parametrize("technique", ["native", "hw", "hw+np"])
def test_only_bt_looks_indirect_branches_up(technique: str) -> None:
    result = native(program(INDIRECT)) if technique == "native" else vm(program(INDIRECT), technique)
    assert result["stats"]["guest"].get("indirect_lookups", 0) == 0


def test_user_code_branches_run_directly_under_bt() -> None:
    """The callret workload's call/ret loop is in ring 3: 100 more rounds, no more lookups."""
    few, many = (vm(build_image("callret", "stock", {"ITERATIONS": n}), "bt") for n in (100, 200))
    assert few["stats"]["guest"]["indirect_lookups"] == many["stats"]["guest"]["indirect_lookups"]


def test_kernel_call_ret_costs_one_lookup_per_call() -> None:
    """bench op 4 (BENCH_CALLRET): the kernel calls a leaf function n times."""
    a, b = (vm(build_image("bench", "stock", {"OP": 4, "ITERATIONS": n}), "bt") for n in (100, 300))
    assert b["stats"]["guest"]["indirect_lookups"] - a["stats"]["guest"]["indirect_lookups"] == 200


@pytest.mark.parametrize("name", list(PROFILES))
def test_lookups_and_traced_writes_are_priced_in_every_profile(name: str) -> None:
    costs = PROFILES[name].costs
    assert vmm_cycles(EventCounter(indirect_lookups=3), name) == 3 * costs["indirect_lookup"] > 0
    trapped = vmm_cycles(EventCounter(traced_writes=2), name)
    assert trapped == 2 * costs["traced_write"] > 0


# -- adaptive translation of page-table writes ------------------------------------------------
# bench op 3 (BENCH_PTE): the kernel rewrites an entry of its page table (kpt, which every address
# space maps and the shadow mirrors, so it is traced) and flushes it with invlpg, n times.
def _pte_bench(n: int) -> Any:
    return build_image("bench", "stock", {"OP": 3, "ITERATIONS": n})


def _bt(image: Any) -> tuple[VM, dict[str, Any]]:
    machine = VM(image, make_technique("bt"))
    return machine, machine.run(5_000_000).to_json()


def test_a_store_that_keeps_trapping_on_a_traced_page_table_becomes_a_callout() -> None:
    machine, result = _bt(_pte_bench(40))
    assert observable(result) == observable(native(_pte_bench(40)))
    bt = machine.technique
    assert isinstance(bt, BinaryTranslation)
    # the PTE write in sys_bench's loop: exactly ADAPT_AFTER traps, then a callout
    start = machine.image.symbols["sys_bench"]
    [eip] = [e for e in bt.cache.adapted if start <= e < start + 0x100]
    assert bt.traps_at[eip] == ADAPT_AFTER
    guest = result["stats"]["guest"]
    assert guest["sensitive"]["mov"]["adaptive"] >= 40 - ADAPT_AFTER


def test_once_adapted_more_page_table_writes_take_no_more_traps() -> None:
    """20 more rounds of the loop: 20 more adaptive callouts, not one more trapped write."""
    _, few = _bt(_pte_bench(20))
    _, many = _bt(_pte_bench(40))
    a, b = few["stats"]["guest"], many["stats"]["guest"]
    assert b["traced_writes"] == a["traced_writes"] >= ADAPT_AFTER
    assert b["sensitive"]["mov"]["adaptive"] - a["sensitive"]["mov"]["adaptive"] == 20
    assert b["callouts"] - a["callouts"] == 40  # and the invlpg's
    assert b["world_switches"] - a["world_switches"] == 40


def test_adaptive_translation_works_the_same_with_the_translation_on_another_cpu() -> None:
    """The pCPU learns the adapted instruction (TcRun.adapted) and runs it as a callout; every
    count the guest determines is the in-process run's (translations depend on the slices)."""
    image = _pte_bench(30)
    machine, _ = _split(image)
    got = machine.run(5_000_000).to_json()
    _, want = _bt(image)
    assert observable(got) == observable(want)
    slice_dependent = ("translations", "translated_instructions", "cycles")
    assert {k: v for k, v in got["stats"]["guest"].items() if k not in slice_dependent} == {
        k: v for k, v in want["stats"]["guest"].items() if k not in slice_dependent
    }
    bt = machine.technique
    assert isinstance(bt, BinaryTranslation)
    executor = machine.runner.executor  # type: ignore[attr-defined]
    assert bt.cache.adapted and bt.cache.adapted <= executor.cache.adapted


def test_a_bare_kernel_rewriting_its_page_table_is_adapted_and_equals_native() -> None:
    """Ring 0 with paging on: the first hidden fault shadows the page table (all of it) and
    traces it; the loop then rewrites an unused entry 20 times through the identity mapping."""
    source = """
.entry start
start:
    mov esp, 0x8000
    mov [pd], pt + 7                ; PDE 0 -> pt, which maps the first 4 MiB to themselves
    mov eax, pd
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80010000              ; PG | WP
    mov cr0, eax
    mov ecx, 20
again:
    mov [pt + 4000], ecx            ; entry 1000 (linear 0x3E8000): never present, never used
    dec ecx
    jnz again
    mov eax, [pt + 4000]
    out 0xF4, eax                   ; power off, code 1 (the last value written)
.align 4096
pd: .space 4096
pt:
"""
    identity = "\n".join(f"    .dword {(i << 12) | 7:#x}" for i in range(1000))
    image = program(source + identity + "\n    .space 96\n")
    expected = native(image)
    assert expected["exit"]["code"] == 1
    _, result = _bt(image)
    assert observable(result) == observable(expected)
    guest = result["stats"]["guest"]
    assert guest["traced_writes"] == ADAPT_AFTER
    assert guest["sensitive"]["mov"]["adaptive"] == 20 - ADAPT_AFTER
