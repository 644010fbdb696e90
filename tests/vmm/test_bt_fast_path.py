"""bt's fast path: chains of innocuous translations run on the core's compiled code.

An all-DIRECT block (innocuous instructions up to a branch) translates to itself, so bt runs it
on the core's compiled code (``Cpu.run_straight``), and the core goes on into the blocks it is
chained to (``TranslationCache.follow``) without coming back to the VMM's dispatcher.  What must
not change: such blocks are still dropped when their (write-protected) page is written, a
self-checking block (code sharing a page with data the guest writes) is still compared with
memory before every use, the counters still count what they say, and the guest is equivalent
to native.  Speed is the benchmark's business (``ringlab bench --suite efficiency``).
"""

from __future__ import annotations

from ringlab.vmm import VM, make_technique
from ringlab.vmm.translation_cache import Block, TranslationCache
from tests.vmm.conftest import native, observable, program, vm

# A two-block loop (cmp/jne, then mov/add/dec/jnz), hot enough for the core to compile it, that
# patches the immediate of its own `mov ebx` once per round from inside the loop.
PATCHING_LOOP = """
.entry start
start:
    mov esi, 0
    mov edi, ROUNDS
outer:
    mov ecx, 1000
inner:
    {extra}
    cmp ecx, 10
    jne nopatch
    add [patch + 2], 1      ; a write into the loop's own code, from the loop
nopatch:
patch:
    mov ebx, 1              ; its immediate grows by one each round
    add esi, ebx
    dec ecx
    jnz inner
    dec edi
    jnz outer
    mov eax, [count]
    add eax, esi
    out 0xF4, eax           ; power off: code = count + sum
count: .dword 0
"""


def _loop(rounds: int, *, shared_data: bool) -> str:
    # shared_data: a variable in the code's own page, written every iteration, so the page
    # stops being write-protected after a few invalidations and its blocks self-check.
    extra = "inc [count]" if shared_data else "nop"
    return PATCHING_LOOP.replace("ROUNDS", str(rounds)).format(extra=extra)


def _sum(rounds: int) -> int:
    """esi at the end: in round r the mov's immediate is r for 990 iterations, then r + 1."""
    return sum(990 * r + 10 * (r + 1) for r in range(1, rounds + 1))


def _run_bt(source: str) -> tuple[dict[str, object], TranslationCache]:
    machine = VM(program(source), make_technique("bt"))
    result = machine.run(1_000_000).to_json()
    cache = machine.technique.cache  # type: ignore[attr-defined]
    assert isinstance(cache, TranslationCache)
    return result, cache


def test_chained_innocuous_blocks_run_in_one_core_call_and_are_dropped_when_written() -> None:
    source = _loop(3, shared_data=False)
    expected = native(program(source))
    result, cache = _run_bt(source)
    assert observable(result) == observable(expected)
    assert expected["registers"]["esi"] == _sum(3)  # every patch was seen
    host = result["stats"]["host"]  # type: ignore[index]
    # 3,000 iterations of two blocks: nearly every block entry is a chain link followed, and
    # most of them by the core itself (far fewer core calls than links followed)
    assert host["translation_chained"] >= 5_000
    assert host["runs"] * 10 < host["translation_chained"]
    # each patch (a write to a write-protected page) dropped the page's blocks
    assert host["translation_invalidations"] >= 3
    assert not cache.volatile


def test_self_checking_blocks_are_compared_before_each_chained_use() -> None:
    source = _loop(3, shared_data=True)
    expected = native(program(source))
    result, cache = _run_bt(source)
    assert observable(result) == observable(expected)
    assert cache.volatile  # the page mixes code and data: its blocks check themselves
    assert expected["registers"]["esi"] == _sum(3)
    host = result["stats"]["host"]  # type: ignore[index]
    assert host["translation_chained"] >= 5_000
    assert host["runs"] * 10 < host["translation_chained"]
    # every use of a self-checking block after the page turned volatile was a comparison
    assert cache.self_checks >= host["translation_chained"] - 500


def test_a_block_that_writes_its_own_code_on_a_self_checking_page_runs_the_new_code() -> None:
    """The patching `add` and the patched `mov` are in one block: nothing faults (the page is
    not protected any more), so the block must be compared again once part of it has run."""
    for rounds in (2, 5, 8):
        source = _loop(rounds, shared_data=True)
        result, _ = _run_bt(source)
        assert result["registers"]["esi"] == _sum(rounds)  # type: ignore[index]
        assert observable(result) == observable(native(program(source))), rounds


def _linked_pair(cache: TranslationCache) -> tuple[Block, int, Block]:
    for block in cache._blocks.values():
        for eip, linked in block.links.items():
            if linked.all_direct and linked.valid and linked is not block:
                return block, eip, linked
    raise AssertionError("no chained all-DIRECT block")


def test_follow_takes_only_valid_unchanged_links_for_the_same_code() -> None:
    machine = VM(program(_loop(3, shared_data=True)), make_technique("bt"))
    machine.run(1_000_000)
    cache = machine.technique.cache  # type: ignore[attr-defined]
    assert isinstance(cache, TranslationCache)
    current, eip, linked = _linked_pair(cache)
    assert linked.source is not None  # self-checking

    cache.current = current
    chained, checks = cache.chained, cache.self_checks
    assert cache.follow(eip, linked.pa)
    assert cache.current is linked and cache.chained == chained + 1 and cache.self_checks == checks + 1

    cache.current = current
    assert not cache.follow(eip, linked.pa + 0x1000)  # same eip, other code (page tables changed)
    assert not cache.follow((eip + 1) & 0xFFFFFFFF, linked.pa + 1)  # not a successor
    assert cache.current is current and cache.chained == chained + 1

    at = linked.source[0]
    data = machine.cpu.memory.data
    data[at] ^= 0xFF  # the code changed under a self-checking block
    invalidations = cache.invalidations
    assert not cache.follow(eip, linked.pa)
    assert not linked.valid and cache.invalidations == invalidations + 1
    data[at] ^= 0xFF
    assert not cache.follow(eip, linked.pa)  # dropped stays dropped: it will be translated again


def test_counters_add_up() -> None:
    """Every block bt enters is a fresh translation, a cache hit or a chain link followed (by
    the VMM's dispatcher or by the core); translated_instructions counts the translations' ops."""
    result, cache = _run_bt(_loop(4, shared_data=False))
    guest = result["stats"]["guest"]  # type: ignore[index]
    host = result["stats"]["host"]  # type: ignore[index]
    assert guest["translations"] == cache.translations > 0
    assert host["translation_cache_hits"] == cache.hits
    assert host["translation_chained"] == cache.chained
    kept = [b for b in cache._blocks.values() if b.valid]
    assert sum(len(b.ops) for b in kept) <= guest["translated_instructions"]
    # 4 rounds x 1,000 iterations x 2 blocks, give or take the first entries and the rounds' ends
    entries = cache.translations + cache.hits + cache.chained
    assert 4 * 1000 * 2 - 50 <= entries <= 4 * 1000 * 2 + 50


def test_compute_workload_kernel_runs_mostly_chained() -> None:
    """The guest kernel's timer path (scheduler and wake_sleepers loops: blocks of two or three
    instructions, on a page shared with the kernel's variables, so self-checking) under bt:
    almost every block is entered by a chain link; the guest stays equivalent."""
    from ringlab.guestos.build import build_image

    image = build_image("compute", "stock", {"ROUNDS": 8})
    result = vm(image, "bt")
    assert observable(result) == observable(native(image))
    host, guest = result["stats"]["host"], result["stats"]["guest"]
    assert host["translation_chained"] > 20 * (host["translation_cache_hits"] + guest["translations"])
