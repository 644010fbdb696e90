"""A real Redis for the runtime's tests (the store's fixtures: tests/store/conftest.py)."""

from __future__ import annotations

from tests.store.conftest import redis_server, state

__all__ = ["redis_server", "state"]
