"""The hypervisor's runtime, grpc-free: VM definitions (``definition``), booting a VM's commit 0
(``boot``) and how a VM ended (``results``).  The services' adapters (``ringlab_hypervisor``)
convert the protocol to these values and back and keep them in the store.

It sits above ``vmm`` and ``sched`` and below the adapters (``rpc``, ``store``, ``v1``): it imports
no grpc, redis, protobuf or generated code."""

from ringlab.hypervisor.boot import Boot, boot, new_vm
from ringlab.hypervisor.definition import (
    MAX_MEMORY,
    SERVICE_TECHNIQUES,
    Defined,
    InvalidDefinition,
    LimitExceeded,
    UnbootableKernel,
    define,
    differences,
)
from ringlab.hypervisor.results import (
    RESULT_REASONS,
    STOP_STATUS,
    plain_result,
    simulated_cycles,
    stop_status,
)

__all__ = [
    "MAX_MEMORY",
    "RESULT_REASONS",
    "SERVICE_TECHNIQUES",
    "STOP_STATUS",
    "Boot",
    "Defined",
    "InvalidDefinition",
    "LimitExceeded",
    "UnbootableKernel",
    "boot",
    "define",
    "differences",
    "new_vm",
    "plain_result",
    "simulated_cycles",
    "stop_status",
]
