"""gRPC plumbing shared by every Ringlab service and client (adapters, no domain logic):
configuration (``config``), the server builder (``server``), the error table (``errors``) and
client channels (``client``)."""

from ringlab.rpc.client import describe_error, open_channel
from ringlab.rpc.config import ServiceConfig, add_service_flags, config_from_args
from ringlab.rpc.errors import STATUS_OF, status_of
from ringlab.rpc.server import ServiceServer, StreamSlots, build_server

__all__ = [
    "STATUS_OF",
    "ServiceConfig",
    "ServiceServer",
    "StreamSlots",
    "add_service_flags",
    "build_server",
    "config_from_args",
    "describe_error",
    "open_channel",
    "status_of",
]
