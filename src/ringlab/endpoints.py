"""Where a client finds a deployment unless told otherwise: one constant, with no imports, so that
the CLI's parser (which must not import grpc) and ``rpc.config`` (the services' flags) share it."""

__all__ = ["DEFAULT_HYPERVISOR"]

DEFAULT_HYPERVISOR = "127.0.0.1:50051"
"""The hypervisor's address (``--hypervisor``, ``RINGLAB_HYPERVISOR``): its default port on loopback."""
