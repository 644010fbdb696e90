"""The Redis server ``ringlab up`` runs (``LocalRedis``): waiting for it never raises."""

from __future__ import annotations

import os
import signal

from ringlab.store.server import LocalRedis


def test_waiting_for_a_redis_that_does_not_answer_says_false_and_raises_nothing() -> None:
    """A stopped server (as a busy machine or a pause makes it) makes PING time out, which
    redis-py raises as TimeoutError, not ConnectionError: once it crashed ``ringlab up``'s
    supervisor ("internal error: TimeoutError") while it waited for a restarted Redis."""
    server = LocalRedis.start()
    try:
        os.kill(server.pid, signal.SIGSTOP)
        try:
            assert server.wait_ready(0.5) is False
        finally:
            os.kill(server.pid, signal.SIGCONT)
        assert server.wait_ready(60) is True
    finally:
        server.stop()
