"""Ringlab: a virtualization sandbox around RL-32, an x86-style CPU with protection rings.

The library is the domain model (ISA, assembler, CPU core, guest OS builder, hypervisor
techniques); the services in ``services/`` adapt it to gRPC and Redis.
"""

__version__ = "0.1.0"
