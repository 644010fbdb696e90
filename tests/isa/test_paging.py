"""Paging, #PF and the TLB (docs/machine.md "Paging" and "Precise rules > Addresses / Control registers").

``kernel(paging=True)`` identity-maps the first 4 MiB with every PDE/PTE = P|W|U through
``rl_pd`` / ``rl_pt0``; tests change single PTEs (``pte(addr)`` is the PTE's address) and
``invlpg`` them.  Test pages live at 1 MiB and above, away from the prelude.
#PF error code: bit 0 present, bit 1 write, bit 2 user; cr2 = the faulting linear address.
"""

from __future__ import annotations

import pytest

from .conftest import at_ring, frame, gate, kernel, rec_gate, run

SMALL = 0x40000


def pte(addr: int) -> str:
    return f"rl_pt0 + {(addr >> 12) * 4:#x}"


def set_pte(addr: int, value: str) -> str:
    return f"""
        mov [{pte(addr)}], {value}
        invlpg [{addr:#x}]
    """


# ---------------------------------------------------------------- supervisor accesses


def test_pf_not_present_read_at_ring0_error_code_0_and_cr2():
    src = kernel(
        set_pte(0x100000, "0")
        + """
        mov eax, 0x55
    here:
        mov eax, [0x100123]
    """,
        paging=True,
    )
    r = run(src)
    rec = r["rec"]
    assert rec["vec"] == 14, r["console"]
    f = frame(rec, err=True)
    assert f["err"] == 0
    assert f["eip"] == r["sym"]["here"]
    assert rec["cr2"] == 0x100123
    assert rec["eax"] == 0x55


def test_pf_not_present_write_at_ring0_error_code_2():
    src = kernel(
        set_pte(0x100000, "0")
        + """
        mov [0x100010], eax
    """,
        paging=True,
    )
    r = run(src)
    assert r["rec"]["vec"] == 14
    assert r["rec"]["s0"] == 2
    assert r["rec"]["cr2"] == 0x100010


def test_pf_not_present_pde_read_error_code_0():
    src = kernel(
        """
        mov eax, [0x400004]      ; PDE 1 is zero
    """,
        paging=True,
    )
    r = run(src)
    assert (r["rec"]["vec"], r["rec"]["s0"], r["rec"]["cr2"]) == (14, 0, 0x400004)


def test_supervisor_write_to_read_only_page_succeeds_when_wp_clear():
    src = kernel(
        set_pte(0x100000, "0x100005")  # P | U, not W
        + """
        mov [0x100000], 0x1234
        mov eax, [0x100000]
        out 0xF4, eax
    """,
        paging=True,
        wp=False,
    )
    r = run(src)
    assert r["exit"]["reason"] == "poweroff", r["console"]
    assert r["registers"]["eax"] == 0x1234


def test_supervisor_write_to_read_only_page_faults_when_wp_set():
    src = kernel(
        set_pte(0x100000, "0x100005")
        + """
        mov [0x100000], 0x4321
    """,
        paging=True,
        wp=True,
    )
    r = run(src)
    rec = r["rec"]
    assert rec["vec"] == 14, r["console"]
    assert rec["s0"] == 3  # present | write, supervisor
    assert rec["cr2"] == 0x100000


@pytest.mark.parametrize("ring", [1, 2])
def test_rings_1_and_2_are_supervisor_for_paging(ring):
    # U = 0 page: supervisor reads and (WP = 0) writes even to a read-only page succeed
    src = at_ring(
        ring,
        """
        mov [0x100000], 0x77
        mov ebx, [0x100000]
        int 0x30
    """,
        pre=set_pte(0x100000, "0x100001"),  # P only
        paging=True,
    )
    r = run(src)
    assert r["rec"] == {}, r["console"]
    assert r["registers"]["ebx"] == 0x77


@pytest.mark.parametrize("ring", [1, 2])
def test_rings_1_and_2_supervisor_write_respects_wp(ring):
    src = at_ring(
        ring,
        """
        mov [0x100000], 0x77
    """,
        pre=set_pte(0x100000, "0x100001"),
        paging=True,
        wp=True,
    )
    r = run(src)
    assert r["rec"]["vec"] == 14
    assert r["rec"]["s0"] == 3


# ---------------------------------------------------------------- user accesses


@pytest.mark.parametrize(
    ("pte_value", "access", "err"),
    [
        ("0", "mov eax, [0x100008]", 4),  # not present, read, user
        ("0", "mov [0x100008], eax", 6),  # not present, write, user
        ("0x100003", "mov eax, [0x100008]", 5),  # supervisor page, read
        ("0x100003", "mov [0x100008], eax", 7),  # supervisor page, write
        ("0x100005", "mov [0x100008], eax", 7),  # user read-only page, write
        ("0x100005", "add [0x100008], eax", 7),  # read-modify-write reports the write
    ],
)
def test_pf_error_code_user_bits_at_ring3(pte_value, access, err):
    src = at_ring(
        3,
        f"""
    here:
        {access}
    """,
        pre=set_pte(0x100000, pte_value),
        paging=True,
    )
    r = run(src)
    rec = r["rec"]
    assert rec["vec"] == 14, r["console"]
    f = frame(rec, err=True)
    assert f["err"] == err
    assert f["eip"] == r["sym"]["here"]
    assert f["cs"] == 3
    assert rec["cr2"] == 0x100008


def test_user_read_of_read_only_user_page_succeeds():
    src = at_ring(
        3,
        """
        mov ebx, [0x100008]
        int 0x30
    """,
        pre=set_pte(0x100000, "0x100005") + "    mov [0x100008], 0xFEED\n",
        paging=True,
    )
    r = run(src)
    assert r["registers"]["ebx"] == 0xFEED


# second-level checks through PDE 1: linear 0x400000 -> pt1 -> physical 0x100000
PT1 = """
.align 4096
pt1:
    .dword 0x100007
    .space 4092
"""


@pytest.mark.parametrize(
    ("pde_flags", "access", "err"),
    [
        (3, "mov eax, [0x400010]", 5),  # PDE without U: user read faults even though PTE has U
        (5, "mov [0x400010], eax", 7),  # PDE without W: user write faults
        (0, "mov eax, [0x400010]", 4),  # PDE not present
        (6, "mov [0x400010], eax", 6),  # PDE not present (W|U set)
    ],
)
def test_user_access_needs_u_and_w_in_both_levels(pde_flags, access, err):
    src = at_ring(
        3,
        f"""
        {access}
    """,
        pre=f"    mov [rl_pd + 4], pt1 + {pde_flags}\n    mov eax, cr3\n    mov cr3, eax\n",
        paging=True,
        data=PT1,
    )
    r = run(src)
    assert r["rec"]["vec"] == 14, r["console"]
    assert r["rec"]["s0"] == err
    assert r["rec"]["cr2"] == 0x400010


def test_supervisor_write_needs_w_in_pde_only_when_wp_set():
    body = """
        mov [rl_pd + 4], pt1 + 5      ; PDE: P | U, not W
        mov eax, cr3
        mov cr3, eax
        mov [0x400020], 0x99
        mov ebx, [0x100020]           ; the same physical bytes through the identity map
        mov eax, cr0
        or eax, 0x10000               ; WP
        mov cr0, eax
    here:
        mov [0x400020], 0x98
    """
    r = run(kernel(body, paging=True, data=PT1))
    rec = r["rec"]
    assert rec["ebx"] == 0x99
    assert rec["vec"] == 14, r["console"]
    assert rec["s0"] == 3
    assert frame(rec, err=True)["eip"] == r["sym"]["here"]


def test_two_level_translation_maps_linear_to_frame():
    body = """
        mov [rl_pd + 4], pt1 + 7
        mov eax, cr3
        mov cr3, eax
        mov [0x100abc], 0x13579BDF
        mov ebx, [0x400abc]
        out 0xF4, eax
    """
    r = run(kernel(body, paging=True, data=PT1))
    assert r["registers"]["ebx"] == 0x13579BDF


def test_paging_does_not_write_accessed_or_dirty_bits():
    body = """
        mov [rl_pd + 4], pt1 + 7
        mov eax, cr3
        mov cr3, eax
        mov [0x400000], 1
        mov ecx, [0x400000]
        mov ebx, [pt1]
        mov edx, [rl_pd + 4]
        out 0xF4, eax
    """
    r = run(kernel(body, paging=True, data=PT1))
    assert r["registers"]["ebx"] == 0x100007
    assert r["registers"]["edx"] == r["sym"]["pt1"] + 7


def test_instruction_fetch_at_cpl3_needs_u():
    body = f"""
        mov [rl_pt0 + (upage >> 12) * 4], upage + 3   ; P | W, supervisor only
        invlpg [upage]
{to_ring3("upage")}
    .align 4096
    upage:
        nop
        int 0x30
    .align 4096
    """
    r = run(kernel(body, paging=True))
    rec = r["rec"]
    assert rec["vec"] == 14, r["console"]
    f = frame(rec, err=True)
    assert f["err"] == 5  # present, read, user
    assert f["eip"] == r["sym"]["upage"]
    assert rec["cr2"] == r["sym"]["upage"]


def test_instruction_fetch_at_ring0_from_not_present_page():
    src = kernel(
        set_pte(0x100000, "0")
        + """
        jmp 0x100000
    """,
        paging=True,
    )
    r = run(src)
    rec = r["rec"]
    assert rec["vec"] == 14
    assert (rec["s0"], rec["s1"], rec["cr2"]) == (0, 0x100000, 0x100000)


def to_ring3(target: str) -> str:
    return f"""
        push rl_ustack_top
        push 0
        push 3
        push {target}
        iret
    """


# ---------------------------------------------------------------- page-crossing accesses


def test_page_crossing_read_faulting_on_second_page_reports_that_page_start():
    src = kernel(
        set_pte(0x101000, "0")
        + """
        mov eax, 0x66
        mov eax, [0x100FFE]
    """,
        paging=True,
    )
    r = run(src)
    rec = r["rec"]
    assert rec["vec"] == 14
    assert rec["s0"] == 0
    assert rec["cr2"] == 0x101000
    assert rec["eax"] == 0x66


def test_page_crossing_write_faulting_on_second_page_writes_nothing():
    src = kernel(
        """
        mov [0x100FFC], 0x11223344
    """
        + set_pte(0x101000, "0x101005")  # second page read-only, WP on
        + """
        mov eax, 0xAABBCCDD
        mov [0x100FFE], eax
    pf:
        mov ebx, [0x100FFC]
        mov ecx, cr2
        out 0xF4, eax
    """,
        paging=True,
        wp=True,
        gates={14: gate("pf")},
    )
    r = run(src)
    assert r["registers"]["ebx"] == 0x11223344
    assert r["registers"]["ecx"] == 0x101000


def test_page_crossing_access_faulting_on_first_page_reports_the_address():
    src = kernel(
        set_pte(0x100000, "0")
        + """
        mov eax, [0x100FFE]
    """,
        paging=True,
    )
    r = run(src)
    assert r["rec"]["cr2"] == 0x100FFE


def test_page_crossing_access_succeeds_when_both_pages_present():
    src = kernel(
        """
        mov [0x100FFE], 0xA1B2C3D4
        movzx eax, byte [0x101001]
        mov ebx, [0x100FFE]
        out 0xF4, eax
    """,
        paging=True,
    )
    r = run(src)
    assert r["registers"]["eax"] == 0xA1
    assert r["registers"]["ebx"] == 0xA1B2C3D4


def test_page_crossing_mapping_uses_each_pages_frame():
    # linear 0x100000 -> frame 0x200000, linear 0x101000 -> frame 0x300000
    src = kernel(
        set_pte(0x100000, "0x200007")
        + set_pte(0x101000, "0x300007")
        + """
        mov [0x100FFE], 0xA1B2C3D4
        mov eax, [0x200FFC]
        mov ebx, [0x300000]
        out 0xF4, eax
    """,
        paging=True,
    )
    r = run(src)
    assert r["registers"]["eax"] == 0xC3D40000
    assert r["registers"]["ebx"] == 0x0000A1B2


# ---------------------------------------------------------------- TLB


REMAP = """
        mov [0x100000], 0xAAAA        ; frame 0x100000
        mov [0x200000], 0xBBBB        ; frame 0x200000
        mov eax, [0x100000]           ; linear 0x100000 is now (possibly) in the TLB
        mov [{pte}], 0x200007         ; remap linear 0x100000 -> frame 0x200000
"""


def test_invlpg_makes_changed_pte_take_effect():
    src = kernel(
        REMAP.format(pte=pte(0x100000))
        + """
        invlpg [0x100000]
        mov ebx, [0x100000]
        out 0xF4, eax
    """,
        paging=True,
    )
    assert run(src)["registers"]["ebx"] == 0xBBBB


def test_invlpg_takes_the_address_not_the_memory_behind_it():
    src = kernel(
        REMAP.format(pte=pte(0x100000))
        + """
        mov ecx, 0x100000
        invlpg [ecx + 0x123]          ; any address in the page names the page
        mov ebx, [0x100000]
        out 0xF4, eax
    """,
        paging=True,
    )
    assert run(src)["registers"]["ebx"] == 0xBBBB


def test_cr3_write_makes_changed_pte_take_effect():
    src = kernel(
        REMAP.format(pte=pte(0x100000))
        + """
        mov ecx, cr3
        mov cr3, ecx
        mov ebx, [0x100000]
        out 0xF4, eax
    """,
        paging=True,
    )
    assert run(src)["registers"]["ebx"] == 0xBBBB


def test_clearing_and_setting_pg_flushes_tlb():
    src = kernel(
        REMAP.format(pte=pte(0x100000))
        + """
        mov ecx, cr0
        and ecx, 0x7FFFFFFF
        mov cr0, ecx                  ; PG off: linear = physical
        mov edx, [0x100000]
        or ecx, 0x80000000
        mov cr0, ecx                  ; PG on again, TLB flushed
        mov ebx, [0x100000]
        out 0xF4, eax
    """,
        paging=True,
    )
    reg = run(src)["registers"]
    assert reg["edx"] == 0xAAAA
    assert reg["ebx"] == 0xBBBB


def test_invlpg_of_not_present_entry_after_marking_not_present_faults():
    src = kernel(
        """
        mov eax, [0x100000]
    """
        + set_pte(0x100000, "0")
        + """
        mov eax, [0x100000]
    """,
        paging=True,
    )
    r = run(src)
    assert r["rec"]["vec"] == 14
    assert r["rec"]["cr2"] == 0x100000


# ---------------------------------------------------------------- linear gdtr / idtr / tr


def test_idtr_base_is_a_linear_address():
    # linear page 0x300000 maps the physical page holding rl_idt; physical 0x300000 is zeros,
    # so a physical interpretation would find no present gate (and triple-fault).
    body = """
        mov eax, rl_idt
        and eax, 0xFFFFF000
        or eax, 3
        mov [rl_pt0 + 0x300 * 4], eax
        invlpg [0x300000]
        mov eax, rl_idt
        and eax, 0xFFF
        add eax, 0x300000
        mov [idtd + 2], eax
        lidt [idtd]
        int 0x31
    .align 4
    idtd: .word 64 * 8 - 1
          .dword 0
    """
    r = run(kernel(body, paging=True))
    assert r["rec"]["vec"] == 0x31, r["console"]


def test_tr_is_a_linear_address():
    body = f"""
        mov [rl_tss + 4], 0x3D000
        mov eax, rl_tss
        and eax, 0xFFFFF000
        or eax, 3
        mov [rl_pt0 + 0x301 * 4], eax
        invlpg [0x301000]
        mov eax, rl_tss
        and eax, 0xFFF
        add eax, 0x301000
        ltr eax
        str ebx
        mov [rl_r_user], ebx
{to_ring3("user")}
    user:
        cli
    """
    r = run(kernel(body, paging=True))
    rec = r["rec"]
    assert rec["vec"] == 13, r["console"]
    assert rec["esp"] == 0x3D000 - 20
    assert rec["user"] == 0x301000 + (r["sym"]["rl_tss"] & 0xFFF)


def test_lgdt_reads_its_descriptor_through_paging_and_sgdt_returns_it():
    body = """
        mov [0x200000], 0x00200017     ; at frame 0x200000: limit 0x17, base low 0x0020
        mov [0x200004], 0x00000000
        mov [rl_pt0 + 0x100 * 4], 0x200003   ; linear 0x100000 -> frame 0x200000
        invlpg [0x100000]
        lgdt [0x100000]
        sgdt [buf]
        mov eax, [buf]
        mov ebx, [buf + 2]
        out 0xF4, eax
    .align 4
    buf: .space 8
    """
    reg = run(kernel(body, paging=True))["registers"]
    assert reg["eax"] & 0xFFFF == 0x17
    assert reg["ebx"] == 0x20


# ---------------------------------------------------------------- entry pushes and page walks


def test_entry_pushes_are_supervisor_accesses():
    # esp0's page is supervisor-only (U = 0): a ring-3 int still delivers
    src = at_ring(
        3,
        """
        int 0x31
    """,
        pre="    mov [rl_tss + 4], 0x3D000\n" + set_pte(0x3C000, "0x3C003"),
        paging=True,
    )
    r = run(src)
    assert r["rec"]["vec"] == 0x31, r["console"]
    assert r["rec"]["esp"] == 0x3D000 - 16


def test_entry_push_to_read_only_stack_with_wp_faults_as_supervisor_write():
    # The push faults while delivering int n, so #PF is delivered as itself; its gate runs at
    # ring 3 (no stack switch). Error code: present | write, and *not* user.
    src = at_ring(
        3,
        """
        mov esp, 0x3E000
    here:
        int 0x31
    """,
        pre="    mov [rl_tss + 4], 0x3D000\n" + set_pte(0x3C000, "0x3C005"),
        paging=True,
        wp=True,
        iopl=3,
        gates={14: rec_gate(14, ring=3)},
    )
    r = run(src)
    rec = r["rec"]
    assert rec["vec"] == 14, r["console"]
    assert rec["hcs"] == 3
    assert rec["esp"] == 0x3E000 - 16
    f = frame(rec, err=True)
    assert f["err"] == 3
    assert (f["eip"], f["cs"]) == (r["sym"]["here"], 3)


def test_page_table_in_missing_memory_raises_mc():
    src = kernel(
        """
        mov [rl_pd + 4], 0x80007       ; the page table would be beyond RAM
        mov eax, cr3
        mov cr3, eax
    here:
        mov eax, [0x400000]
    """,
        paging=True,
    )
    r = run(src, memory_size=SMALL)
    rec = r["rec"]
    assert rec["vec"] == 18, r["console"]
    assert frame(rec, err=False)["eip"] == r["sym"]["here"]


def test_pte_frame_in_missing_memory_raises_mc():
    src = kernel(
        set_pte(0x100000, "0x80007")
        + """
        mov eax, [0x100000]
    """,
        paging=True,
    )
    r = run(src, memory_size=SMALL)
    assert r["rec"]["vec"] == 18


def test_page_walk_mc_while_delivering_exception_is_df():
    # The IDT's linear page (the prelude aligns the IDT to its own page) maps to a frame beyond
    # RAM: delivering #UD reads the gate -> #MC -> #DF -> its gate read also hits #MC -> shutdown.
    body = """
        mov ebx, rl_idt
        shr ebx, 12
        shl ebx, 2
        add ebx, rl_pt0
        mov [ebx], 0x80003
        invlpg [rl_idt]
        vmcall
    """
    r = run(kernel(body, paging=True), memory_size=SMALL)
    assert r["exit"]["reason"] == "shutdown"


XPAGE = """
    .align 4096
    xpage:
        .space 4096 - 3
    xinstr:
        mov eax, 0x12345678       ; at least 5 bytes: crosses into xpage + 0x1000
        int 0x30
        .space 4096
    """


def test_instruction_fetch_crossing_into_not_present_page_faults_with_cr2_page_start():
    body = """
        mov [rl_pt0 + ((xpage + 0x1000) >> 12) * 4], 0
        invlpg [xpage + 0x1000]
        mov eax, 0x66
        jmp xinstr
    """
    r = run(kernel(body + XPAGE, paging=True))
    rec = r["rec"]
    assert rec["vec"] == 14, r["console"]
    f = frame(rec, err=True)
    assert f["err"] == 0
    assert f["eip"] == r["sym"]["xinstr"]
    assert rec["cr2"] == r["sym"]["xpage"] + 0x1000
    assert rec["eax"] == 0x66


def test_instruction_fetch_at_ring3_crossing_into_supervisor_page_faults():
    body = f"""
        mov [rl_pt0 + ((xpage + 0x1000) >> 12) * 4], xpage + 0x1000 + 3
        invlpg [xpage + 0x1000]
{to_ring3("xinstr")}
    """
    r = run(kernel(body + XPAGE, paging=True))
    rec = r["rec"]
    assert rec["vec"] == 14, r["console"]
    assert frame(rec, err=True)["err"] == 5
    assert frame(rec, err=True)["eip"] == r["sym"]["xinstr"]
    assert rec["cr2"] == r["sym"]["xpage"] + 0x1000


def test_instruction_crossing_two_present_pages_executes():
    r = run(kernel("    jmp xinstr\n" + XPAGE, paging=True))
    assert r["exit"]["reason"] == "poweroff"
    assert r["registers"]["eax"] == 0x12345678


def test_idt_and_tss_reads_during_delivery_are_supervisor_accesses():
    # the page holding the IDT and the TSS is supervisor-only; a ring-3 int still delivers
    body = f"""
        mov [rl_pt0 + (rl_idt >> 12) * 4], rl_idt + 3
        invlpg [rl_idt]
{to_ring3("user")}
    user:
        int 0x31
    """
    r = run(kernel(body, paging=True))
    assert r["rec"]["vec"] == 0x31, r["console"]
    assert r["rec"]["hcs"] == 0


# ---------------------------------------------------------------- code, privilege and the TLB

CODE_PAGES = """
    .align 4096
    code_a:
        mov eax, 1
        ret
    .align 4096
    code_b:
        mov eax, 2
        ret
    .align 4096
    code_l:
        .space 4096               ; linear page remapped to code_a / code_b
"""


def test_remapping_a_code_page_with_invlpg_runs_the_new_code():
    body = """
        mov [rl_pt0 + (code_l >> 12) * 4], code_a + 7
        invlpg [code_l]
        call code_l
        mov ebx, eax
        call code_l
        mov ecx, eax
        mov [rl_pt0 + (code_l >> 12) * 4], code_b + 7
        invlpg [code_l]
        call code_l
        mov edx, eax
        out 0xF4, eax
    """
    reg = run(kernel(body + CODE_PAGES, paging=True))["registers"]
    assert (reg["ebx"], reg["ecx"], reg["edx"]) == (1, 1, 2)


def test_writing_code_through_a_paging_alias_takes_effect():
    # code_l is an alias of code_a's frame; patching code_a's bytes through code_l's linear
    # addresses changes what `call code_a` runs.
    body = """
        mov [rl_pt0 + (code_l >> 12) * 4], code_a + 7
        invlpg [code_l]
        call code_a
        mov ebx, eax
        mov esi, 0
    .copy:
        movzx eax, byte [code_b + esi]
        mov byte [code_l + esi], eax
        inc esi
        cmp esi, 64
        jne .copy
        call code_a
        mov ecx, eax
        out 0xF4, eax
    """
    reg = run(kernel(body + CODE_PAGES, paging=True))["registers"]
    assert (reg["ebx"], reg["ecx"]) == (1, 2)


def test_code_run_at_ring0_still_needs_u_at_ring3():
    # a supervisor-only code page executed first at ring 0, then jumped to from ring 3
    body = f"""
        mov [rl_pt0 + (code_a >> 12) * 4], code_a + 3
        invlpg [code_a]
        call code_a
        call code_a
{to_ring3("user")}
    user:
        call code_a
        int 0x30
    """
    r = run(kernel(body + CODE_PAGES, paging=True))
    rec = r["rec"]
    assert rec["vec"] == 14, r["console"]
    assert frame(rec, err=True)["err"] == 5
    assert frame(rec, err=True)["eip"] == r["sym"]["code_a"]
    assert rec["cr2"] == r["sym"]["code_a"]


def test_data_page_accessed_at_ring0_still_needs_u_at_ring3():
    src = at_ring(
        3,
        """
        mov eax, [0x100000]
    """,
        pre=set_pte(0x100000, "0x100003")
        + "    mov eax, [0x100000]\n    mov [0x100000], eax\n",  # cached by supervisor accesses
        paging=True,
    )
    r = run(src)
    assert r["rec"]["vec"] == 14
    assert r["rec"]["s0"] == 5


def test_setting_wp_applies_to_an_already_cached_read_only_page():
    src = kernel(
        set_pte(0x100000, "0x100001")
        + """
        mov [0x100000], 1          ; WP = 0: allowed (and now cached)
        mov eax, cr0
        or eax, 0x10000
        mov cr0, eax               ; WP = 1, PG unchanged: no flush required
    here:
        mov [0x100000], 2
    """,
        paging=True,
    )
    r = run(src)
    assert r["rec"]["vec"] == 14, r["console"]
    assert r["rec"]["s0"] == 3
    assert frame(r["rec"], err=True)["eip"] == r["sym"]["here"]
