"""The hypervisor's runtime, grpc-free: VM definitions (``definition``), booting a VM's commit 0
(``boot``), the hypervisor's copy of a running VM and its replay (``vm_copy``), the pCPU drivers'
scheduler and slice loops (``pcpu_driver``), how a VM ended (``results``), and the two ports the
runtime is plugged into a deployment by (``ports``: a pCPU's world switch, the scheduler's store).
The hypervisor service's adapters (``ringlab_hypervisor``) convert the protocol to these values
and back.

It sits above ``vmm`` and ``sched`` and below the adapters (``rpc``, ``store``, ``v1``): it imports
no grpc, redis, protobuf or generated code."""

from ringlab.hypervisor.boot import Boot, boot, new_vm, snapshot_at, vm_from
from ringlab.hypervisor.definition import (
    DEFAULT_CONSOLE_QUOTA,
    DEFAULT_FLIGHT_SLICES,
    MAX_MEMORY,
    SERVICE_TECHNIQUES,
    Defined,
    InvalidDefinition,
    LimitExceeded,
    Limits,
    UnbootableKernel,
    define,
    define_restored,
    differences,
    is_vm_ref,
)
from ringlab.hypervisor.pcpu_driver import SWITCH_DEADLINE, DriverManager, PcpuDriver, Runtimes
from ringlab.hypervisor.ports import (
    ConnectPcpu,
    GrantResult,
    Pcpu,
    SchedulerStore,
    SliceCommit,
    Switched,
    SwitchFailed,
    WorldSwitch,
)
from ringlab.hypervisor.results import (
    RESULT_REASONS,
    STOP_STATUS,
    plain_result,
    simulated_cycles,
    stop_status,
)
from ringlab.hypervisor.vm_copy import MAX_RUN_BUDGET, VmCopy

__all__ = [
    "DEFAULT_CONSOLE_QUOTA",
    "DEFAULT_FLIGHT_SLICES",
    "MAX_MEMORY",
    "MAX_RUN_BUDGET",
    "SWITCH_DEADLINE",
    "ConnectPcpu",
    "DriverManager",
    "GrantResult",
    "Pcpu",
    "PcpuDriver",
    "Runtimes",
    "SchedulerStore",
    "SliceCommit",
    "SwitchFailed",
    "Switched",
    "VmCopy",
    "WorldSwitch",
    "RESULT_REASONS",
    "SERVICE_TECHNIQUES",
    "STOP_STATUS",
    "Boot",
    "Defined",
    "InvalidDefinition",
    "LimitExceeded",
    "Limits",
    "UnbootableKernel",
    "boot",
    "define",
    "define_restored",
    "differences",
    "is_vm_ref",
    "new_vm",
    "snapshot_at",
    "vm_from",
    "plain_result",
    "simulated_cycles",
    "stop_status",
]
