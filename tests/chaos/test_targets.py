"""The chaos runner's fault injection meets the engine's transient refusals: a container the
cgroup freezer could not stop this time ('unable to freeze', seen once in CI on a loaded host)
is paused on a later try; anything else is raised at once."""

from __future__ import annotations

import pytest

from ringlab.cli.chaos.targets import FREEZE_FAILED, retry_transient


class Refusals:
    """A call that fails with ``message`` ``times`` times, then answers ``done``."""

    def __init__(self, times: int, message: str) -> None:
        self.left, self.message, self.calls = times, message, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.left:
            self.left -= 1
            raise RuntimeError(self.message)
        return "done"


def test_a_pause_the_freezer_refused_is_tried_again_until_it_holds() -> None:
    call = Refusals(
        2, f"500 server error: cannot pause container: oci runtime pause failed: {FREEZE_FAILED}: unknown"
    )
    assert retry_transient(call, FREEZE_FAILED, delay=0) == "done"
    assert call.calls == 3


def test_a_freezer_that_keeps_refusing_is_an_error_after_the_last_try() -> None:
    call = Refusals(10, f"oci runtime pause failed: {FREEZE_FAILED}: unknown")
    with pytest.raises(RuntimeError, match=FREEZE_FAILED):
        retry_transient(call, FREEZE_FAILED, attempts=4, delay=0)
    assert call.calls == 4


def test_any_other_refusal_is_raised_at_once() -> None:
    call = Refusals(1, "404 no such container")
    with pytest.raises(RuntimeError, match="no such container"):
        retry_transient(call, FREEZE_FAILED, delay=0)
    assert call.calls == 1
