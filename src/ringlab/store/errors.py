"""Errors of the deployment (VMs, leases, shared state), each saying what a person can do.

    RinglabError (ringlab.errors)
     └── DeploymentError          something a client asked of a deployment could not be done
          ├── InvalidRequest      the request itself is wrong (a bad field): fix the request
          ├── VmNotFound          no VM by that name or id: list them with `ringlab vm list`
          ├── AlreadyExists       a VM of that name exists with another definition
          ├── WrongState          the VM is not in a state that allows it (start a created VM...)
          ├── StaleLease          a commit carried a fencing token that is no longer current
          ├── Exhausted           out of a bounded resource (memory, VMs, stream slots)
          └── Unauthenticated     missing or wrong bearer token

``ringlab.rpc.errors`` maps each class to one gRPC status code.
"""

from __future__ import annotations

from ringlab.errors import RinglabError

__all__ = [
    "AlreadyExists",
    "DeploymentError",
    "Exhausted",
    "InvalidRequest",
    "StaleLease",
    "Unauthenticated",
    "VmNotFound",
    "WrongState",
]


class DeploymentError(RinglabError):
    """Base class: a deployment refused or could not do what was asked."""


class InvalidRequest(DeploymentError):
    """Raised when a request field is malformed or out of range."""


class VmNotFound(DeploymentError):
    """Raised when a VM name or id names no VM."""

    def __init__(self, ref: str) -> None:
        super().__init__(f"no VM named or numbered {ref!r}: see 'ringlab vm list' for the VMs that exist")
        self.ref = ref


class AlreadyExists(DeploymentError):
    """Raised when a create names an existing VM whose definition differs from the request's."""


class WrongState(DeploymentError):
    """Raised when a lifecycle action does not apply to the VM's current state."""


class StaleLease(DeploymentError):
    """Raised when a commit's fencing token is not the VM's current grant: a newer holder (or an
    operator's pause/stop) took the VM, so this holder's state must be dropped."""


class Exhausted(DeploymentError):
    """Raised when a bounded resource is used up."""


class Unauthenticated(DeploymentError):
    """Raised when a caller's bearer token is missing or wrong."""
