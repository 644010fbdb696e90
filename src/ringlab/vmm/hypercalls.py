"""The pv hypercall table (docs/pv-abi.md): number -> (name, handler), Xen's numbering.

A hypercall is ``int 0x82`` from the guest kernel (ring 1) with the number in ``eax`` and the
arguments in ``ebx ecx edx``; the result comes back in ``eax``: 0 or a count on success, a
negative errno on failure.  Every argument is validated; a bad one is an error code, never a
crash of the hypervisor or a fault in the guest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ringlab.machine.faults import Fault
from ringlab.vmm.technique import Stop
from ringlab.vmm.vcpu import SYS_FLAGS

if TYPE_CHECKING:
    from ringlab.vmm.pv import Paravirt
    from ringlab.vmm.vm import VM

__all__ = ["EFAULT", "EINVAL", "ENOSYS", "EPERM", "HYPERCALLS", "NO_RETURN", "Hypercall"]

EPERM, EFAULT, EINVAL, ENOSYS = -1, -14, -22, -38
NO_RETURN = None
"""A handler result: the hypercall set the guest's registers itself (iret)."""
MAX_BATCH = 512
MULTICALL_ENTRY = 24
"""op, three arguments, result, and a padding dword."""
SHARED_TSS = 16
"""Offset in the shared page of the TSS image the hypervisor delivers through (esp1 at +12)."""
_P = 1

Result = int | Stop | None
Handler = Callable[["Paravirt", "VM", int, int, int], Result]


@dataclass(frozen=True)
class Hypercall:
    name: str
    handler: Handler
    batchable: bool = True
    """May appear inside a multicall (not iret, block, multicall itself)."""


def _read(vm: VM, linear: int, n: int) -> bytes | None:
    try:
        return vm.cpu.mmu.read_bytes(linear, n, False)
    except Fault:
        return None


def _write32(vm: VM, linear: int, value: int) -> bool:
    try:
        vm.cpu.mmu.write32(linear, value, False)
    except Fault:
        return False
    return True


def set_trap_table(pv: Paravirt, vm: VM, desc: int, _b: int, _c: int) -> Result:
    """ebx = a 6-byte descriptor (limit, base) of a table of IDT gates.  A gate may not name
    ring 0 (the hypervisor's); the table must hold whole gates and at most 256."""
    raw = _read(vm, desc, 6)
    if raw is None:
        return EFAULT
    limit, base = int.from_bytes(raw[:2], "little"), int.from_bytes(raw[2:], "little")
    if (limit + 1) % 8 or limit >= 256 * 8:
        return EINVAL
    gates = _read(vm, base, limit + 1)
    if gates is None:
        return EFAULT
    for at in range(0, limit + 1, 8):
        attrs = int.from_bytes(gates[at + 4 : at + 8], "little")
        if attrs & 0x8000 and attrs & 3 == 0:
            return EPERM
    vm.vcpu.idtr_base, vm.vcpu.idtr_limit = base, limit
    return 0


def mmu_update(pv: Paravirt, vm: VM, requests: int, count: int, done_at: int) -> Result:
    """ebx = array of (ptr, val) pairs, ecx = count, edx = where to store how many were done
    (0: nowhere).  ptr is the guest-physical address of a page-table entry (4-aligned, in the
    VM's RAM, not the shared page); a present val must name a frame of the VM's RAM."""
    if count > MAX_BATCH:
        return EINVAL
    done = 0
    result = 0
    for i in range(count):
        raw = _read(vm, requests + 8 * i, 8)
        if raw is None:
            result = EFAULT
            break
        ptr, val = int.from_bytes(raw[:4], "little"), int.from_bytes(raw[4:], "little")
        if ptr & 3 or ptr + 4 > vm.memory_size or ptr >> 12 == pv.shared >> 12:
            result = EINVAL
            break
        if val & _P and (val & 0xFFFFF000) >= vm.memory_size:
            result = EPERM  # a mapping of memory the VM does not own
            break
        vm.cpu.memory.write32(ptr, val)
        done += 1
    pv.updates += done
    if done_at and not _write32(vm, done_at, done):
        return EFAULT
    return result


def stack_switch(pv: Paravirt, vm: VM, esp: int, _b: int, _c: int) -> Result:
    """ebx = the kernel stack for the next entry from ring 3 (TSS.esp1 of the hypervisor's TSS)."""
    vm.cpu.memory.write32(pv.shared + SHARED_TSS + 12, esp)
    return 0


def set_timer_op(pv: Paravirt, vm: VM, period: int, _b: int, _c: int) -> Result:
    """ebx = timer period in retired instructions (0 = off): port 0x40's semantics."""
    vm.cpu.write_timer(period)
    vm.vcpu.pending_tick = False
    return 0


def xen_version(pv: Paravirt, vm: VM, _a: int, _b: int, _c: int) -> Result:
    """The cheapest hypercall: the guest uses it to collect a pending event."""
    return 0x00010000


def console_io(pv: Paravirt, vm: VM, cmd: int, count: int, buffer: int) -> Result:
    """ebx = 0 write / 1 read, ecx = count (at most 4096), edx = buffer; returns the count."""
    if count > 4096:
        return EINVAL
    if cmd == 0:
        data = _read(vm, buffer, count)
        if data is None:
            return EFAULT
        for byte in data:
            vm.devices.out(0x3F8, byte)
        return count
    if cmd == 1:
        got = 0
        while got < count:
            value = vm.devices.in_(0x3F8)
            if value > 0xFF:
                break
            try:
                vm.cpu.mmu.write8(buffer + got, value, False)
            except Fault:
                return EFAULT
            got += 1
        return got
    return ENOSYS


def iret(pv: Paravirt, vm: VM, _a: int, _b: int, _c: int) -> Result:
    """The frame on the kernel stack: saved eax, eip, cs, eflags (and esp for ring 3).  Restores
    the virtual IF from the frame (a ring-1 ``iret`` could not); cs must be ring 1 or 3."""
    s = vm.cpu.state
    raw = _read(vm, s.regs[4], 16)
    if raw is None:
        return EFAULT
    eax, eip, cs, eflags = (int.from_bytes(raw[i : i + 4], "little") for i in (0, 4, 8, 12))
    ring = cs & 3
    if ring not in (1, 3):
        return EINVAL
    esp = (s.regs[4] + 16) & 0xFFFFFFFF
    if ring == 3:
        more = _read(vm, esp, 4)
        if more is None:
            return EFAULT
        esp = int.from_bytes(more, "little")
    s.regs[0], s.eip, s.regs[4] = eax, eip, esp
    s.eflags = (s.eflags & SYS_FLAGS) | (eflags & 0xFFF & ~SYS_FLAGS)
    vm.vcpu.cs = ring
    vm.vcpu.flags = (vm.vcpu.flags & ~0x200) | (eflags & 0x200)
    return NO_RETURN


def mmuext_op(pv: Paravirt, vm: VM, cmd: int, arg: int, _c: int) -> Result:
    """ebx = command, ecx = argument: NEW_BASEPTR (5, a page directory in the VM's RAM),
    TLB_FLUSH_LOCAL (6), INVLPG_LOCAL (7, an address), SET_CR0 (64, RL-32: WP and PG)."""
    cpu = vm.cpu
    if cmd == 5:
        if arg & 0xFFF or arg + 4096 > vm.memory_size:
            return EINVAL
        cpu.write_cr(3, arg)
    elif cmd == 6:
        cpu.flush_tlb()
    elif cmd == 7:
        cpu.invalidate_page(arg)
    elif cmd == 64:
        cpu.write_cr(0, arg)
    else:
        return ENOSYS
    return 0


def sched_op(pv: Paravirt, vm: VM, cmd: int, reason: int, code: int) -> Result:
    """ebx = 0 yield, 1 block (enable events and wait for the next one), 2 shutdown
    (ecx = 0 poweroff with code edx, 3 crash: stop)."""
    if cmd == 0:
        return 0
    if cmd == 1:
        vm.vcpu.flags |= 0x200
        if not vm.cpu.state.timer_period:
            return Stop("halt", None, "sched_op(block) with the timer off: nothing can wake the VM")
        vm.cpu.wait_for_tick()
        return 0
    if cmd == 2:
        if reason == 0:
            return Stop("poweroff", code & 0xFF, f"power off with code {code & 0xFF}")
        if reason == 3:
            return Stop("halt", None, "sched_op(shutdown, crash)")
        return EINVAL
    return EINVAL


def physdev_op(pv: Paravirt, vm: VM, cmd: int, port: int, value: int) -> Result:
    """ebx = 0 out / 1 in, ecx = port, edx = value: only POST (0x80), the console (0x3F8) and,
    for reading, the console's line status (0x3FD)."""
    if port not in (0x80, 0x3F8, 0x3FD) or (port == 0x3FD and cmd == 0):
        return EPERM
    if cmd == 0:
        if port == 0x3F8:
            vm.devices.out(port, value)
        return 0
    if cmd == 1:
        return 0 if port == 0x80 else vm.devices.in_(port)
    return EINVAL


def multicall(pv: Paravirt, vm: VM, entries: int, count: int, _c: int) -> Result:
    """ebx = array of entries (op, arg1, arg2, arg3, result, pad), ecx = count: run each in
    order, store its result; iret, block and multicall are not allowed inside."""
    if count > MAX_BATCH:
        return EINVAL
    for i in range(count):
        at = entries + MULTICALL_ENTRY * i
        raw = _read(vm, at, 16)
        if raw is None:
            return EFAULT
        op, a, b, c = (int.from_bytes(raw[k : k + 4], "little") for k in (0, 4, 8, 12))
        call = HYPERCALLS.get(op)
        result: Result
        if call is None:
            result = ENOSYS
        elif not call.batchable:
            result = EINVAL
        else:
            vm.counters.hypercalls[call.name] += 1
            result = call.handler(pv, vm, a, b, c)
        if isinstance(result, Stop):
            return result
        if not _write32(vm, at + 16, (result or 0) & 0xFFFFFFFF):
            return EFAULT
    return 0


HYPERCALLS: dict[int, Hypercall] = {
    0: Hypercall("set_trap_table", set_trap_table),
    1: Hypercall("mmu_update", mmu_update),
    3: Hypercall("stack_switch", stack_switch),
    13: Hypercall("multicall", multicall, batchable=False),
    15: Hypercall("set_timer_op", set_timer_op),
    17: Hypercall("xen_version", xen_version),
    18: Hypercall("console_io", console_io),
    23: Hypercall("iret", iret, batchable=False),
    26: Hypercall("mmuext_op", mmuext_op),
    29: Hypercall("sched_op", sched_op, batchable=False),
    33: Hypercall("physdev_op", physdev_op),
}
