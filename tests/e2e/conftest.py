"""Phase timings of the Docker tests, printed in pytest's closing summary (whatever the outcome),
so that CI's log shows how long the engine, the images, compose and the run took."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

REPORTS: list[str] = []


class Timings:
    """Phase durations, in the order they happened."""

    def __init__(self) -> None:
        self.phases: list[tuple[str, float]] = []
        self._t0 = time.monotonic()

    def mark(self, phase: str) -> None:
        """Close the phase that began at the previous mark (or at the start)."""
        now = time.monotonic()
        self.phases.append((phase, now - self._t0))
        self._t0 = now

    def add(self, phase: str, seconds: float) -> None:
        """A phase measured elsewhere (a script's own report), inside the current one."""
        self.phases.append((phase, seconds))

    def report(self) -> str:
        parts = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in self.phases)
        return f"compose e2e phases: {parts}"


@pytest.fixture(scope="module")
def timings() -> Iterator[Timings]:
    t = Timings()
    start = time.monotonic()
    yield t
    REPORTS.append(f"{t.report()}; total {time.monotonic() - start:.1f}s")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in REPORTS:
        terminalreporter.write_line(line)
