"""What each technique does that the others do not: hw's VM exits, bt's translation, the
trap-and-emulate VMM's visible misbehaviour (Popek-Goldberg), pv's refusal of a stock kernel."""

from __future__ import annotations

from ringlab.guestos.build import build_image
from ringlab.vmm.costs import COSTS
from tests.vmm.conftest import native, observable, program, vm

CPUID_CONSOLE_HLT = """
.entry start
start:
    mov eax, 1
    cpuid               ; leaf 1: ecx bit 31 = running under a hypervisor
    mov esi, ecx
    mov eax, 'k'
    out 0x3F8, eax      ; console
    hlt                 ; IF = 0: the machine stops
"""


def test_hw_announces_itself_in_cpuid_leaf1_and_names_its_exits() -> None:
    image = program(CPUID_CONSOLE_HLT)
    assert native(image)["registers"]["esi"] == 0
    result = vm(image, "hw")
    assert result["registers"]["esi"] == 1 << 31  # the one allowed difference
    assert result["exit"]["reason"] == "halt" and result["console"] == "k"
    # (+ one #PF exit: paging is off, so shadow paging fills an identity entry on first fetch)
    assert result["stats"]["guest"]["vm_exits"] == {
        "EXCEPTION_NMI (0)": 1,
        "CPUID (10)": 1,
        "HLT (12)": 1,
        "IO_INSTRUCTION (30)": 1,
    }


def test_nested_paging_takes_no_exits_for_cr3_invlpg_or_page_faults() -> None:
    """The ptemod workload (map/write/unmap: PTE writes, invlpg, demand-zero page faults)."""
    image = build_image("ptemod", "stock", {"ITERATIONS": 4})
    shadow = vm(image, "hw")["stats"]["guest"]["vm_exits"]
    nested = vm(image, "hw+np")["stats"]["guest"]["vm_exits"]
    assert {"CR_ACCESS (28)", "INVLPG (14)", "EXCEPTION_NMI (0)"} <= set(shadow)
    assert set(nested) == {"IO_INSTRUCTION (30)"}


SELF_MODIFYING = """
.entry start
start:
    mov eax, 0
    mov ebx, 5
again:
    add eax, ebx
patch:
    mov ecx, 1          ; rewritten below into mov ecx, 2 (same length)
    dec ebx
    jnz again
    mov [patch + 2], 2  ; the immediate of the mov at patch: the translation must be dropped
    cmp ecx, 1
    je again_once
    out 0xF4, ecx
again_once:
    mov ebx, 1
    jmp again
"""


def test_bt_drops_translations_when_kernel_code_is_written() -> None:
    image = program(SELF_MODIFYING)
    expected = native(image)
    assert expected["exit"]["code"] == 2
    result = vm(image, "bt")
    assert observable(result) == observable(expected)
    assert result["stats"]["host"]["translation_invalidations"] >= 1


def test_bt_handles_sensitive_instructions_inline_or_by_callout() -> None:
    """The stock kernel's pv-ops: pushf/popf/cli/sti inline (no exit), I/O and cr3 callouts."""
    result = vm(build_image("hello"), "bt")
    handled = result["stats"]["guest"]["sensitive"]
    assert handled["pushf"] == {"inline": handled["pushf"]["inline"]} and handled["cli"].get("inline")
    assert handled["out"] == {"callout": handled["out"]["callout"]}
    assert handled["mov"] == {"callout": handled["mov"]["callout"]}
    assert result["stats"]["guest"]["translations"] > 0
    by_ring = result["stats"]["guest"]["retired_by_ring"]
    by_real_ring = result["stats"]["host"]["retired_by_real_ring"]
    # the kernel's instructions count at its own ring, 0; where they really ran, ring 1, is the
    # host's figure (the I/O the VMM emulated on the guest's registers retired at ring 0)
    assert by_ring["1"] == 0 and by_ring["0"] > 0
    assert by_real_ring["1"] > 10 * by_real_ring["0"]
    assert by_real_ring["0"] + by_real_ring["1"] == by_ring["0"] and by_real_ring["3"] == by_ring["3"]


SENSITIVE = """
.entry start
start:
    cli                 ; privileged (IOPL): traps at ring 1 and is emulated: virtual IF = 0
    pushf               ; sensitive, unprivileged: pushes the REAL eflags (IF = 1)
    pop eax
    mov ebx, cs         ; shows the real ring (1), natively 0
    sidt [desc]         ; shows the VMM's IDT, natively 0
    mov ecx, [desc + 2]
    out 0xF4, eax       ; power off
desc:
    .space 6
"""


def test_trap_emulate_guest_sees_the_real_machine_and_says_why() -> None:
    image = program(SENSITIVE)
    expected = native(image)["registers"]
    result = vm(image, "trap-emulate")
    regs = result["registers"]
    assert (expected["eax"] & 0x200, expected["ebx"], expected["ecx"]) == (0, 0, 0)
    assert regs["eax"] & 0x200 and regs["ebx"] == 1 and regs["ecx"] != 0
    seen = {d["instruction"]: d for d in result["diagnostics"]}
    assert set(seen) == {"pushf", "mov ebx, cs", "sidt [0x1021]"} or {"pushf", "mov ebx, cs"} <= set(seen)
    assert seen["pushf"]["address"] == image.entry + 1 and seen["pushf"]["guest_ring"] == 0
    assert "IF=1" in seen["pushf"]["guest_saw"] and "IF=0" in seen["pushf"]["native_would_show"]
    assert "Popek-Goldberg" in seen["mov ebx, cs"]["why"]
    # watching them is neither a trap nor an exit: only cli and out trapped
    assert result["stats"]["guest"]["traps"] == {"cli": 1, "out": 1}


POPF = """
.entry start
start:
    cli
    push 0x200
    popf                ; natively IF = 1; at ring 1 it silently leaves IF alone
    hlt                 ; natively: IF = 1 but the timer is off -> halt; the flags tell
"""


def test_trap_emulate_popf_silently_fails_to_restore_if() -> None:
    image = program(POPF)
    assert native(image)["registers"]["eflags"] & 0x200
    result = vm(image, "trap-emulate")
    assert not result["registers"]["eflags"] & 0x200
    assert any(d["instruction"] == "popf" for d in result["diagnostics"])


def test_trap_emulate_boots_the_stock_kernel_and_reports_its_pvops() -> None:
    result = vm(build_image("hello"), "trap-emulate")
    assert result["console"] == "Hello from ring 3! I am pid 1.\n"
    assert {d["instruction"].split()[0] for d in result["diagnostics"]} >= {"pushf", "popf"}


def test_bt_and_hw_report_no_diagnostics() -> None:
    for technique in ("bt", "hw"):
        assert "diagnostics" not in vm(program(SENSITIVE), technique)


def test_pv_refuses_a_stock_kernel_at_its_first_privileged_instruction() -> None:
    image = build_image("hello")
    result = vm(image, "pv")
    assert result["exit"]["reason"] == "refused"
    detail = result["exit"]["detail"]
    assert "'lidt [" in detail and "privileged instruction" in detail and "paravirt" in detail
    assert "int 0x82" in detail
    assert f"{result['registers']['eip']:#010x}" in detail


def test_cost_model_charges_exits_and_translations() -> None:
    """The syscall workload (getpid in a loop): every technique costs more cycles than native."""
    image = build_image("syscall", "stock", {"ITERATIONS": 30})
    base = vm(image, "native")["stats"]["guest"]["cycles"]
    stats = vm(image, "native")["stats"]
    guest, walks = stats["guest"], stats["host"]["walk_references"]
    # CPI 1, the console's device accesses, the page walks' memory references
    assert base == guest["retired"] + guest["io"] * COSTS["device_io"] + walks * COSTS["walk_reference"]
    for technique in ("trap-emulate", "bt", "hw", "hw+np"):
        assert vm(image, technique)["stats"]["guest"]["cycles"] > base
    pv = vm(build_image("syscall", "paravirt", {"ITERATIONS": 30}), "pv")["stats"]["guest"]["cycles"]
    assert pv > base
