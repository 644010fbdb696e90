"""What the hypervisor's runtime needs from the world around it, as domain values and protocols.

The runtime (``vm_copy``: a VM's copy and its replay; ``pcpu_driver``: the scheduler loop and the
slice loop of one pCPU) is plain Python.  Two ports connect it to a deployment, and the
hypervisor service plugs adapters into them:

- ``Pcpu``, the world switch: send a VM's changes and controls to a physical CPU, run the guest
  there until its next exit, get back what that run changed (the service's adapter speaks
  ``Cpu/RunVcpu`` over gRPC);
- ``SchedulerStore``, the shared state the scheduler reads and grants through (the store's
  ``SharedState`` over Redis implements it as it is).

Neither protocol names grpc or redis: the runtime's tests and readers see only these values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ringlab.machine import Controls, Exit
from ringlab.machine.context import ContextDelta
from ringlab.vmm.translated import TcReport, TcRun

__all__ = [
    "ConnectPcpu",
    "GrantResult",
    "Pcpu",
    "SchedulerStore",
    "SliceCommit",
    "SwitchFailed",
    "Switched",
    "WorldSwitch",
]


@dataclass(frozen=True)
class SliceCommit:
    """What a slice adds to the VM's committed state besides the vCPU's own (which the pCPU
    holds): new console bytes, statistics, the VMM's record, and how the VM ended if it did."""

    console: bytes
    stats_json: str
    vmm_state: str
    status: str = ""
    """"" while the VM runs on; else its end (``results.STOP_STATUS``)."""
    code: int | None = None
    detail: str = ""


@dataclass(frozen=True)
class WorldSwitch:
    """One world switch, hypervisor -> pCPU: run VM ``vm`` under grant ``token`` from its
    ``generation``, with the hypervisor's changes since the last switch (``delta``; None: send
    nothing, the pCPU's copy stands), for at most ``budget`` instructions (0: run nothing)."""

    vm: str
    token: int
    generation: int
    budget: int
    controls: Controls
    delta: ContextDelta | None
    nested_ram_size: int = 0
    """Guest RAM under nested paging (0: shadow paging or none)."""
    tc: TcRun | None = None
    """bt: run the guest kernel's translation instead of the core."""
    commit: SliceCommit | None = None
    """Commit after the run (atomically, with the pCPU's registers and pages)."""
    deadline: float | None = None
    """Seconds the pCPU has to answer (what is left of the grant's lease): a pCPU that does not
    answer by then has lost the slice (None: the adapter's own limit)."""


@dataclass(frozen=True)
class Switched:
    """The pCPU's answer: what its run changed, how it ended, the generation now committed."""

    delta: ContextDelta
    exit: Exit
    tc: TcReport | None
    generation: int


class SwitchFailed(Exception):
    """The pCPU refused the switch (a stale grant or generation), could not be reached or did not
    answer in time, or the two copies of the vCPU disagree: the slice is lost, and the VM resumes
    from its last commit."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable
        """The pCPU did not answer (dead, stopped or cut off): give it no VM until it does."""


class Pcpu(Protocol):
    """A physical CPU as the runtime drives it."""

    def switch(self, request: WorldSwitch) -> Switched:
        """Raises ``SwitchFailed``."""
        ...

    def ready(self) -> bool:
        """Whether the pCPU answers now (asked after it failed to, before it gets a VM again)."""
        ...

    def close(self) -> None: ...


ConnectPcpu = Callable[[str], Pcpu]
"""A pCPU's address -> a connection to it."""


@dataclass
class GrantResult:
    """The scheduler's atomic grant: whether it applied (the entries had not changed since the
    snapshot it was decided on), the new fencing token, and the entries as they are now."""

    applied: bool
    token: int
    version: int
    entries: dict[str, dict[str, Any]]


class SchedulerStore(Protocol):
    """The shared state, as the pCPU drivers use it."""

    round_trips: int
    """Round trips this handle made (the services benchmark divides them by world switches)."""

    def counted(self) -> SchedulerStore:
        """A handle on the same state that counts its own round trips."""
        ...

    def sched_snapshot(self) -> tuple[int, dict[str, dict[str, Any]]]: ...

    def grant(
        self,
        *,
        version: int,
        pcpu: str,
        now: float,
        lease_seconds: float,
        chosen: str | None,
        updates: dict[str, dict[str, Any]],
        events: list[dict[str, str]],
        busy_seconds: float = 0.0,
        scheduler_seconds: float = 0.0,
        slices: int = 0,
        world_switches: int = 0,
        round_trips: int = 0,
    ) -> GrantResult: ...

    def renew_driver(self, pcpu: str, owner: str, ttl_ms: int) -> bool: ...

    def release_driver(self, pcpu: str, owner: str) -> None: ...

    def pcpus(self) -> dict[str, tuple[str, bool]]: ...

    def vm_record(self, vm: str) -> tuple[dict[str, Any], dict[str, str]]: ...

    def vm_image(self, vm: str) -> bytes: ...

    def flight_append(self, vm: str, records: list[dict[str, Any]], keep: int) -> None:
        """Keep one slice's flight records (the store caps them at about ``keep`` slices)."""
        ...

    def vm_vcpu_summary(self, vm: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], int]: ...
