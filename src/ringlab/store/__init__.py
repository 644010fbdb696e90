"""Redis as a deployment's shared state: key names (``keys``), atomic Lua scripts (``lua/``),
the typed adapter (``SharedState``) and a local server for one machine (``LocalRedis``)."""

from ringlab.store.errors import (
    AlreadyExists,
    DeploymentError,
    Exhausted,
    InvalidRequest,
    StaleLease,
    Unauthenticated,
    VmNotFound,
    WrongState,
)
from ringlab.store.server import LocalRedis
from ringlab.store.state import Commit, GrantResult, SharedState, VcpuContext, connect

__all__ = [
    "AlreadyExists",
    "Commit",
    "DeploymentError",
    "Exhausted",
    "GrantResult",
    "InvalidRequest",
    "LocalRedis",
    "SharedState",
    "StaleLease",
    "Unauthenticated",
    "VcpuContext",
    "VmNotFound",
    "WrongState",
    "connect",
]
