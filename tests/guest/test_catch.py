"""catch(vector, handler), system call 11: a process handles its own divide errors (and #UD, #GP)
in user mode and goes on; without a handler, or after catch(vector, 0), the kernel kills it as
before (src/ringlab/guestos/kernel/trap.s, deliver_to_user; docs/guest-os.md).

The kernel pushes the faulting instruction's address on the user stack and resumes the process
at the handler with every register as it was; the handler returns there with ``ret`` (after
``add [esp], 2`` to step over a 2-byte ``div``).  Both kernel flavours share the code, so the
same program behaves the same under every technique.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from ringlab.guestos.build import WORKLOADS, build_custom_image, build_image
from ringlab.machine import RunResult
from tests.vmm.conftest import native, observable, vm

RunGuest = Callable[..., RunResult]
PRINT_EAX = "    call print_signed\n    mov eax, 10\n    call putc\n"

# The handler records what it saw (the return address it was given, the ring it runs in, esp)
# and steps over the div; main checks that every register came back.
CAUGHT = (
    """
.include "lib.s"
main:
    mov eax, SYS_CATCH
    mov ebx, CATCH_DE
    mov ecx, handler
    int 0x80
"""
    + PRINT_EAX
    + """
    mov esi, 0x1234
    mov ebp, esp                    ; esp before the fault
    mov eax, 7
    xor ecx, ecx
fault_here:
    div ecx                         ; #DE: the handler runs, then we go on here
    mov edx, eax                    ; 7: the div wrote nothing
    mov eax, [seen_eip]
    sub eax, fault_here             ; 0: the handler was given the faulting address
"""
    + PRINT_EAX
    + """
    mov eax, [seen_cs]
    and eax, 3                      ; 3: the handler ran in user mode
"""
    + PRINT_EAX
    + """
    mov eax, edx
"""
    + PRINT_EAX
    + """
    mov eax, esi                    ; 4660 (0x1234): registers as they were
"""
    + PRINT_EAX
    + """
    mov eax, ebp
    sub eax, esp                    ; 0: the handler's ret popped what the kernel pushed
"""
    + PRINT_EAX
    + """
    mov eax, [seen_esp]
    sub eax, ebp                    ; -4: one dword below the faulting esp
"""
    + PRINT_EAX
    + """
    xor eax, eax
    ret

handler:
    mov [seen_esp], esp
    push eax
    mov eax, cs
    mov [seen_cs], eax
    mov eax, [esp + 4]
    mov [seen_eip], eax
    pop eax
    add [esp], 2                    ; `div r` is 2 bytes
    ret

.align 4
seen_eip: .dword 0
seen_cs: .dword 0
seen_esp: .dword 0
"""
)
CAUGHT_OUTPUT = b"0\n0\n3\n7\n4660\n0\n-4\n"


def test_a_divide_error_runs_the_handler_in_user_mode_which_resumes_after_the_div(
    run_guest: RunGuest,
) -> None:
    result = run_guest(CAUGHT)
    assert result.console == CAUGHT_OUTPUT
    assert (result.reason, result.code) == ("poweroff", 0)
    # the #DE was raised and delivered to the kernel, which sent it on to the handler
    assert result.to_json()["stats"]["guest"]["exceptions"].get("0") == 1


def test_catch_refuses_other_vectors_and_handlers_outside_user_space(run_guest: RunGuest) -> None:
    """#PF (14) stays the kernel's (demand paging); a handler must be a user address or 0."""
    calls = "".join(
        f"    mov eax, SYS_CATCH\n    mov ebx, {vector}\n    mov ecx, {handler}\n    int 0x80\n{PRINT_EAX}"
        for vector, handler in [
            (14, "handler"),
            (99, "handler"),
            ("CATCH_DE", "0x1000"),
            ("CATCH_DE", "USER_TOP"),
            ("CATCH_UD", "handler"),
            ("CATCH_UD", 0),
        ]
    )
    result = run_guest('.include "lib.s"\nmain:\n' + calls + "    xor eax, eax\n    ret\nhandler:\n    ret\n")
    assert result.console == b"-22\n-22\n-22\n-22\n0\n0\n"


CHILD_STATUS = (
    """
.include "lib.s"
main:
    mov ebx, 1
    call sys_spawn
    mov ebx, eax
    call sys_wait
"""
    + PRINT_EAX
    + """
    xor eax, eax
    ret
"""
)


def test_catch_with_handler_zero_restores_the_kill(run_guest: RunGuest) -> None:
    child = """
.include "lib.s"
main:
    mov eax, SYS_CATCH
    mov ebx, CATCH_DE
    mov ecx, handler
    int 0x80
    mov eax, SYS_CATCH
    mov ebx, CATCH_DE
    xor ecx, ecx
    int 0x80
    xor ecx, ecx
    div ecx
    ret
handler:
    add [esp], 2
    ret
"""
    result = run_guest(CHILD_STATUS, child)
    assert re.fullmatch(rb"pid 2: divide error at 0x004[0-9a-f]{5}, killed\n128\n", result.console)


def test_handlers_belong_to_the_process_that_registered_them(run_guest: RunGuest) -> None:
    """init catches #DE; its child, which registered nothing, is still killed."""
    init = CHILD_STATUS.replace(
        "main:\n",
        "main:\n    mov eax, SYS_CATCH\n    mov ebx, CATCH_DE\n    mov ecx, handler\n    int 0x80\n",
    ) + ("handler:\n    add [esp], 2\n    ret\n")
    child = '.include "lib.s"\nmain:\n    xor ecx, ecx\n    div ecx\n    ret\n'
    result = run_guest(init, child)
    assert re.fullmatch(rb"pid 2: divide error at 0x004[0-9a-f]{5}, killed\n128\n", result.console)


def test_invalid_opcode_and_general_protection_are_caught_too(run_guest: RunGuest) -> None:
    """#UD (zeroed memory executed) and #GP (cli in ring 3): each handler resumes at a
    continuation of its choice, stored over the return address."""
    init = (
        """
.include "lib.s"
main:
    mov eax, SYS_CATCH
    mov ebx, CATCH_UD
    mov ecx, on_ud
    int 0x80
    mov eax, SYS_CATCH
    mov ebx, CATCH_GP
    mov ecx, on_gp
    int 0x80
    jmp zeros                       ; #UD
after_ud:
    cli                             ; #GP in ring 3
after_gp:
    mov eax, [count]
"""
        + PRINT_EAX
        + """
    xor eax, eax
    ret
on_ud:
    add [count], 1
    mov [esp], after_ud
    ret
on_gp:
    add [count], 10
    add [esp], 1                    ; `cli` is 1 byte
    ret
.align 4
count: .dword 0
zeros: .space 8
"""
    )
    result = run_guest(init)
    assert result.console == b"11\n"
    assert (result.reason, result.code) == ("poweroff", 0)


def test_a_handler_whose_stack_is_not_mapped_is_not_run_and_the_process_is_killed(
    run_guest: RunGuest,
) -> None:
    """The kernel pushes the return address only where the page table says user memory is
    (it never faults on a user pointer): with esp in an unmapped heap page the process dies of
    its divide error, as without a handler."""
    child = """
.include "lib.s"
main:
    mov eax, SYS_CATCH
    mov ebx, CATCH_DE
    mov ecx, handler
    int 0x80
    mov esp, USER_HEAP + 0x10000    ; nothing mapped below it
    xor ecx, ecx
    div ecx
handler:
    add [esp], 2
    ret
"""
    result = run_guest(CHILD_STATUS, child)
    assert re.fullmatch(rb"pid 2: divide error at 0x004[0-9a-f]{5}, killed\n128\n", result.console)


@pytest.mark.parametrize("technique", ["bt", "hw", "hw+np", "trap-emulate"])
def test_the_handled_fault_is_equivalent_under_every_technique(technique: str) -> None:
    """The stock kernel under each VMM: console, exit, registers and virtual time as natively
    (hw announces itself in cpuid only, which this program does not run).  Trap-and-emulate is
    not equivalent by design (its popf and iret misbehave, docs/techniques.md): it prints and
    ends as natively."""
    image = build_custom_image([CAUGHT])
    expected = native(image)
    assert expected["console"] == CAUGHT_OUTPUT.decode()
    result = vm(image, technique)
    if technique == "trap-emulate":
        assert (result["console"], result["exit"]) == (expected["console"], expected["exit"])
    else:
        assert observable(result) == observable(expected)


def test_the_handled_fault_under_pv_prints_what_native_prints() -> None:
    """The paravirt kernel is another binary (its counts differ), so pv is compared by what it
    prints, the divzero workload included."""
    image = build_custom_image([CAUGHT], flavour="paravirt")
    assert vm(image, "pv")["console"] == CAUGHT_OUTPUT.decode()
    defines = {"ITERATIONS": 5}
    result = vm(build_image("divzero", "paravirt", defines), "pv")
    assert WORKLOADS["divzero"].check_output(result["console"].encode(), defines)
    assert result["exit"]["reason"] == "poweroff"
