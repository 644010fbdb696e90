"""How a VM ended, as the hypervisor records and reports it: its status, its simulated cycles and
the JSON object of ``ringlab run --json`` (docs/run.md) for a VM that ended without one."""

from __future__ import annotations

from typing import Any

from ringlab.machine.stats import Stats
from ringlab.vmm import Stop
from ringlab.vmm.costs import cycles
from ringlab.vmm.counters import EventCounter

__all__ = ["RESULT_REASONS", "STOP_STATUS", "plain_result", "simulated_cycles", "stop_status"]

STOP_STATUS = {"poweroff": "poweroff", "halt": "halted", "shutdown": "shutdown", "limit": "limit"}
"""docs/machine.md exit reason -> VM status; any other reason (``refused``) ends the VM as shut down."""
RESULT_REASONS = {status: reason for reason, status in STOP_STATUS.items()}
"""VM status -> the result's exit reason."""


def stop_status(stop: Stop) -> tuple[str, int | None, str]:
    """(VM status, code, detail) for how a run ended."""
    if stop.reason in STOP_STATUS:
        return STOP_STATUS[stop.reason], stop.code, stop.detail
    return "shutdown", stop.code, f"{stop.reason}: {stop.detail}"


def simulated_cycles(technique: str, stats: Stats, vmm_cycles: int) -> int:
    """The cost model's cycles (``vmm.costs.cycles``) of a VM whose VMM events come summed, as
    the commits carry them (``vmm_cycles``): its instructions alone, plus those."""
    return cycles(technique, stats, EventCounter()) + vmm_cycles


def plain_result(
    console: bytes,
    reason: str,
    code: int | None,
    detail: str,
    registers: dict[str, int],
    stats: Stats,
    virtual_time: int,
    exits: int,
    wall: float,
) -> dict[str, Any]:
    """The JSON object of a VM that ended without a final commit of its own (stopped)."""
    return {
        "console": console.decode("latin-1"),
        "exit": {"reason": reason, "code": code, "detail": detail},
        "registers": registers,
        "stats": {
            "guest": stats.guest(virtual_time),
            "host": {"wall_seconds": wall, **stats.host(), "exits": exits},
        },
    }
