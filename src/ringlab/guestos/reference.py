"""What the guest OS's workloads compute, in plain Python: the specification their console
output is checked against, and the reference the speed suite times (written as a good Python
programmer would)."""

from __future__ import annotations

__all__ = ["BUFFER_SIZE", "fnv1a_reference"]

BUFFER_SIZE = 4096
"""Bytes the ``compute`` workload fills with its LCG before hashing them."""


def fnv1a_reference(rounds: int, size: int = BUFFER_SIZE) -> int:
    """The compute workload's algorithm in plain Python."""
    x = 1
    buf = bytearray(size)
    for i in range(size):
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF
        buf[i] = (x >> 16) & 0xFF
    h = 2166136261
    for _ in range(rounds):
        for b in buf:
            h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h
