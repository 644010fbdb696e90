"""The ``ringlab`` commands that talk to a deployment (``up``, ``vm``, ``top``, ...).

Kept apart from ``cli.py`` so that the in-process commands never import grpc or redis.
"""

from __future__ import annotations

from typing import Any

__all__ = ["add_service_commands"]


def add_service_commands(sub: Any) -> None:
    """Register the deployment commands on the ``ringlab`` sub-parser set."""
    del sub  # no deployment commands yet
