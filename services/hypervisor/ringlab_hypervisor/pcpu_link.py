"""The hypervisor runtime's ``Pcpu`` port over gRPC: a world switch is one ``Cpu/RunVcpu`` call.

``ringlab.hypervisor`` drives the pCPUs in domain values (``WorldSwitch`` -> ``Switched``); this
adapter converts them to the protocol and back, and turns every failed call into
``SwitchFailed`` (with the status, so the log says why the slice was lost).  With tracing on
(``ringlab.rpc.tracing``) each world switch is a ``world switch`` span, the parent of the call's
CLIENT span, whose context the call carries to the pCPU.
"""

from __future__ import annotations

import functools

import grpc

from ringlab.hypervisor import SWITCH_DEADLINE, SliceCommit, Switched, SwitchFailed, WorldSwitch
from ringlab.machine import Controls
from ringlab.rpc import open_channel
from ringlab.rpc.convert import (
    controls_to_proto,
    delta_from_proto,
    delta_to_proto,
    exit_from_proto,
    tc_report_from_proto,
    tc_run_to_proto,
)
from ringlab.rpc.tracing import NO_SPAN, OFF_TRACING, Span, Tracing
from ringlab.v1 import common_pb2, cpu_pb2, cpu_pb2_grpc

__all__ = ["GrpcPcpu"]

_UNANSWERED = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
"""The pCPU is gone, stopped or cut off (not: it refused the call)."""
PROBE_TIMEOUT = 1.0
"""How long ``ready`` waits for a pCPU that stopped answering (seconds)."""


@functools.lru_cache(maxsize=256)
def _controls(controls: Controls) -> common_pb2.Controls:
    """Controls are few and change rarely (a technique keeps one object): convert each once."""
    return controls_to_proto(controls)


def _commit(c: SliceCommit) -> cpu_pb2.CommitRequest:
    out = cpu_pb2.CommitRequest(console=c.console, stats_json=c.stats_json, vmm_state=c.vmm_state)
    if c.status:
        out.status, out.detail = c.status, c.detail
        if c.code is not None:
            out.code = c.code
    return out


class GrpcPcpu:
    """A pCPU at ``address``, reached through one channel carrying ``token``."""

    def __init__(self, address: str, token: str, tracing: Tracing = OFF_TRACING) -> None:
        self.address = address
        self.tracing = tracing
        self._channel = open_channel(address, token, tracing=tracing)
        self._stub = cpu_pb2_grpc.CpuStub(self._channel)

    def switch(self, request: WorldSwitch) -> Switched:
        if not self.tracing.enabled:
            return self._switch(request)
        with self.tracing.span(
            "world switch",
            {
                "ringlab.vm.id": request.vm,
                "ringlab.pcpu.address": self.address,
                "ringlab.switch.budget": request.budget,
                "ringlab.switch.commits": request.commit is not None,
                "ringlab.generation": request.generation,
            },
        ) as span:
            return self._switch(request, span)

    def _switch(self, request: WorldSwitch, span: Span = NO_SPAN) -> Switched:
        call = cpu_pb2.RunVcpuRequest(
            vm=request.vm,
            lease_token=request.token,
            generation=request.generation,
            budget=request.budget,
            controls=_controls(request.controls),
            nested_ram_size=request.nested_ram_size,
        )
        if request.delta is not None:
            call.sync.CopyFrom(delta_to_proto(request.delta))
        if request.tc is not None:
            call.tc.CopyFrom(tc_run_to_proto(request.tc))
        if request.commit is not None:
            call.commit.CopyFrom(_commit(request.commit))
        deadline = SWITCH_DEADLINE if request.deadline is None else min(SWITCH_DEADLINE, request.deadline)
        try:
            response = self._stub.RunVcpu(call, timeout=deadline)
        except grpc.RpcError as err:
            code = err.code()
            raise SwitchFailed(
                f"pCPU {self.address}: {code.name}: {err.details()}", unreachable=code in _UNANSWERED
            ) from None
        switched = Switched(
            delta=delta_from_proto(response.sync),
            exit=exit_from_proto(response.exit),
            tc=None if request.tc is None else tc_report_from_proto(response.tc),
            generation=response.generation,
        )
        if span.is_recording():
            span.set_attribute("ringlab.exit.reason", switched.exit.reason.value)
            span.set_attribute("ringlab.retired", response.retired)
            span.set_attribute("ringlab.cache_reloaded", response.cache_reloaded)
            if switched.tc is not None and switched.tc.event:
                span.set_attribute("ringlab.vmm_call", str(switched.tc.event))
            if response.generation != request.generation:
                span.set_attribute("ringlab.commit.generation", response.generation)
        return switched

    def ready(self) -> bool:
        try:
            self._stub.DescribeCpu(cpu_pb2.DescribeCpuRequest(), timeout=PROBE_TIMEOUT)
        except grpc.RpcError:
            return False
        return True

    def close(self) -> None:
        self._channel.close()
