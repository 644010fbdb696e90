"""Where a client finds a deployment unless told otherwise: constants with no imports, so that
the CLI's parser (which must not import grpc) and ``rpc.config`` (the services' flags) share them."""

__all__ = ["DEFAULT_HYPERVISOR", "DEFAULT_PORTS"]

DEFAULT_PORTS = {"hypervisor": 50051, "cpu": 50061, "guest": 50071}
"""Each service's default port (``--listen``, ``RINGLAB_LISTEN``)."""

DEFAULT_HYPERVISOR = f"127.0.0.1:{DEFAULT_PORTS['hypervisor']}"
"""The hypervisor's address (``--hypervisor``, ``RINGLAB_HYPERVISOR``): its default port on loopback."""
