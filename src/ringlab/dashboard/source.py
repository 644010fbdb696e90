"""The dashboard's one adapter to the deployment: the hypervisor's gRPC API, through the project's
client channel (``ringlab.rpc.open_channel``: the bearer token, retries of UNAVAILABLE), turned
into plain dicts. The rest of the package never sees a gRPC message or error: a failed call is a
``SourceError`` with an HTTP status and the message ``ringlab vm`` would print."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from ringlab.rpc import describe_error, open_channel
from ringlab.rpc.convert import KERNELS, TECHNIQUES
from ringlab.v1 import common_pb2, hypervisor_pb2, hypervisor_pb2_grpc

__all__ = ["CreateSpec", "EventStream", "HypervisorSource", "SourceError"]

CALL_TIMEOUT = 10.0
CREATE_TIMEOUT = 30.0
CONSOLE_LIMIT = 256 * 1024
"""The most console bytes one read returns; the next read goes on from its cursor."""

_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
_TECHNIQUE_NAME = {v: k for k, v in TECHNIQUES.items()}
_KERNEL_NAME = {v: k for k, v in KERNELS.items()}


class SourceError(Exception):
    """A call the deployment refused or could not answer: ``status`` is the HTTP status the
    dashboard answers with (502 for what is the deployment's or its configuration's fault)."""

    def __init__(self, status: int, message: str, *, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


@dataclass(frozen=True)
class CreateSpec:
    """A VM the page asks for: a guest-OS workload by name (the hypervisor builds the image)."""

    name: str
    technique: str
    workload: str
    kernel: str = ""
    """"" : the technique's default (paravirt under pv, stock otherwise)."""
    nested_paging: bool = False
    weight: int = 256
    start: bool = True
    defines: dict[str, int] = field(default_factory=dict)
    """-D definitions for the workload's build (``ITERATIONS``: how much work it does)."""


class EventStream:
    """The followed event stream: iterate for event dicts; ``cancel`` ends it from any thread."""

    def __init__(self, source: HypervisorSource, call: Any) -> None:
        self._source = source
        self._call = call

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            for e in self._call:
                yield {
                    "cursor": e.cursor,
                    "kind": e.kind,
                    "vm": e.vm,
                    "pcpu": e.pcpu,
                    "detail": e.detail,
                    "time": e.time,
                }
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.CANCELLED:
                return
            raise self._source.error(err) from None

    def cancel(self) -> None:
        self._call.cancel()


def status_name(value: int) -> str:
    """``VM_STATUS_POWEROFF`` -> ``poweroff`` (``?`` when unknown), as ``ringlab vm list`` says it."""
    if value == hypervisor_pb2.VM_STATUS_UNSPECIFIED or value not in hypervisor_pb2.VmStatus.values():
        return "?"
    name = hypervisor_pb2.VmStatus.Name(hypervisor_pb2.VmStatus.ValueType(value))
    return name.removeprefix("VM_STATUS_").lower()


def vm_dict(vm: Any) -> dict[str, Any]:
    s = vm.stats
    return {
        "id": vm.id,
        "name": vm.name,
        "technique": _TECHNIQUE_NAME.get(vm.technique, "?"),
        "nested_paging": vm.nested_paging,
        "kernel": _KERNEL_NAME.get(vm.kernel, "?"),
        "workload": vm.workload,
        "status": status_name(vm.status),
        "code": vm.exit_code if vm.HasField("exit_code") else None,
        "detail": vm.detail,
        "weight": vm.weight,
        "cap": vm.cap,
        "cpu_share": s.cpu_share,
        "cpu_seconds": s.cpu_seconds,
        "credit": s.credit,
        "exits": s.exits,
        "exits_by_reason": dict(s.exits_by_reason),
        "slices": s.slices,
        "retired": s.guest.retired,
        "simulated_cycles": s.simulated_cycles,
    }


def pcpu_dict(p: Any) -> dict[str, Any]:
    return {
        "pcpu": p.pcpu,
        "address": p.address,
        "alive": p.alive,
        "running": p.running,
        "busy_seconds": p.busy_seconds,
        "scheduler_seconds": p.scheduler_seconds,
        "slices": p.slices,
        "world_switches": p.world_switches,
    }


class HypervisorSource:
    """The hypervisor at ``target``, called with ``token`` (the operator's; "" for none)."""

    def __init__(self, target: str, token: str = "") -> None:
        self.target = target
        self.token = token
        self._lock = threading.Lock()
        self._stub: hypervisor_pb2_grpc.HypervisorStub | None = None

    @property
    def stub(self) -> hypervisor_pb2_grpc.HypervisorStub:
        with self._lock:
            if self._stub is None:
                self._stub = hypervisor_pb2_grpc.HypervisorStub(open_channel(self.target, self.token))
            return self._stub

    def error(self, err: grpc.RpcError) -> SourceError:
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        message = describe_error(err, self.target, token_sent=bool(self.token))
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            message += (
                " [the dashboard calls the hypervisor with the token it was started with: "
                "'ringlab up --token' or 'ringlab dashboard --token' / RINGLAB_TOKEN]"
            )
        name = code.name if isinstance(code, grpc.StatusCode) else str(code)
        return SourceError(_HTTP_STATUS.get(code, 502), message, code=name)

    def _call(self, method: Any, request: Any, timeout: float = CALL_TIMEOUT) -> Any:
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as err:
            raise self.error(err) from None

    # -- reads ---------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        reply = self._call(self.stub.GetStats, hypervisor_pb2.GetStatsRequest())
        return {"vms": [vm_dict(vm) for vm in reply.vms], "pcpus": [pcpu_dict(p) for p in reply.pcpus]}

    def events(self, after: str = "") -> EventStream:
        """Every VM's events from now on (or after ``after``), until cancelled."""
        request = hypervisor_pb2.StreamEventsRequest(follow=True, after=after)
        return EventStream(self, self.stub.StreamEvents(request))

    def console(self, vm: str, after: str = "") -> tuple[str, str]:
        """The VM's console after ``after`` (a cursor; "" from its start), at most CONSOLE_LIMIT
        bytes, decoded as latin-1 (as ``ringlab vm console`` prints it), and the cursor to pass
        next time."""
        request = hypervisor_pb2.StreamConsoleRequest(vm=vm, after=after, follow=False)
        call = self.stub.StreamConsole(request, timeout=CALL_TIMEOUT)
        data, cursor = bytearray(), after
        try:
            for chunk in call:
                data += chunk.data
                cursor = chunk.cursor
                if len(data) >= CONSOLE_LIMIT:
                    break
        except grpc.RpcError as err:
            raise self.error(err) from None
        finally:
            call.cancel()
        return data.decode("latin-1"), cursor

    # -- actions -------------------------------------------------------------------------------------
    def create(self, spec: CreateSpec) -> dict[str, Any]:
        request = hypervisor_pb2.CreateVmRequest(
            name=spec.name,
            technique=TECHNIQUES[spec.technique],
            nested_paging=spec.nested_paging,
            kernel=KERNELS[spec.kernel] if spec.kernel else common_pb2.KERNEL_FLAVOUR_UNSPECIFIED,
            workload=spec.workload,
            weight=spec.weight,
            start=spec.start,
            defines=spec.defines,
        )
        return vm_dict(self._call(self.stub.CreateVm, request, CREATE_TIMEOUT))

    def act(self, vm: str, action: str) -> dict[str, Any]:
        """``start``, ``pause``, ``resume`` or ``stop`` the VM (name or id)."""
        method = {
            "start": self.stub.StartVm,
            "pause": self.stub.PauseVm,
            "resume": self.stub.ResumeVm,
            "stop": self.stub.StopVm,
        }[action]
        return vm_dict(self._call(method, hypervisor_pb2.VmRef(vm=vm)))

    def destroy(self, vm: str) -> bool:
        return bool(self._call(self.stub.DestroyVm, hypervisor_pb2.VmRef(vm=vm)).destroyed)
