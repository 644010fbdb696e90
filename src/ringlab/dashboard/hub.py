"""The live state the pages read: the hypervisor's statistics polled every ``interval`` seconds
(with the exit rates between two polls) and its event stream followed (the timeline of slices).

Kept only while someone watches: the first page to connect starts the polling and the stream,
and they stop ``linger`` seconds after the last one left, so that a dashboard nobody looks at
costs the deployment nothing (no stream slot held, no GetStats). One poll and one stream serve
every page."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from ringlab.dashboard.model import Timeline, with_rates

__all__ = ["RATE_WINDOW", "Hub", "Source"]

RATE_WINDOW = 5.0
"""Exit rates are the exits of about the last this many seconds, per second."""


class Stream(Protocol):
    def __iter__(self) -> Any: ...
    def cancel(self) -> None: ...


class Source(Protocol):
    target: str

    def stats(self) -> dict[str, Any]: ...
    def events(self, after: str = "") -> Stream: ...


class Hub:
    def __init__(
        self,
        source: Source,
        *,
        interval: float = 1.0,
        linger: float = 30.0,
        window: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.source = source
        self.interval = interval
        self.linger = linger
        self.clock = clock
        self.timeline = Timeline(window=window)
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.version = 0
        self.stats: dict[str, Any] = {"vms": [], "pcpus": []}
        self.error: str | None = None
        self.events_error: str | None = None
        self.polled_at = 0.0
        self._watchers = 0
        self._last_watch = 0.0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._stream: Stream | None = None
        self._cursor = ""
        self._poller: threading.Thread | None = None
        self._follower: threading.Thread | None = None

    # -- watchers ------------------------------------------------------------------------------------
    def watch(self) -> None:
        """A page started watching: start (or keep) polling."""
        with self.lock:
            self._watchers += 1
            self._last_watch = time.monotonic()
            if self._poller is None or not self._poller.is_alive():
                self._poller = threading.Thread(target=self._poll_loop, name="dashboard-poll", daemon=True)
                self._poller.start()
        self._wake.set()

    def unwatch(self) -> None:
        with self.lock:
            self._watchers = max(0, self._watchers - 1)
            self._last_watch = time.monotonic()

    def _active(self) -> bool:
        with self.lock:
            return self._watchers > 0 or time.monotonic() - self._last_watch < self.linger

    def poke(self) -> None:
        """Poll now (something just changed: a VM was created, paused, ...)."""
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._end_stream()
        with self.changed:
            self.changed.notify_all()
        for thread in (self._poller, self._follower):
            if thread is not None:
                thread.join(timeout=5)

    # -- the poll ------------------------------------------------------------------------------------
    def _poll_loop(self) -> None:
        # Rates are taken over the last RATE_WINDOW seconds of polls: a VM's counts move when its
        # slice commits (a stretched slice commits a few times a second), so one interval alone
        # would read 0, then a burst.
        history: deque[tuple[float, list[dict[str, Any]]]] = deque()
        while not self._stop.is_set():
            if not self._active():
                # Nobody watches: end the stream (again, should the follower have opened one
                # between its look and the cancel), then stop, unless a page came back meanwhile.
                follower = self._follower
                while follower is not None and follower.is_alive() and not self._active():
                    self._end_stream()
                    follower.join(0.5)
                with self.lock:
                    if not (self._watchers > 0 or time.monotonic() - self._last_watch < self.linger):
                        self._poller = None
                        return
            self._ensure_follower()
            try:
                stats = self.source.stats()
                error = None
            except Exception as exc:  # a SourceError: shown on the page, polled again
                stats, error = None, getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            now = time.monotonic()
            with self.changed:
                if stats is not None:
                    while len(history) > 1 and now - history[1][0] >= RATE_WINDOW:
                        history.popleft()
                    taken, previous = history[0] if history else (now, None)
                    with_rates(stats["vms"], previous, now - taken)
                    history.append((now, stats["vms"]))
                    self.stats = stats
                    self.polled_at = self.clock()
                self.error = error
                self.version += 1
                self.changed.notify_all()
            self._wake.wait(self.interval)
            self._wake.clear()

    # -- the event stream ----------------------------------------------------------------------------
    def _ensure_follower(self) -> None:
        with self.lock:
            if self._follower is not None and self._follower.is_alive():
                return
            self._follower = threading.Thread(target=self._follow, name="dashboard-events", daemon=True)
            self._follower.start()

    def _follow(self) -> None:
        while not self._stop.is_set() and self._active():
            stream = self.source.events(self._cursor)
            with self.lock:
                self._stream = stream
            try:
                for event in stream:
                    with self.changed:
                        self._cursor = event.get("cursor", self._cursor)
                        self.events_error = None
                        if self.timeline.feed(event):
                            self.version += 1
                            self.changed.notify_all()
            except Exception as exc:  # a SourceError: said on the page, followed again
                with self.changed:
                    self.events_error = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
                    self.timeline.forget_running()
                    self.version += 1
                    self.changed.notify_all()
                self._stop.wait(1.0)
            finally:
                with self.lock:
                    self._stream = None
        with self.lock:
            self._cursor = ""  # back later: from then on, not everything since
            self.timeline.forget_running()

    def _end_stream(self) -> None:
        with self.lock:
            stream = self._stream
        if stream is not None:
            stream.cancel()

    # -- what a page reads ---------------------------------------------------------------------------
    def wait_change(self, version: int, timeout: float) -> int:
        """Block until the version differs from ``version`` (or ``timeout``); the version now."""
        with self.changed:
            if self.version == version:
                self.changed.wait(timeout)
            return self.version

    def wait_polled(self, timeout: float) -> None:
        """Block until a poll has answered (or failed), at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not self.polled_at and self.error is None and (left := deadline - time.monotonic()) > 0:
                self.changed.wait(left)

    def view(self, since: int) -> tuple[dict[str, Any], int]:
        """What the page draws: the VMs and pCPUs, the slices after ``since`` (a sequence number
        the page got from an earlier view), what runs now, any error; and the new ``since``."""
        with self.lock:
            now = self.clock()
            doc = {
                "time": now,
                "polled_at": self.polled_at,
                "target": self.source.target,
                "vms": self.stats["vms"],
                "pcpus": self.stats["pcpus"],
                "slices": self.timeline.since(since),
                "running": [{"pcpu": p, **r} for p, r in sorted(self.timeline.running.items())],
                "window": self.timeline.window,
                "error": self.error,
                "events_error": self.events_error,
            }
            return doc, self.timeline.last_seq
