"""Protobuf <-> domain conversions used on both sides of the cpu service boundary."""

from __future__ import annotations

from typing import Any

from ringlab.machine import Controls, Exit, ExitReason
from ringlab.machine.stats import Stats, stats_from_json, stats_to_json
from ringlab.v1 import common_pb2, cpu_pb2

__all__ = [
    "EXIT_REASONS",
    "KERNELS",
    "TECHNIQUES",
    "controls_from_proto",
    "controls_to_proto",
    "exit_to_proto",
    "guest_stats_to_proto",
    "guest_stats_to_json",
    "stats_from_json",
    "stats_to_json",
]

TECHNIQUES: dict[str, common_pb2.Technique.ValueType] = {
    "native": common_pb2.TECHNIQUE_NATIVE,
    "trap-emulate": common_pb2.TECHNIQUE_TRAP_EMULATE,
    "bt": common_pb2.TECHNIQUE_BT,
    "pv": common_pb2.TECHNIQUE_PV,
    "hw": common_pb2.TECHNIQUE_HW,
}
KERNELS: dict[str, common_pb2.KernelFlavour.ValueType] = {
    "stock": common_pb2.KERNEL_FLAVOUR_STOCK,
    "paravirt": common_pb2.KERNEL_FLAVOUR_PARAVIRT,
    "none": common_pb2.KERNEL_FLAVOUR_NONE,
}
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
REASON_NAMES = {v: k.value for k, v in EXIT_REASONS.items()}


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


def exit_to_proto(e: Exit) -> cpu_pb2.VcpuExit:
    out = cpu_pb2.VcpuExit(reason=EXIT_REASONS[e.reason], detail=e.detail)
    for name in ("port", "value", "register", "vector", "error_code", "cr2", "eip"):
        value = getattr(e, name)
        if value is not None:
            setattr(out, name, value & 0xFFFFFFFF)
    if e.instruction is not None:
        out.instruction = str(e.instruction)
    return out


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
    """The ``stats.guest`` object of ISA.md's ``--json``, from its protobuf form."""
    return {
        "retired": g.retired,
        "retired_by_ring": {str(ring): n for ring, n in enumerate(g.retired_by_ring)},
        "virtual_time": g.virtual_time,
        "exceptions": {str(v): n for v, n in sorted(g.exceptions.items())},
        "interrupts": g.interrupts,
        "io": g.io,
    }
