"""Protobuf <-> domain conversions used on both sides of the cpu service boundary."""

from __future__ import annotations

import json
from typing import Any, Literal

from ringlab.guestos.build import NO_KERNEL, KernelFlavour
from ringlab.hypervisor.vm_copy import MAX_RUN_BUDGET
from ringlab.isa import decode, encode
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
from ringlab.machine.stats import Stats, stats_from_json, stats_to_json
from ringlab.v1 import common_pb2, cpu_pb2
from ringlab.vmm.technique import TechniqueName
from ringlab.vmm.translated import BlockSpec, TcReport, TcRun, VmmCall

__all__ = [
    "EXIT_REASONS",
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
    )


def controls_to_proto(c: Controls) -> common_pb2.Controls:
    return common_pb2.Controls(
        intercept_vectors=sorted(c.intercept_vectors),
        intercept_mnemonics=sorted(c.intercept_mnemonics),
        intercept_io=c.intercept_io,
        exit_on_idle_hlt=c.exit_on_idle_hlt,
        vmx_nonroot=c.vmx_nonroot,
        cpuid_hypervisor_bit=c.cpuid_hypervisor_bit,
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
            return Raised(need("vector"), need("eip"), may("error_code"), may("cr2"), may("delivering"))
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


def delta_from_proto(s: cpu_pb2.VcpuSync) -> ContextDelta:
    return ContextDelta(
        base=s.base,
        state=dict(s.registers),
        stats=json.loads(s.stats_json) if s.stats_json else {},
        pages=dict(s.pages),
        tlb=list(s.tlb),
    )


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
