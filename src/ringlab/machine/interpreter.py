"""Instruction semantics: one handler per mnemonic, dispatched by opcode from ``isa.TABLE``.

A handler runs one decoded instruction whose privilege checks have passed.  It raises ``Fault``
before changing anything (every memory access is made before any register or flag is
written), sets ``eip`` and returns:

* ``None``: the instruction is done; the caller retires it;
* ``True``: the handler retired it itself (``hlt``, and I/O that exits after retiring);
* an ``Exit``: the handler retired it if the exit's contract says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ringlab.isa import BY_OPCODE, JCC, TABLE, Form, Instruction, Mem
from ringlab.machine import flags as F
from ringlab.machine.exits import Exit, Halt, Idle, IoIn, IoOut
from ringlab.machine.faults import DE, UD, Fault

if TYPE_CHECKING:
    from ringlab.machine.cpu import Cpu

__all__ = ["HANDLERS", "Outcome", "effective_address"]

M = 0xFFFFFFFF
ESP, ECX, EDX, EAX = 4, 1, 2, 0
Outcome = Exit | bool | None
"""A handler's result (the module's docstring): None for the common case, so the hot paths
(``Cpu.step``, ``vmm.execute``, translated code) test ``is None`` first and allocate nothing."""
Handler = Callable[["Cpu", Instruction, int, int], Outcome]

CPUID_VENDOR = tuple(int.from_bytes(s, "little") for s in (b"Ring", b"LabC", b"PU32"))
"""cpuid leaf 0: ebx, edx, ecx."""


def _ops(ins: Instruction) -> Any:
    """The operands, untyped: the form (checked by the dispatch) says which are registers."""
    return ins.operands


def effective_address(regs: list[int], mem: Mem) -> int:
    return ((regs[mem.base] if mem.base is not None else 0) + mem.disp) & M


def _user(cpu: Cpu) -> bool:
    return cpu.state.cs & 3 == 3


def _load(cpu: Cpu, mem: Mem) -> tuple[int, int]:
    addr = effective_address(cpu.state.regs, mem)
    return addr, cpu.mmu.read32(addr, _user(cpu))


def _push(cpu: Cpu, value: int) -> None:
    regs = cpu.state.regs
    esp = (regs[ESP] - 4) & M
    cpu.mmu.write32(esp, value, _user(cpu))
    regs[ESP] = esp


def _pop(cpu: Cpu) -> int:
    regs = cpu.state.regs
    value = cpu.mmu.read32(regs[ESP], _user(cpu))
    regs[ESP] = (regs[ESP] + 4) & M
    return value


# -- data movement ---------------------------------------------------------------------------
def _mov(cpu: Cpu, ins: Instruction, eip: int, nxt: int) -> Outcome:
    s, form, ops = cpu.state, ins.spec.form, _ops(ins)
    regs = s.regs
    if form is Form.RR:
        regs[ops[0]] = regs[ops[1]]
    elif form is Form.RI:
        regs[ops[0]] = ops[1]
    elif form is Form.RM:
        regs[ops[0]] = _load(cpu, ops[1])[1]
    elif form is Form.MR:
        cpu.mmu.write32(effective_address(regs, ops[0]), regs[ops[1]], _user(cpu))
    elif form is Form.MI:
        cpu.mmu.write32(effective_address(regs, ops[0]), ops[1], _user(cpu))
    elif form is Form.M8R:
        cpu.mmu.write8(effective_address(regs, ops[0]), regs[ops[1]], _user(cpu))
    elif form is Form.CRR:
        cpu.write_cr(ops[0], regs[ops[1]])
    elif form is Form.RCR:
        regs[ops[0]] = cpu.read_cr(ops[1])
    elif form is Form.RCS:
        regs[ops[0]] = s.cs
    else:  # pragma: no cover - the table has no other mov form
        raise AssertionError(form)
    s.eip = nxt
    return None


def _movzx(cpu: Cpu, ins: Instruction, eip: int, nxt: int) -> Outcome:
    r, mem = _ops(ins)
    regs = cpu.state.regs
    regs[r] = cpu.mmu.read8(effective_address(regs, mem), _user(cpu))
    cpu.state.eip = nxt
    return None


def _lea(cpu: Cpu, ins: Instruction, eip: int, nxt: int) -> Outcome:
    r, mem = _ops(ins)
    regs = cpu.state.regs
    regs[r] = effective_address(regs, mem)
    cpu.state.eip = nxt
    return None


def _xchg(cpu: Cpu, ins: Instruction, eip: int, nxt: int) -> Outcome:
    a, b = _ops(ins)
    regs = cpu.state.regs
    regs[a], regs[b] = regs[b], regs[a]
    cpu.state.eip = nxt
    return None


def _push_op(cpu: Cpu, ins: Instruction, eip: int, nxt: int) -> Outcome:
    (op,) = _ops(ins)
    _push(cpu, cpu.state.regs[op] if ins.spec.form is Form.R else op)
    cpu.state.eip = nxt
    return None


def _pop_op(cpu: Cpu, ins: Instruction, eip: int, nxt: int) -> Outcome:
    (r,) = _ops(ins)
    value = _pop(cpu)
    cpu.state.regs[r] = value  # pop esp: esp = the popped value (SDM)
    cpu.state.eip = nxt
    return None


# -- arithmetic and logic --------------------------------------------------------------------
_ALU: dict[str, tuple[Callable[[int, int], int], Callable[[int, int, int], int], bool]] = {
    # mnemonic -> (result, flags(fl, a, b), writes its destination)
    "add": (lambda a, b: (a + b) & M, F.flags_add, True),
    "sub": (lambda a, b: (a - b) & M, F.flags_sub, True),
    "cmp": (lambda a, b: (a - b) & M, F.flags_sub, False),
    "and": (lambda a, b: a & b, lambda fl, a, b: F.flags_logic(fl, a & b), True),
    "or": (lambda a, b: a | b, lambda fl, a, b: F.flags_logic(fl, a | b), True),
    "xor": (lambda a, b: a ^ b, lambda fl, a, b: F.flags_logic(fl, a ^ b), True),
    "test": (lambda a, b: a & b, lambda fl, a, b: F.flags_logic(fl, a & b), False),
}


def _alu(cpu: Cpu, ins: Instruction, eip: int, nxt: int) -> Outcome:
    s = cpu.state
    regs = s.regs
    result, flags, writes = _ALU[ins.spec.mnemonic]
    form, ops = ins.spec.form, _ops(ins)
    dst, src = ops
    addr = -1
    if form is Form.RR:
        a, b = regs[dst], regs[src]
    elif form is Form.RI:
        a, b = regs[dst], src
    elif form is Form.RM:
        a, b = regs[dst], _load(cpu, src)[1]
    elif form is Form.MR:
        (addr, a), b = _load(cpu, dst), regs[src]
    else:  # MI
        (addr, a), b = _load(cpu, dst), src
    r = result(a, b)
    if writes:
        if addr >= 0:
            cpu.mmu.write32(addr, r, _user(cpu))
        else:
            regs[dst] = r
    s.eflags = flags(s.eflags, a, b)
    s.eip = nxt
    return None


def _imul(cpu: Cpu, ins: Instruction, eip: int, nxt: int) -> Outcome:
    s = cpu.state
    dst, src = _ops(ins)
    form = ins.spec.form
    if form is Form.RR:
        b = s.regs[src]
    elif form is Form.RI:
        b = src
    else:
        b = _load(cpu, src)[1]
    a = s.regs[dst]
    product = (a - ((a & 0x80000000) << 1)) * (b - ((b & 0x80000000) << 1))
    s.regs[dst] = product & M
    s.eflags = F.flags_imul(s.eflags, product)
    s.eip = nxt
    return None


def _div(cpu: Cpu, ins: Instruction, eip: int, nxt: int) -> Outcome:
    regs = cpu.state.regs
    divisor = regs[_ops(ins)[0]]
    if divisor == 0:
        raise Fault(DE)
    dividend = regs[EAX]
    regs[EAX], regs[EDX] = dividend // divisor, dividend % divisor
    cpu.state.eip = nxt
    return None


_UNARY: dict[str, tuple[Callable[[int], int], Callable[[int, int], int] | None]] = {
    "inc": (lambda a: (a + 1) & M, F.flags_inc),
    "dec": (lambda a: (a - 1) & M, F.flags_dec),
    "neg": (lambda a: -a & M, F.flags_neg),
    "not": (lambda a: a ^ M, None),
}


def _unary(cpu: Cpu, ins: Instruction, eip: int, nxt: int) -> Outcome:
    s = cpu.state
    result, flags = _UNARY[ins.spec.mnemonic]
    (op,) = _ops(ins)
    if ins.spec.form is Form.R:
        a = s.regs[op]
        s.regs[op] = result(a)
    else:
        addr, a = _load(cpu, op)
        cpu.mmu.write32(addr, result(a), _user(cpu))
    if flags is not None:
        s.eflags = flags(s.eflags, a)
    s.eip = nxt
    return None


_SHIFTS: dict[str, tuple[Callable[[int, int], int], Callable[[int, int, int], int]]] = {
    "shl": (lambda a, c: (a << c) & M, F.flags_shl),
    "shr": (lambda a, c: a >> c, F.flags_shr),
    "sar": (lambda a, c: ((a - ((a & 0x80000000) << 1)) >> c) & M, F.flags_sar),
}


def _shift(cpu: Cpu, ins: Instruction, eip: int, nxt: int) -> Outcome:
    s = cpu.state
    result, flags = _SHIFTS[ins.spec.mnemonic]
    r = _ops(ins)[0]
    count = (_ops(ins)[1] if ins.spec.form is Form.RI8 else s.regs[ECX]) & 31
    a = s.regs[r]
    s.regs[r] = result(a, count)
    s.eflags = flags(s.eflags, a, count)
    s.eip = nxt
    return None


# -- control flow ----------------------------------------------------------------------------
def _target(cpu: Cpu, ins: Instruction) -> int:
    op: int = _ops(ins)[0]
    return cpu.state.regs[op] if ins.spec.form is Form.R else op


def _jmp(cpu: Cpu, ins: Instruction, eip: int, nxt: int) -> Outcome:
    cpu.state.eip = _target(cpu, ins)
    return None


def _call(cpu: Cpu, ins: Instruction, eip: int, nxt: int) -> Outcome:
    target = _target(cpu, ins)  # read before the push: `call esp` jumps to the old esp
    _push(cpu, nxt)
    cpu.state.eip = target
    return None


def _ret(cpu: Cpu, ins: Instruction, eip: int, nxt: int) -> Outcome:
    cpu.state.eip = _pop(cpu)
    return None


def _jcc(cc: str) -> Handler:
    test = F.CONDITIONS[cc]

    def jcc(cpu: Cpu, ins: Instruction, eip: int, nxt: int) -> Outcome:
        cpu.state.eip = _ops(ins)[0] if test(cpu.state.eflags) else nxt
        return None

    return jcc


def _nop(cpu: Cpu, ins: Instruction, eip: int, nxt: int) -> Outcome:
    cpu.state.eip = nxt
    return None


def _rdtsc(cpu: Cpu, ins: Instruction, eip: int, nxt: int) -> Outcome:
    s = cpu.state
    s.regs[EAX], s.regs[EDX] = s.tsc & M, (s.tsc >> 32) & M  # the time before it retires
    s.eip = nxt
    return None


def _cpuid(cpu: Cpu, ins: Instruction, eip: int, nxt: int) -> Outcome:
    s = cpu.state
    regs = s.regs
    leaf = regs[EAX]
    eax = ebx = ecx = edx = 0
    if leaf == 0:
        eax = 1
        ebx, edx, ecx = CPUID_VENDOR
    elif leaf == 1 and cpu.controls.cpuid_hypervisor_bit:
        ecx = 1 << 31
    regs[0], regs[1], regs[2], regs[3] = eax, ecx, edx, ebx
    s.eip = nxt
    return None


# -- privileged ------------------------------------------------------------------------------
def _hlt(cpu: Cpu, ins: Instruction, eip: int, nxt: int) -> Outcome:
    s = cpu.state
    s.eip = nxt  # the saved eip is the instruction after hlt
    cpu.retire(s.cs & 3)
    if not s.eflags & F.IF or not s.timer_period:
        why = "IF = 0" if not s.eflags & F.IF else "the timer off"
        return Halt(eip, f"hlt at {eip:#x} with {why}")
    if cpu.controls.exit_on_idle_hlt:
        s.halted = True
        return Idle(eip)
    cpu.wait_for_tick()
    return True


def _descriptor_load(cpu: Cpu, ins: Instruction, eip: int, nxt: int) -> Outcome:
    s = cpu.state
    raw = cpu.mmu.read_bytes(effective_address(s.regs, _ops(ins)[0]), 6, _user(cpu))
    limit, base = int.from_bytes(raw[:2], "little"), int.from_bytes(raw[2:], "little")
    if ins.spec.mnemonic == "lgdt":
        s.gdtr_base, s.gdtr_limit = base, limit
    else:
        s.idtr_base, s.idtr_limit = base, limit
    s.eip = nxt
    return None


def _descriptor_store(cpu: Cpu, ins: Instruction, eip: int, nxt: int) -> Outcome:
    s = cpu.state
    base, limit = (s.gdtr_base, s.gdtr_limit) if ins.spec.mnemonic == "sgdt" else (s.idtr_base, s.idtr_limit)
    blob = limit.to_bytes(2, "little") + base.to_bytes(4, "little")
    cpu.mmu.write_bytes(effective_address(s.regs, _ops(ins)[0]), blob, _user(cpu))
    s.eip = nxt
    return None


def _ltr(cpu: Cpu, ins: Instruction, eip: int, nxt: int) -> Outcome:
    cpu.state.tr = cpu.state.regs[_ops(ins)[0]]
    cpu.state.eip = nxt
    return None


def _str(cpu: Cpu, ins: Instruction, eip: int, nxt: int) -> Outcome:
    cpu.state.regs[_ops(ins)[0]] = cpu.state.tr
    cpu.state.eip = nxt
    return None


def _lmsw(cpu: Cpu, ins: Instruction, eip: int, nxt: int) -> Outcome:
    # The low 16 bits of cr0 hold only PE, which stays 1: lmsw can change nothing (docs/machine.md).
    cpu.state.eip = nxt
    return None


def _smsw(cpu: Cpu, ins: Instruction, eip: int, nxt: int) -> Outcome:
    cpu.state.regs[_ops(ins)[0]] = cpu.state.cr0 & 0xFFFF
    cpu.state.eip = nxt
    return None


def _invlpg(cpu: Cpu, ins: Instruction, eip: int, nxt: int) -> Outcome:
    cpu.mmu.invalidate(effective_address(cpu.state.regs, _ops(ins)[0]))
    cpu.state.eip = nxt
    return None


# -- IOPL-sensitive --------------------------------------------------------------------------
def _cli(cpu: Cpu, ins: Instruction, eip: int, nxt: int) -> Outcome:
    cpu.state.eflags &= ~F.IF
    cpu.state.eip = nxt
    return None


def _sti(cpu: Cpu, ins: Instruction, eip: int, nxt: int) -> Outcome:
    cpu.state.eflags |= F.IF  # no interrupt shadow: a pending tick is taken before the next one
    cpu.state.eip = nxt
    return None


def _port(cpu: Cpu, ins: Instruction) -> int:
    form = ins.spec.form
    if form in (Form.REDX, Form.EDXR):
        return cpu.state.regs[EDX] & 0xFFFF  # x86: the port is dx
    port: int = _ops(ins)[1] if form is Form.RI else _ops(ins)[0]
    return port & 0xFFFF


def _in(cpu: Cpu, ins: Instruction, eip: int, nxt: int) -> Outcome:
    s = cpu.state
    port, r = _port(cpu, ins), _ops(ins)[0]
    s.eip = nxt
    if not cpu.controls.intercept_io:
        if port == 0x40:
            s.regs[r] = s.timer_period
            return None
        if port == 0x80:
            s.regs[r] = 0
            return None
    cpu.retire(s.cs & 3)
    cpu.stats.io += 1
    cpu.expect_in(r)
    return IoIn(port, r, eip)


def _out(cpu: Cpu, ins: Instruction, eip: int, nxt: int) -> Outcome:
    s = cpu.state
    port = _port(cpu, ins)
    value = s.regs[_ops(ins)[1] if ins.spec.form is Form.IR else _ops(ins)[0]]
    s.eip = nxt
    if not cpu.controls.intercept_io:
        if port == 0x40:
            cpu.write_timer(value)
            return None
        if port == 0x80:
            return None
    cpu.retire(s.cs & 3)
    cpu.stats.io += 1
    return IoOut(port, value, eip)


# -- sensitive, unprivileged -----------------------------------------------------------------
def _pushf(cpu: Cpu, ins: Instruction, eip: int, nxt: int) -> Outcome:
    _push(cpu, cpu.state.eflags)  # the real IF shows
    cpu.state.eip = nxt
    return None


def _popf(cpu: Cpu, ins: Instruction, eip: int, nxt: int) -> Outcome:
    s = cpu.state
    value = _pop(cpu) & F.EFLAGS_MASK
    cpl, iopl = s.cs & 3, (s.eflags >> 12) & 3
    keep = 0
    if cpl > 0:
        keep |= F.IOPL
    if cpl > iopl:
        keep |= F.IF  # silently: the x86 flaw
    s.eflags = (value & ~keep) | (s.eflags & keep)
    s.eip = nxt
    return None


# -- control transfer and virtualization -------------------------------------------------------
def _int(cpu: Cpu, ins: Instruction, eip: int, nxt: int) -> Outcome:
    return cpu.software_interrupt(_ops(ins)[0], eip, nxt)


def _iret(cpu: Cpu, ins: Instruction, eip: int, nxt: int) -> Outcome:
    s = cpu.state
    esp, cpl, user = s.regs[ESP], s.cs & 3, s.cs & 3 == 3
    raw = cpu.mmu.read_bytes(esp, 12, user)
    new_eip, new_cs, new_flags = (int.from_bytes(raw[i : i + 4], "little") for i in (0, 4, 8))
    ring = new_cs & 3
    if ring < cpl:
        raise Fault(13, 0)
    new_esp = (esp + 12) & M
    if ring > cpl:
        new_esp = cpu.mmu.read32(new_esp, user)
    new_flags &= F.EFLAGS_MASK
    if cpl > 0:
        keep = F.IOPL | (F.IF if cpl > (s.eflags >> 12) & 3 else 0)
        new_flags = (new_flags & ~keep) | (s.eflags & keep)
    s.eip, s.cs, s.eflags, s.regs[ESP] = new_eip, ring, new_flags, new_esp
    return None


def _vmcall(cpu: Cpu, ins: Instruction, eip: int, nxt: int) -> Outcome:
    raise Fault(UD)  # in VMX non-root mode it never gets here: Controls.intercepts() exits first


_BY_MNEMONIC: dict[str, Handler] = {
    "mov": _mov,
    "movzx": _movzx,
    "lea": _lea,
    "xchg": _xchg,
    "push": _push_op,
    "pop": _pop_op,
    **dict.fromkeys(_ALU, _alu),
    "imul": _imul,
    "div": _div,
    **dict.fromkeys(_UNARY, _unary),
    **dict.fromkeys(_SHIFTS, _shift),
    "jmp": _jmp,
    "call": _call,
    "ret": _ret,
    **{"j" + cc: _jcc(cc) for cc in set(JCC.values())},
    "nop": _nop,
    "rdtsc": _rdtsc,
    "cpuid": _cpuid,
    "hlt": _hlt,
    "lgdt": _descriptor_load,
    "lidt": _descriptor_load,
    "ltr": _ltr,
    "lmsw": _lmsw,
    "invlpg": _invlpg,
    "cli": _cli,
    "sti": _sti,
    "in": _in,
    "out": _out,
    "pushf": _pushf,
    "popf": _popf,
    "sgdt": _descriptor_store,
    "sidt": _descriptor_store,
    "str": _str,
    "smsw": _smsw,
    "int": _int,
    "iret": _iret,
    "vmcall": _vmcall,
}

HANDLERS: dict[int, Handler] = {spec.opcode: _BY_MNEMONIC[spec.mnemonic] for spec in TABLE}
"""Opcode -> handler, for every row of ``isa.TABLE`` (a missing mnemonic fails at import)."""
assert set(HANDLERS) == set(BY_OPCODE)
