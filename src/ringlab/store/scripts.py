"""The Lua scripts of ``lua/``, registered once per client (EVALSHA, reloaded if Redis forgot)."""

from __future__ import annotations

from importlib import resources
from typing import Any

import redis

__all__ = ["Scripts"]

_NAMES = (
    "create_vm",
    "commit",
    "grant",
    "control",
    "destroy_vm",
    "renew_driver",
    "claim_mix",
    "reboot_vm",
    "flight_append",
)


class Scripts:
    """One ``redis.commands.core.Script`` per file in ``lua/``, by name."""

    def __init__(self, client: redis.Redis) -> None:
        folder = resources.files("ringlab.store") / "lua"
        self._scripts = {
            name: client.register_script((folder / f"{name}.lua").read_text()) for name in _NAMES
        }

    def __call__(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return self._scripts[name](keys=keys, args=args)
