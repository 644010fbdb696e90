"""Protobuf <-> domain conversions used on both sides of the cpu service boundary.

What comes in from the wire is checked here before it reaches the machine: a ``VcpuSync``, a
``TcRun`` and the VMM's records a commit carries must be what the other side sends (known names,
values in range, bounded sizes), else ``InvalidSync`` names the field (the cpu service answers
INVALID_ARGUMENT).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

from ringlab.guestos.build import NO_KERNEL, KernelFlavour
from ringlab.hypervisor.vm_copy import MAX_RUN_BUDGET
from ringlab.isa import REGISTERS, decode, encode
from ringlab.machine import (
    Budget,
    Controls,
    Exit,
    ExitReason,
    Halt,
    Idle,
    Intercept,
    IoIn,
    IoOut,
    Raised,
    Shutdown,
)
from ringlab.machine.context import ContextDelta
from ringlab.machine.mmu import TLB_FLUSH, TLB_LOAD
from ringlab.machine.state import CpuState
from ringlab.machine.stats import Stats, stats_from_json, stats_to_json
from ringlab.v1 import common_pb2, cpu_pb2
from ringlab.vmm.technique import TechniqueName
from ringlab.vmm.translated import BlockSpec, TcReport, TcRun, VmmCall
from ringlab.vmm.translation_cache import MAX_BLOCK
from ringlab.vmm.vcpu import VirtualCpu

__all__ = [
    "EXIT_REASONS",
    "InvalidSync",
    "check_vmm_record",
    "check_vmm_statistics",
    "KERNELS",
    "MAX_RUN_BUDGET",
    "TECHNIQUES",
    "controls_from_proto",
    "controls_to_proto",
    "delta_from_proto",
    "delta_to_proto",
    "exit_from_proto",
    "tc_report_from_proto",
    "tc_report_to_proto",
    "tc_run_from_proto",
    "tc_run_to_proto",
    "exit_to_proto",
    "guest_stats_to_proto",
    "guest_stats_to_json",
    "stats_from_json",
    "stats_to_json",
]

TECHNIQUES: dict[str, common_pb2.Technique.ValueType] = {
    TechniqueName.NATIVE.value: common_pb2.TECHNIQUE_NATIVE,
    TechniqueName.TRAP_EMULATE.value: common_pb2.TECHNIQUE_TRAP_EMULATE,
    TechniqueName.BT.value: common_pb2.TECHNIQUE_BT,
    TechniqueName.PV.value: common_pb2.TECHNIQUE_PV,
    TechniqueName.HW.value: common_pb2.TECHNIQUE_HW,
}
"""Technique name (``vmm.TechniqueName``) -> the proto's ``Technique``: the one mapping."""
KERNELS: dict[str, common_pb2.KernelFlavour.ValueType] = {
    KernelFlavour.STOCK.value: common_pb2.KERNEL_FLAVOUR_STOCK,
    KernelFlavour.PARAVIRT.value: common_pb2.KERNEL_FLAVOUR_PARAVIRT,
    NO_KERNEL: common_pb2.KERNEL_FLAVOUR_NONE,
}
"""Kernel flavour (``guestos.KernelFlavour``, or ``NO_KERNEL`` for a raw image) -> the proto's
``KernelFlavour``: the one mapping."""
assert set(TECHNIQUES) == set(TechniqueName) and set(KERNELS) == {*KernelFlavour, NO_KERNEL}
EXIT_REASONS: dict[ExitReason, common_pb2.ExitReason.ValueType] = {
    ExitReason.IO_OUT: common_pb2.EXIT_REASON_IO_OUT,
    ExitReason.IO_IN: common_pb2.EXIT_REASON_IO_IN,
    ExitReason.HALT: common_pb2.EXIT_REASON_HALT,
    ExitReason.SHUTDOWN: common_pb2.EXIT_REASON_SHUTDOWN,
    ExitReason.BUDGET: common_pb2.EXIT_REASON_BUDGET,
    ExitReason.EXCEPTION: common_pb2.EXIT_REASON_EXCEPTION,
    ExitReason.INSTRUCTION: common_pb2.EXIT_REASON_INSTRUCTION,
    ExitReason.IDLE: common_pb2.EXIT_REASON_IDLE,
}


def controls_from_proto(c: common_pb2.Controls) -> Controls:
    return Controls(
        intercept_vectors=frozenset(c.intercept_vectors),
        intercept_mnemonics=frozenset(c.intercept_mnemonics),
        intercept_io=c.intercept_io,
        exit_on_idle_hlt=c.exit_on_idle_hlt,
        vmx_nonroot=c.vmx_nonroot,
        cpuid_hypervisor_bit=c.cpuid_hypervisor_bit,
        guest_perms=c.guest_perms,
    )


def controls_to_proto(c: Controls) -> common_pb2.Controls:
    return common_pb2.Controls(
        intercept_vectors=sorted(c.intercept_vectors),
        intercept_mnemonics=sorted(c.intercept_mnemonics),
        intercept_io=c.intercept_io,
        exit_on_idle_hlt=c.exit_on_idle_hlt,
        vmx_nonroot=c.vmx_nonroot,
        cpuid_hypervisor_bit=c.cpuid_hypervisor_bit,
        guest_perms=c.guest_perms,
    )


_REASON_OF = {v: k for k, v in EXIT_REASONS.items()}
_U32 = 0xFFFFFFFF


def exit_to_proto(e: Exit) -> cpu_pb2.VcpuExit:
    """The exit on the wire: its reason and exactly the fields its class has (a field that is
    None is left unset)."""
    out = cpu_pb2.VcpuExit(reason=EXIT_REASONS[e.reason])
    match e:
        case IoOut(port=port, value=value, eip=eip):
            out.port, out.value, out.eip = port & _U32, value & _U32, eip & _U32
        case IoIn(port=port, register=register, eip=eip):
            out.port, out.register, out.eip = port & _U32, register & _U32, eip & _U32
        case Halt(eip=eip, detail=detail):
            out.eip, out.detail = eip & _U32, detail
        case Shutdown(vector=vector, eip=eip, detail=detail):
            out.vector, out.eip, out.detail = vector & _U32, eip & _U32, detail
        case Budget():
            pass
        case Raised(vector=vector, eip=eip, error_code=error_code, cr2=cr2, delivering=delivering):
            out.vector, out.eip = vector & _U32, eip & _U32
            out.chain.extend(v & _U32 for v in e.chain)
            out.tick = e.tick
            if error_code is not None:
                out.error_code = error_code & _U32
            if cr2 is not None:
                out.cr2 = cr2 & _U32
            if delivering is not None:
                out.delivering = delivering & _U32
        case Intercept(instruction=instruction, eip=eip):
            out.eip = eip & _U32
            out.instruction = str(instruction)
            out.instruction_bytes = encode(instruction.spec, instruction.operands)
        case Idle(eip=eip):
            if eip is not None:
                out.eip = eip & _U32
    return out


_VcpuExitField = Literal["port", "value", "register", "vector", "error_code", "cr2", "delivering", "eip"]


def exit_from_proto(e: cpu_pb2.VcpuExit) -> Exit:
    """The exit as the core returned it (the instruction decoded from its encoding).  Raises
    ``ValueError`` when a field its reason always has is missing."""
    reason = _REASON_OF[e.reason]

    def need(name: _VcpuExitField) -> int:
        if not e.HasField(name):
            raise ValueError(f"a {reason.value} exit without its {name}: {e}")
        return int(getattr(e, name))

    def may(name: _VcpuExitField) -> int | None:
        return int(getattr(e, name)) if e.HasField(name) else None

    match reason:
        case ExitReason.IO_OUT:
            return IoOut(need("port"), need("value"), need("eip"))
        case ExitReason.IO_IN:
            return IoIn(need("port"), need("register"), need("eip"))
        case ExitReason.HALT:
            return Halt(need("eip"), e.detail)
        case ExitReason.SHUTDOWN:
            return Shutdown(need("vector"), need("eip"), e.detail)
        case ExitReason.BUDGET:
            return Budget()
        case ExitReason.EXCEPTION:
            if len(e.chain) > 2:  # an escalation counts at most its first fault and a #DF
                raise ValueError(f"an exception exit with a chain of {len(e.chain)}: {e}")
            return Raised(
                need("vector"), need("eip"), may("error_code"), may("cr2"), may("delivering"),
                tuple(int(v) for v in e.chain), e.tick,
            )  # fmt: skip
        case ExitReason.INSTRUCTION:
            instruction = decode(e.instruction_bytes) if e.instruction_bytes else None
            if instruction is None:
                raise ValueError(f"an instruction exit without a decodable instruction: {e}")
            return Intercept(instruction, need("eip"))
        case ExitReason.IDLE:
            return Idle(may("eip"))


def delta_to_proto(d: ContextDelta) -> cpu_pb2.VcpuSync:
    return cpu_pb2.VcpuSync(
        base=d.base,
        registers={k: int(v) for k, v in d.state.items()},
        stats_json=json.dumps(d.stats),
        pages=d.pages,
        tlb=d.tlb,
    )


class InvalidSync(ValueError):
    """What came from the wire is not what the other side of a world switch sends: ``field``
    names the request field at fault (``sync.registers``, ``tc.install``, ...)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


_STATE_FIELDS = frozenset(CpuState().to_dict())
_STATS = stats_to_json(Stats())
_VCPU_FIELDS = frozenset(f.name for f in dataclasses.fields(VirtualCpu))
_I64 = 1 << 63
MAX_ENTRIES = 1 << 16
"""The most pages, TLB operations, blocks or eips one message may carry (a VM of the largest
memory has 16,384 pages)."""
MAX_JSON = 1 << 20
"""The longest JSON text a sync or commit may carry (characters)."""


def _load_json(text: str, field: str) -> Any:
    if len(text) > MAX_JSON:
        raise InvalidSync(field, f"{field} of {len(text)} characters: at most {MAX_JSON}")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidSync(field, f"{field} is not JSON: {str(exc)[:100]}") from None


def _count(value: Any, field: str) -> int:
    if type(value) is not int or not 0 <= value < _I64:
        raise InvalidSync(
            field, f"{field} must be a count (an integer from 0 to 2**63-1), not {str(value)[:40]}"
        )
    return value


def _number(value: Any, field: str) -> float:
    if type(value) not in (int, float) or value != value or abs(value) == float("inf"):
        raise InvalidSync(field, f"{field} must be a finite number, not {str(value)[:40]}")
    return float(value)


def check_stats(stats: Any, field: str) -> dict[str, Any]:
    """``stats`` if it is a ``stats_to_json`` object (known counters, each a count)."""
    if not isinstance(stats, dict):
        raise InvalidSync(field, f"{field} must be a JSON object of the CPU's counters")
    for key, value in stats.items():
        if key not in _STATS:
            raise InvalidSync(field, f"{field}: {str(key)[:40]!r} is not a counter ({', '.join(_STATS)})")
        shape = _STATS[key]  # each counter as stats_to_json writes it: a count, a list or a map
        if isinstance(shape, list):
            if not isinstance(value, list) or len(value) != len(shape):
                raise InvalidSync(field, f"{field}: {key} must list {len(shape)} counts")
            for n in value:
                _count(n, f"{field}.{key}")
        elif isinstance(shape, dict):
            if not isinstance(value, dict) or len(value) > 1024:
                raise InvalidSync(field, f"{field}: {key} must map numbers to counts")
            for number, n in value.items():
                if not (number.isdigit() and len(number) <= 10):
                    raise InvalidSync(field, f"{field}: {key} key {number[:10]!r} is not a number")
                _count(n, f"{field}.{key}")
        else:
            _count(value, f"{field}.{key}")
    return stats


def check_vmm_record(record: dict[str, Any]) -> dict[str, Any]:
    """The hypervisor's per-VM record a commit stores (exits, exits by reason, start and end
    times): names of at most 64 characters, numbers, and one level of names to counts."""
    for key, value in record.items():
        if len(key) > 64:
            raise InvalidSync("vmm_state", f"vmm_state: key {key[:40]!r}... is too long")
        if isinstance(value, dict):
            if len(value) > 1024:
                raise InvalidSync("vmm_state", f"vmm_state.{key}: more than 1024 entries")
            for name, n in value.items():
                if len(name) > 64:
                    raise InvalidSync("vmm_state", f"vmm_state.{key}: key {name[:40]!r}... is too long")
                _count(n, f"vmm_state.{key}")
        else:
            _number(value, f"vmm_state.{key}")
    return record


def check_vmm_statistics(stats: dict[str, Any]) -> dict[str, Any]:
    """The VMM's statistics a commit records beside the CPU's (``VmCopy.statistics``): its cycles,
    world switches and, at the end, the run's result object (its exit, registers and host
    statistics in the shapes the hypervisor reads back)."""
    for key, value in stats.items():
        if key in ("vmm_cycles", "world_switches"):
            _count(value, f"stats_json.{key}")
        elif key == "result":
            _check_result(value)
        else:
            raise InvalidSync(
                "stats_json",
                f"stats_json: {str(key)[:40]!r} is not a VMM statistic (vmm_cycles, world_switches, result)",
            )
    return stats


def _check_result(doc: Any) -> None:
    field = "stats_json.result"
    if not isinstance(doc, dict):
        raise InvalidSync(field, f"{field} must be the run's result object")
    end = doc.get("exit")
    if not (
        isinstance(end, dict)
        and isinstance(end.get("reason"), str)
        and isinstance(end.get("detail", ""), str)
        and (end.get("code") is None or type(end.get("code")) is int)
    ):
        raise InvalidSync(field, f"{field}.exit must be {{reason, code, detail}}")
    registers = doc.get("registers")
    if not isinstance(registers, dict) or not all(
        type(v) is int and 0 <= v < 1 << 64 for v in registers.values()
    ):
        raise InvalidSync(field, f"{field}.registers must map names to unsigned integers")
    stats = doc.get("stats")
    if not isinstance(stats, dict) or not isinstance(stats.get("host"), dict):
        raise InvalidSync(field, f"{field}.stats must hold a host object")


def delta_from_proto(s: cpu_pb2.VcpuSync) -> ContextDelta:
    """The delta a sync carries, checked: every register by name (and no other), known counters,
    whole pages, a bounded TLB list of known operations and 32-bit addresses."""
    registers = dict(s.registers)
    unknown = set(registers) - _STATE_FIELDS
    if unknown:
        name = sorted(unknown)[0]
        raise InvalidSync("sync.registers", f"sync.registers: {name[:40]!r} is not a register or CPU state")
    missing = [name for name in REGISTERS if name not in registers]
    if missing:
        raise InvalidSync("sync.registers", f"sync.registers lacks {', '.join(missing)}")
    if len(s.pages) > MAX_ENTRIES or len(s.tlb) > MAX_ENTRIES:
        raise InvalidSync("sync", f"a sync carries at most {MAX_ENTRIES} pages and TLB operations")
    for number, blob in s.pages.items():
        if len(blob) != 4096:
            raise InvalidSync("sync.pages", f"sync.pages: page {number} has {len(blob)} bytes, not 4096")
    tlb = list(s.tlb)
    contents = tlb.index(TLB_LOAD) if TLB_LOAD in tlb else len(tlb)
    for op in tlb[:contents]:
        if op != TLB_FLUSH and not 0 <= op <= _U32:
            raise InvalidSync(
                "sync.tlb", f"sync.tlb: {op} is neither -1 (flush), -2 (contents) nor an address"
            )
    for word in tlb[contents + 1 :]:  # the TLB's entries: vpn << 32 | frame | bits (Tlb.snapshot)
        if not 0 <= word < 1 << 52:
            raise InvalidSync("sync.tlb", f"sync.tlb: {word} is not a TLB entry (vpn << 32 | frame | bits)")
    stats = (
        check_stats(_load_json(s.stats_json, "sync.stats_json"), "sync.stats_json") if s.stats_json else {}
    )
    return ContextDelta(base=s.base, state=registers, stats=stats, pages=dict(s.pages), tlb=tlb)


def tc_run_to_proto(t: TcRun) -> cpu_pb2.TcRun:
    out = cpu_pb2.TcRun(vcpu=t.vcpu, epoch=t.epoch, step_over=t.step_over, reset=t.reset)
    for spec in t.install:
        block = out.install.add(eip=spec.eip, pa=spec.pa, count=spec.count)
        if spec.source is not None:
            block.source_pa, block.source = spec.source
    out.drop.extend(cpu_pb2.TcKey(eip=eip, pa=pa) for eip, pa in t.drop)
    out.adapted.extend(t.adapted)
    return out


def tc_run_from_proto(t: cpu_pb2.TcRun) -> TcRun:
    """The translation to run, checked: the virtual CPU's known fields, blocks of at most
    ``MAX_BLOCK`` instructions, bounded lists."""
    unknown = set(t.vcpu) - _VCPU_FIELDS
    if unknown:
        raise InvalidSync("tc.vcpu", f"tc.vcpu: {sorted(unknown)[0][:40]!r} is not a virtual CPU field")
    if max(len(t.install), len(t.drop), len(t.adapted)) > MAX_ENTRIES:
        raise InvalidSync("tc", f"a translation carries at most {MAX_ENTRIES} blocks, drops and eips")
    for b in t.install:
        if not 1 <= b.count <= MAX_BLOCK:
            raise InvalidSync(
                "tc.install", f"tc.install: a block of {b.count} instructions (1 to {MAX_BLOCK})"
            )
        if len(b.source) > 4096:
            raise InvalidSync("tc.install", f"tc.install: {len(b.source)} bytes of source for one block")
    install = [
        BlockSpec(b.eip, b.pa, b.count, (b.source_pa, b.source) if b.HasField("source_pa") else None)
        for b in t.install
    ]
    return TcRun(
        dict(t.vcpu),
        t.epoch,
        t.step_over,
        t.reset,
        install,
        [(k.eip, k.pa) for k in t.drop],
        list(t.adapted),
    )


def tc_report_to_proto(r: TcReport) -> cpu_pb2.TcReport:
    out = cpu_pb2.TcReport(
        vcpu=r.vcpu,
        step_over=r.step_over,
        event="" if r.event is None else r.event.value,
        eip=r.eip,
        instruction=r.instruction,
        counts=r.counts,
    )
    if r.fault is not None:
        vector, error_code, cr2 = r.fault
        out.vector = vector
        if error_code is not None:
            out.error_code = error_code
        if cr2 is not None:
            out.cr2 = cr2
    out.dropped.extend(cpu_pb2.TcKey(eip=eip, pa=pa) for eip, pa in r.dropped)
    for mnemonic, kinds in r.handled.items():
        for how, n in kinds.items():
            out.handled[f"{mnemonic} {how}"] = n
    return out


def tc_report_from_proto(r: cpu_pb2.TcReport) -> TcReport:
    handled: dict[str, dict[str, int]] = {}
    for key, n in r.handled.items():
        mnemonic, how = key.rsplit(" ", 1)
        handled.setdefault(mnemonic, {})[how] = n
    fault = None
    if r.HasField("vector"):
        fault = (
            r.vector,
            r.error_code if r.HasField("error_code") else None,
            r.cr2 if r.HasField("cr2") else None,
        )
    return TcReport(
        dict(r.vcpu),
        r.step_over,
        VmmCall(r.event) if r.event else None,
        r.eip,
        fault,
        r.instruction,
        dict(r.counts),
        [(k.eip, k.pa) for k in r.dropped],
        handled,
    )


def guest_stats_to_proto(stats: Stats, virtual_time: int) -> common_pb2.GuestStats:
    return common_pb2.GuestStats(
        retired=stats.retired,
        retired_by_ring=stats.retired_by_ring,
        virtual_time=virtual_time,
        exceptions=stats.exceptions,
        interrupts=stats.interrupts,
        io=stats.io,
    )


def guest_stats_to_json(g: common_pb2.GuestStats) -> dict[str, Any]:
    """The ``stats.guest`` object of docs/machine.md's ``--json``, from its protobuf form."""
    return {
        "retired": g.retired,
        "retired_by_ring": {str(ring): n for ring, n in enumerate(g.retired_by_ring)},
        "virtual_time": g.virtual_time,
        "exceptions": {str(v): n for v, n in sorted(g.exceptions.items())},
        "interrupts": g.interrupts,
        "io": g.io,
    }
