"""Popek-Goldberg diagnostics: sensitive instructions that did not trap and so lied to the guest.

Under trap-and-emulate the guest kernel runs at ring 1, and the sensitive-but-unprivileged
instructions (docs/machine.md) run there without trapping, against the *real* state.  The VMM watches
them (a probe that counts as neither a trap nor an exit) and records, per instruction address,
what the guest saw and what native hardware would have shown it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ringlab.asm import format_instruction
from ringlab.isa import EFLAGS, Instruction
from ringlab.machine.faults import Fault
from ringlab.vmm.vcpu import SYS_FLAGS

if TYPE_CHECKING:
    from ringlab.vmm.vm import VM

__all__ = ["PROBED", "observe"]

PROBED = frozenset({"pushf", "popf", "sgdt", "sidt", "str", "smsw", "mov r,cs", "iret"})
"""What the trap-and-emulate VMM watches (Controls.intercept_mnemonics)."""

_WHY = (
    "{m} is sensitive but not privileged: at ring 1 it runs without trapping, so the VMM cannot "
    "emulate it and the guest sees the real machine (Popek-Goldberg: not every sensitive "
    "instruction is privileged, so x86-style rings cannot be trap-and-emulated)"
)


def _flags(value: int) -> str:
    return f"IF={(value >> 9) & 1} IOPL={(value >> 12) & 3}"


def observe(vm: VM, insn: Instruction, eip: int) -> None:
    """Record what ``insn`` is about to show the guest, if it differs from native."""
    s, v = vm.cpu.state, vm.vcpu
    virtual_eflags = (s.eflags & ~SYS_FLAGS) | v.flags
    mnemonic = insn.mnemonic
    saw: str
    native: str
    if mnemonic == "pushf":
        saw, native = (
            f"eflags={s.eflags:#x} ({_flags(s.eflags)})",
            f"eflags={virtual_eflags:#x} ({_flags(virtual_eflags)})",
        )
    elif mnemonic in ("popf", "iret"):
        offset = 0 if mnemonic == "popf" else 8
        try:
            popped = vm.cpu.mmu.read32((s.regs[4] + offset) & 0xFFFFFFFF, s.cs & 3 == 3)
            if mnemonic == "iret" and vm.cpu.mmu.read32((s.regs[4] + 4) & 0xFFFFFFFF, s.cs & 3 == 3) & 3 != 3:
                return  # an iret to a kernel ring is emulated (a #GP trap, or trap_emulate's probe)
        except Fault:
            return
        real_keep = s.eflags & SYS_FLAGS  # at ring 1 with IOPL 0: IF and IOPL are kept
        if v.cpl == 0:
            native_flags = popped & SYS_FLAGS
        else:
            keep = EFLAGS.IOPL | (EFLAGS.IF if v.cpl > (v.flags >> 12) & 3 else 0)
            native_flags = (popped & ~keep & SYS_FLAGS) | (v.flags & keep)
        saw = f"{_flags(v.flags)} unchanged (real {_flags(real_keep)} kept)"
        native = f"{_flags(native_flags)}"
        if native_flags == v.flags:
            return
    elif mnemonic in ("sgdt", "sidt"):
        real = (s.gdtr_base, s.gdtr_limit) if mnemonic == "sgdt" else (s.idtr_base, s.idtr_limit)
        virt = (v.gdtr_base, v.gdtr_limit) if mnemonic == "sgdt" else (v.idtr_base, v.idtr_limit)
        saw, native = (
            f"base={real[0]:#x} limit={real[1]:#x} (the VMM's)",
            f"base={virt[0]:#x} limit={virt[1]:#x}",
        )
    elif mnemonic == "str":
        saw, native = f"tr={s.tr:#x} (the VMM's)", f"tr={v.tr:#x}"
    elif mnemonic == "smsw":
        saw, native = f"{s.cr0 & 0xFFFF:#x}", f"{vm.paging.guest_cr0() & 0xFFFF:#x}"
    else:  # mov r, cs
        saw, native = f"cs={s.cs} (ring {s.cs & 3})", f"cs={v.cs} (ring {v.cpl})"
    if saw == native:
        return
    key = (eip, mnemonic)
    entry = vm.diagnostics.get(key)
    if entry is None:
        vm.diagnostics[key] = {
            "instruction": format_instruction(insn),
            "address": eip,
            "ring": s.cs & 3,
            "guest_ring": v.cpl,
            "guest_saw": saw,
            "native_would_show": native,
            "count": 1,
            "why": _WHY.format(m=mnemonic),
        }
    else:
        entry["count"] += 1


def summary(diagnostics: list[dict[str, Any]]) -> str:
    """The stderr text of ``ringlab run`` without --json."""
    lines = []
    for d in diagnostics:
        lines.append(
            f"trap-emulate: {d['instruction']} at {d['address']:#010x} (guest ring {d['guest_ring']}, "
            f"real ring {d['ring']}, x{d['count']}): guest saw {d['guest_saw']}; native would show "
            f"{d['native_would_show']}"
        )
    return "\n".join(lines)
