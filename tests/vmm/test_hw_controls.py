"""hw's VMCS controls (vmm/hw.py): the I/O bitmap decides port by port which ``in``/``out``
exit; the TPR shadow decides whether ``cr8`` moves exit, whatever the paging mode.  Every
program here is a bare RL-32 program in ring 0, compared with its native run."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from ringlab.machine.platform import CONSOLE_PORT, CONSOLE_STATUS_PORT, POWER_PORT
from ringlab.vmm import VM
from ringlab.vmm.exit_reasons import VmxExitReason as R
from ringlab.vmm.hw import EMULATED_PORTS, Hw, Vmcs
from tests.vmm.conftest import LIMIT, native, observable, program

IO = R.IO_INSTRUCTION.label
CR = R.CR_ACCESS.label

PORTS = f"""
        mov ecx, 3
.loop:
        in eax, {CONSOLE_STATUS_PORT:#x}      ; line status: 0x60
        add ebx, eax
        mov eax, 0x41
        out {CONSOLE_PORT:#x}, eax            ; 'A'
        dec ecx
        jnz .loop
        mov eax, 0
        out {POWER_PORT:#x}, eax
"""
"""Three reads of the console's status port, three console writes, one power-off."""


def _run(source: str, vmcs: Vmcs) -> dict[str, Any]:
    doc: dict[str, Any] = VM(program(source), Hw(vmcs=vmcs)).run(LIMIT).to_json()
    return doc


@pytest.mark.parametrize(
    "bitmap",
    [
        EMULATED_PORTS,
        frozenset({CONSOLE_PORT, POWER_PORT}),
        frozenset({CONSOLE_STATUS_PORT}),
        frozenset(),
    ],
    ids=["default", "status-clear", "status-only", "empty"],
)
@pytest.mark.parametrize("nested", [False, True], ids=["shadow", "nested"])
def test_a_port_exits_iff_its_bit_is_set(bitmap: frozenset[int], nested: bool) -> None:
    image = program(PORTS)
    doc = _run(PORTS, dataclasses.replace(Vmcs.for_paging(nested), io_bitmap=bitmap))
    accesses = {CONSOLE_STATUS_PORT: 3, CONSOLE_PORT: 3, POWER_PORT: 1}
    exits = sum(n for port, n in accesses.items() if port in bitmap)
    guest = doc["stats"]["guest"]
    assert guest.get("vm_exits", {}).get(IO, 0) == exits
    assert guest.get("io_passthrough", 0) == sum(accesses.values()) - exits
    assert observable(doc) == observable(native(image))  # exit or not, the guest sees the same
    assert doc["registers"]["ebx"] == 3 * 0x60


def test_the_default_bitmap_names_the_devices_the_vmm_emulates() -> None:
    assert Vmcs().io_bitmap == EMULATED_PORTS == {CONSOLE_PORT, CONSOLE_STATUS_PORT, POWER_PORT}
    assert Hw().vmcs.io_bitmap == Hw(nested_paging=True).vmcs.io_bitmap == EMULATED_PORTS


@pytest.mark.parametrize("port", [0x40, 0x80])
def test_the_vcpu_s_own_devices_cannot_be_put_in_the_bitmap(port: int) -> None:
    with pytest.raises(ValueError, match="vCPU's own devices"):
        Vmcs(io_bitmap=frozenset({CONSOLE_PORT, port}))


CR_MOVES = """
        mov ecx, 4
        mov eax, 3
.loop:
        mov cr8, eax                    ; four cr8 writes
        dec ecx
        jnz .loop
        mov ebx, cr8                    ; one cr8 read
        mov edx, cr3                    ; one cr3 read
        mov cr3, edx                    ; one cr3 write
        mov eax, 0
        out 0xF4, eax
"""


@pytest.mark.parametrize("tpr_shadow", [True, False], ids=["tpr-shadow", "no-tpr-shadow"])
@pytest.mark.parametrize("nested", [False, True], ids=["shadow", "nested"])
def test_cr8_moves_exit_iff_the_tpr_shadow_is_off_whatever_the_paging(nested: bool, tpr_shadow: bool) -> None:
    doc = _run(CR_MOVES, Vmcs.for_paging(nested, tpr_shadow=tpr_shadow))
    cr8_exits = 0 if tpr_shadow else 5
    cr3_exits = 0 if nested else 2  # shadow paging owns cr3; nested paging leaves it to the guest
    assert doc["stats"]["guest"].get("vm_exits", {}).get(CR, 0) == cr8_exits + cr3_exits
    assert observable(doc) == observable(native(program(CR_MOVES)))
    assert doc["registers"]["ebx"] == 3


def test_first_generation_vt_x_has_the_tpr_shadow_on_in_both_paging_modes() -> None:
    assert Hw().vmcs.tpr_shadow and Hw(nested_paging=True).vmcs.tpr_shadow
