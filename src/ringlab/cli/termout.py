"""Terminal output shared by the commands: tables that fit the terminal (and print whole when
piped), and progress on stderr that shows only where a person is watching.

- ``stdout_console()``: on a terminal, its width (tables wrap their cells to fit, never "…");
  piped to a file or another program, wide enough that every table prints at its natural width.
- ``progress(...)``: a rich progress display on stderr, only when stderr is a terminal and the
  caller did not ask for ``--json``; otherwise a no-op, so nothing but the figures reaches a pipe.
- ``spinner(...)``: the same for one long call with no steps to count (it appears only if the
  call is still running after ``delay`` seconds, so short runs do not flicker).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["PIPED_WIDTH", "fit_table", "progress", "spinner", "stderr_console", "stdout_console"]

PIPED_WIDTH = 10_000
"""The width a table may take when stdout is not a terminal: no table of Ringlab comes close."""


def stdout_console() -> Console:
    """A console on stdout: the terminal's width, or ``PIPED_WIDTH`` when stdout is not a terminal."""
    console = Console(file=sys.stdout)
    if not console.is_terminal:
        console = Console(file=sys.stdout, width=PIPED_WIDTH)
    return console


def stderr_console() -> Console:
    return Console(file=sys.stderr)


def compact_table(title: str, columns: list[tuple[str, str]]) -> Table:
    """A compact table (no vertical rules): columns as (header, justify); long cells fold, never "…"."""
    from rich import box

    table = Table(
        title=title,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1, 0, 0),
        title_justify="left",
    )
    for header, justify in columns:
        table.add_column(header, justify=justify, overflow="fold")  # type: ignore[arg-type]
    return table


def fit_table(table: Table) -> Table:
    """Let every column wrap (folding a word too long for its column) instead of cutting it with
    "…", so the table fits any width it is given."""
    for column in table.columns:
        column.overflow = "fold"
    return table


def natural_width(console: Console, table: Table) -> int:
    """How wide ``table`` is when nothing has to wrap."""
    from rich.measure import Measurement

    return Measurement.get(console, console.options.update(width=PIPED_WIDTH), table).maximum


Step = Callable[..., None]


@contextmanager
def progress(description: str, total: float | None, *, enabled: bool = True) -> Iterator[Step]:
    """``with progress("benchmarks", 12) as step: step("syscall under bt")`` advances the bar by one
    (``step(what, advance=0)`` only changes the text, ``step(what, completed=x)`` sets it).
    Shown on stderr only when ``enabled`` and stderr is a terminal; transient."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    err = stderr_console()
    show = enabled and err.is_terminal
    columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn()]
    if isinstance(total, int):  # a count of steps, not a fraction
        columns.append(MofNCompleteColumn())
    columns.append(TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True, disable=not show) as bar:
        task = bar.add_task(description, total=total)

        def step(what: str, advance: float = 1, completed: float | None = None) -> None:
            if completed is not None:
                bar.update(task, description=what, completed=completed)
            else:
                bar.update(task, description=what, advance=advance)

        yield step


@contextmanager
def spinner(description: str, *, enabled: bool = True, delay: float = 1.0) -> Iterator[None]:
    """A spinner with the elapsed time on stderr while the body runs, if it runs longer than
    ``delay`` seconds; only when ``enabled`` and stderr is a terminal."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    err = stderr_console()
    if not (enabled and err.is_terminal):
        yield
        return
    bar = Progress(SpinnerColumn(), TextColumn(description), TimeElapsedColumn(), console=err, transient=True)
    bar.add_task(description, total=None)
    lock = threading.Lock()
    state = {"started": False, "done": False}

    def start() -> None:
        with lock:
            if not state["done"]:
                bar.start()
                state["started"] = True

    timer = threading.Timer(delay, start)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        with lock:
            state["done"] = True
            if state["started"]:
                bar.stop()
