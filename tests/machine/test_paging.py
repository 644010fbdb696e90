"""Paging: permissions, cr0.WP, and the modelled TLB (a changed PTE takes effect after invlpg,
a cr3 write or a PG toggle; a page fault drops the page's entry, as the SDM says)."""

from __future__ import annotations

from tests.machine.conftest import PD, PT, kernel, reg, run_to_halt, stack, stopped_at_vector, sym
from tests.machine.test_events import to_ring


def pte(page: int) -> int:
    return PT + page * 4


def test_changed_pte_is_ignored_until_invlpg(fast: bool) -> None:
    # page 0x300 maps frame 0x300; it is read (cached), remapped to frame 0x301 without invlpg
    body = f"""        mov [0x300000], 0xAAAA
        mov [0x301000], 0xBBBB
        mov eax, [0x300000]
        mov [{pte(0x300)}], 0x301007
        mov ebx, [0x300000]         ; stale: still 0xAAAA
        invlpg [0x300000]
        mov ecx, [0x300000]         ; now 0xBBBB
        hlt"""
    cpu = run_to_halt(kernel(body, paging=True), fast)
    assert (reg(cpu, "eax"), reg(cpu, "ebx"), reg(cpu, "ecx")) == (0xAAAA, 0xAAAA, 0xBBBB)


def test_cr3_write_flushes_the_tlb(fast: bool) -> None:
    body = f"""        mov [0x301000], 0xBBBB
        mov eax, [0x300000]
        mov [{pte(0x300)}], 0x301007
        mov eax, cr3
        mov cr3, eax
        mov ebx, [0x300000]
        hlt"""
    assert reg(run_to_halt(kernel(body, paging=True), fast), "ebx") == 0xBBBB


def test_toggling_pg_flushes_the_tlb(fast: bool) -> None:
    body = f"""        mov [0x301000], 0xBBBB
        mov eax, [0x300000]
        mov [{pte(0x300)}], 0x301007
        mov eax, cr0
        and eax, 0x7FFFFFFF
        mov cr0, eax
        or eax, 0x80000000
        mov cr0, eax
        mov ebx, [0x300000]
        hlt"""
    assert reg(run_to_halt(kernel(body, paging=True), fast), "ebx") == 0xBBBB


def test_page_fault_drops_the_stale_entry_so_a_retry_sees_the_fixed_pte(fast: bool) -> None:
    # the #PF handler makes the page writable and irets without invlpg: the retry succeeds
    body = f"""        mov eax, [0x300000]              ; cache the page read-only below
        mov [{pte(0x300)}], 0x300005        ; P|U, not W
        invlpg [0x300000]
{to_ring(3)}
        mov [0x300000], 0x77
        mov ebx, [0x300000]
        int 33"""
    tail = f"""pf:     mov [{pte(0x300)}], 0x300007
        add esp, 4
        iret"""
    from tests.machine.conftest import gate

    src = kernel(body, paging=True, gates={14: gate("pf"), 33: gate("fault_33", dpl=3)}, tail=tail)
    cpu = run_to_halt(src, fast)
    assert stopped_at_vector(cpu, src) == 33
    assert reg(cpu, "ebx") == 0x77
    assert cpu.stats.exceptions[14] == 1


def test_supervisor_write_to_read_only_page_needs_wp(fast: bool) -> None:
    # WP = 0: the ring-0 write succeeds; WP = 1: #PF with P|W = 3
    body = f"""        mov [{pte(0x300)}], 0x300001
        mov [0x300000], 1
        mov eax, cr0
        or eax, 0x10000
        mov cr0, eax
faulting: mov [0x300000], 2"""
    src = kernel(body, paging=True)
    cpu = run_to_halt(src, fast)
    assert stopped_at_vector(cpu, src) == 14
    assert stack(cpu, 2) == [3, sym(src, "faulting")]
    assert cpu.memory.read32(0x300000) == 1


def test_user_access_needs_u_in_both_levels(fast: bool) -> None:
    # a second table for 4-8 MiB whose PDE lacks U; the PTE has it
    body = f"""        mov [{PD + 4}], 0x82003
        mov [0x82000], 0x3007
{to_ring(3)}
faulting: mov eax, [0x400000]"""
    src = kernel(body, paging=True)
    cpu = run_to_halt(src, fast)
    assert stack(cpu, 2) == [5, sym(src, "faulting")]  # P|U, read
    assert cpu.state.cr2 == 0x400000


def test_instruction_fetch_at_ring3_needs_u(fast: bool) -> None:
    body = f"""        mov eax, outer
        shr eax, 12
        shl eax, 2
        add eax, {PT}
        mov ebx, [eax]
        and ebx, 0xFFFFFFFB
        mov [eax], ebx
        invlpg [outer]
{to_ring(3)}
        nop"""
    src = kernel(body, paging=True)
    cpu = run_to_halt(src, fast)
    assert stopped_at_vector(cpu, src) == 14
    assert stack(cpu, 2) == [5, sym(src, "outer")]
    assert cpu.state.cr2 == sym(src, "outer")


def test_paging_does_not_write_accessed_or_dirty_bits(fast: bool) -> None:
    body = "        mov [0x300000], 1\n        mov eax, [0x300000]\n        hlt"
    cpu = run_to_halt(kernel(body, paging=True), fast)
    assert cpu.memory.read32(pte(0x300)) == 0x300007
    assert cpu.memory.read32(PD) == PT | 7
