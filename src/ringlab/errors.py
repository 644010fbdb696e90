"""Ringlab's exceptions, one tree:

    RinglabError                  base of everything Ringlab raises on purpose
    ├── AssemblyError             a program does not assemble (file:line:column and the reason)
    ├── ImageError                an image file is malformed or does not fit in guest memory
    ├── UsageError                a request that cannot be honoured as asked (unknown technique,
    │                             workload, option combination); the CLI exits 2 with its text
    └── DeploymentFailed          a deployment could not be started or reached, or refused a call:
                                  the message says which gRPC status and what to do; the CLI exits 3

Guest misbehaviour is never an exception: it is a fault delivered to the guest, or an exit.
"""

from __future__ import annotations

__all__ = ["AssemblyError", "DeploymentFailed", "ImageError", "RinglabError", "UsageError"]


class RinglabError(Exception):
    """Base of every error Ringlab raises on purpose."""


class AssemblyError(RinglabError):
    """Raised when source text does not assemble.  ``str()`` is ``file:line:column: message``."""

    def __init__(self, file: str, line: int, column: int, message: str) -> None:
        self.file = file
        self.line = line
        self.column = column
        self.message = message
        super().__init__(f"{file}:{line}:{column}: {message}")


class ImageError(RinglabError):
    """Raised when an image file is malformed or does not fit the machine."""


class UsageError(RinglabError):
    """Raised for a request that cannot be honoured as asked (the CLI exits with status 2)."""


class DeploymentFailed(RinglabError):
    """Raised on the client's side when a deployment could not be started (a service exited, its
    port is taken, Redis does not answer) or a call to it failed: the message names the status and
    what to do (the CLI exits 3)."""
