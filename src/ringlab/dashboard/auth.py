"""The dashboard's gate: the same authentication as the API (docs/security.md).

With an operator token (``ringlab up --token``, ``RINGLAB_TOKEN``) the page asks for it once and
keeps a session cookie (random, HttpOnly, SameSite=Strict, forgotten after ``SESSION_SECONDS``
or at logout); a script may send ``Authorization: Bearer TOKEN`` instead. The token is compared
as its SHA-256, in constant time, as the services compare it. Without one (a deployment whose
API is open to whoever reaches it) the page is open too."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time

__all__ = ["COOKIE", "SESSION_SECONDS", "Gate"]

COOKIE = "ringlab_session"
SESSION_SECONDS = 12 * 3600.0
MAX_SESSIONS = 1000


def digest(token: str) -> str:
    """A token as the services keep it (``ringlab.store.credentials.digest``): its SHA-256."""
    return hashlib.sha256(token.encode()).hexdigest()


class Gate:
    def __init__(self, token: str = "") -> None:
        self._digest = digest(token) if token else ""
        self._sessions: dict[str, float] = {}
        self._lock = threading.Lock()

    @property
    def required(self) -> bool:
        return bool(self._digest)

    def token_ok(self, token: str) -> bool:
        return not self.required or hmac.compare_digest(digest(token), self._digest)

    def open_session(self) -> str:
        session = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            self._sessions = {k: t for k, t in self._sessions.items() if t > now}
            if len(self._sessions) >= MAX_SESSIONS:  # the oldest goes
                del self._sessions[min(self._sessions, key=self._sessions.__getitem__)]
            self._sessions[session] = now + SESSION_SECONDS
        return session

    def close_session(self, session: str) -> None:
        with self._lock:
            self._sessions.pop(session, None)

    def allows(self, *, session: str | None, bearer: str | None) -> bool:
        """Whether a request with this cookie and this ``Authorization: Bearer`` value may pass."""
        if not self.required:
            return True
        if bearer is not None and self.token_ok(bearer):
            return True
        if not session:
            return False
        with self._lock:
            expires = self._sessions.get(session)
            if expires is None:
                return False
            if expires <= time.monotonic():
                del self._sessions[session]
                return False
            return True
