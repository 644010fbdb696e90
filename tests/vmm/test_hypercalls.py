"""pv hypercalls validate their arguments: a bad one is an error code in eax, never a crash.

Each program runs under pv at ring 1 (paging off), issues one hypercall and powers off through
``sched_op(SCHEDOP_shutdown, SHUTDOWN_poweroff, code)`` with the result as the exit code, so the
final ``edx`` holds the result.  The ABI is docs/pv-abi.md.
"""

from __future__ import annotations

import pytest

from tests.vmm.conftest import program, vm

EPERM, EFAULT, EINVAL, ENOSYS = -1, -14, -22, -38

PROLOGUE = ".entry start\nstart:\n"
EPILOGUE = """
    mov edx, eax        ; the result
    mov eax, 29         ; sched_op
    mov ebx, 2          ; SCHEDOP_shutdown
    mov ecx, 0          ; SHUTDOWN_poweroff, code = edx
    int 0x82
"""

CASES: dict[str, tuple[str, int]] = {
    "unknown hypercall": ("    mov eax, 99\n    int 0x82\n", ENOSYS),
    "mmu_update: unaligned pte pointer": (
        "    mov eax, 1\n    mov ebx, req\n    mov ecx, 1\n    mov edx, 0\n    int 0x82\n"
        + EPILOGUE
        + "req: .dword 0x3001, 0x5007\n",
        EINVAL,
    ),
    "mmu_update: maps a frame the VM does not own": (
        "    mov eax, 1\n    mov ebx, req\n    mov ecx, 1\n    mov edx, 0\n    int 0x82\n"
        + EPILOGUE
        + "req: .dword 0x3000, 0x7FF00007\n",
        EPERM,
    ),
    "mmu_update: request list outside the VM": (
        "    mov eax, 1\n    mov ebx, 0xFFFFFF00\n    mov ecx, 1\n    mov edx, 0\n    int 0x82\n",
        EFAULT,
    ),
    "mmu_update: batch too large": (
        "    mov eax, 1\n    mov ebx, 0x3000\n    mov ecx, 100000\n    mov edx, 0\n    int 0x82\n",
        EINVAL,
    ),
    "set_trap_table: a gate naming ring 0": (
        "    mov eax, 0\n    mov ebx, desc\n    int 0x82\n"
        + EPILOGUE
        + "desc: .word 7\n    .dword gates\ngates: .dword start, 0x8100\n",
        EPERM,
    ),
    "mmuext_op NEW_BASEPTR: not page-aligned": (
        "    mov eax, 26\n    mov ebx, 5\n    mov ecx, 0x3004\n    int 0x82\n",
        EINVAL,
    ),
    "console_io: count too large": (
        "    mov eax, 18\n    mov ebx, 0\n    mov ecx, 5000\n    mov edx, 0x3000\n    int 0x82\n",
        EINVAL,
    ),
    "sched_op: unknown command": ("    mov eax, 29\n    mov ebx, 9\n    int 0x82\n", EINVAL),
    "physdev_op: a port the VM may not touch": (
        "    mov eax, 33\n    mov ebx, 0\n    mov ecx, 0x40\n    mov edx, 5\n    int 0x82\n",
        EPERM,
    ),
    "physdev_op: a write to the console's line status, which is read-only": (
        "    mov eax, 33\n    mov ebx, 0\n    mov ecx, 0x3FD\n    mov edx, 5\n    int 0x82\n",
        EPERM,
    ),
    # read-only, but readable: a 16550 LSR with the transmitter empty (0x60) and no input waiting
    "physdev_op: a read of the console's line status": (
        "    mov eax, 33\n    mov ebx, 1\n    mov ecx, 0x3FD\n    int 0x82\n",
        0x60,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_hypercall_arguments_return_an_error_code(case: str) -> None:
    body, expected = CASES[case]
    source = PROLOGUE + body + ("" if "EPILOGUE" in body or EPILOGUE in body else EPILOGUE)
    result = vm(program(source), "pv")
    assert result["exit"]["reason"] == "poweroff", result["exit"]
    assert result["registers"]["edx"] == expected & 0xFFFFFFFF
    assert result["exit"]["code"] == expected & 0xFF


MULTICALL = """
.entry start
start:
    mov eax, 13         ; multicall: a valid mmu_update, then an iret (not allowed in a batch)
    mov ebx, calls
    mov ecx, 2
    int 0x82
    mov esi, [calls + 16]       ; result of call 0
    mov edi, [calls + 24 + 16]  ; result of call 1
    mov ebp, [0x3000]           ; what mmu_update wrote
    mov edx, eax
    mov eax, 29
    mov ebx, 2
    mov ecx, 0
    int 0x82
calls:
    .dword 1, req, 1, 0, 0xAAAA, 0      ; op, ebx, ecx, edx, result, pad
    .dword 23, 0, 0, 0, 0xAAAA, 0
req:
    .dword 0x3000, 0x5007
"""


def test_multicall_runs_each_entry_and_stores_each_result() -> None:
    result = vm(program(MULTICALL), "pv")
    regs = result["registers"]
    assert (regs["edx"], regs["esi"], regs["edi"], regs["ebp"]) == (0, 0, EINVAL & 0xFFFFFFFF, 0x5007)
    assert result["stats"]["guest"]["hypercalls"] == {"mmu_update": 1, "multicall": 1, "sched_op": 1}
