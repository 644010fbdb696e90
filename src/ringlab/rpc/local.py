"""A whole deployment on one machine: a real Redis, N cpu services and the hypervisor, each its
own process on loopback (``ringlab up``, ``ringlab demo``, the services benchmark).

Every service writes its output (stdout and stderr: its log lines) to its own file in the
deployment's state folder, ``STATE/cpu0.log`` ... ``STATE/hypervisor.log``, never into the
terminal of whoever started it; ``echo=True`` (``ringlab up --verbose``) copies the lines to
stderr as well, each prefixed with its service.  Without a state folder the logs go to a
temporary folder that ``stop()`` removes.  A service that fails to start raises
:class:`DeploymentFailed` with the last lines of its log.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ringlab.errors import DeploymentFailed
from ringlab.store import LocalRedis
from ringlab.store.server import free_port

__all__ = ["LocalDeployment", "default_state_dir", "log_tail"]

TAIL_LINES = 15
"""How many lines of a failed service's log its error shows."""

_ANY_HOST = ("", "0.0.0.0", "::", "[::]")


def default_state_dir(port: int) -> Path:
    """``$XDG_STATE_HOME/ringlab/PORT``, else ``~/.local/state/ringlab/PORT``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "ringlab" / str(port)


def log_tail(path: Path, lines: int = TAIL_LINES, prefix: str = "  | ") -> str:
    """The last ``lines`` lines of ``path``, each after ``prefix`` (quoted, so that they read as
    the log's, not as this program's own output); "" when there is none."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            tail = [line.rstrip("\n") for line in deque(f, maxlen=lines)]
    except OSError:
        return ""
    return "\n".join(prefix + line for line in tail)


@dataclass
class Service:
    """One service process and where its output goes."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    echo: threading.Thread | None = None


@dataclass
class LocalDeployment:
    redis_url: str
    hypervisor: str
    cpus: list[str]
    token: str = ""
    redis: LocalRedis | None = None
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    state_dir: Path | None = None
    echo: bool = False
    _own_state: bool = False

    @classmethod
    def start(
        cls,
        *,
        redis_url: str | None = None,
        pcpus: int = 1,
        hypervisor_port: int = 0,
        hypervisor_host: str = "127.0.0.1",
        token: str = "",
        slice: int | None = None,
        timeout: float = 30.0,
        state_dir: Path | str | None = None,
        echo: bool = False,
    ) -> LocalDeployment:
        """Start Redis (unless ``redis_url`` names one), ``pcpus`` cpu services and the hypervisor
        on ``hypervisor_host:hypervisor_port`` (0: a free port), and wait until each serves.

        Logs go to ``state_dir`` (created if needed; default: a temporary folder removed by
        ``stop()``), and with ``echo`` to stderr as well.  Raises DeploymentFailed when a service
        does not start."""
        if pcpus < 1:
            raise ValueError(f"a deployment needs at least one pCPU, got pcpus={pcpus}")
        own = state_dir is None
        folder = Path(tempfile.mkdtemp(prefix="ringlab-state-")) if own else Path(state_dir or ".")
        folder.mkdir(parents=True, exist_ok=True)
        d = cls("", "", [], token, None, state_dir=folder, echo=echo, _own_state=own)
        try:
            d.redis = None if redis_url else LocalRedis.start()
            url = redis_url or (d.redis.url if d.redis else "")
            d.redis_url = url
            env = dict(os.environ, RINGLAB_REDIS=url, RINGLAB_TOKEN=token, PYTHONUNBUFFERED="1")
            if redis_url is None:
                _flush(url)
            for n in range(pcpus):
                port = free_port()
                d.cpus.append(f"127.0.0.1:{port}")
                d._spawn(
                    f"cpu{n}", "ringlab_cpu", ["--listen", f"127.0.0.1:{port}", "--pcpu", f"pcpu{n}"], env
                )
            port = hypervisor_port or free_port()
            listen = f"{hypervisor_host}:{port}"
            d.hypervisor = f"{'127.0.0.1' if hypervisor_host in _ANY_HOST else hypervisor_host}:{port}"
            extra = ["--slice", str(slice)] if slice else []
            d._spawn("hypervisor", "ringlab_hypervisor", ["--listen", listen, *extra], env)
            for target, service in zip([*d.cpus, d.hypervisor], d.services, strict=True):
                d._wait_serving(target, service, timeout)
        except DeploymentFailed:
            d._own_state = False  # keep the logs the error names, even in a temporary folder
            d.stop()
            raise
        except BaseException:
            d.stop()
            raise
        return d

    @property
    def logs(self) -> dict[str, Path]:
        """Each service's log file, by service name (cpu0, cpu1, ..., hypervisor)."""
        return {s.name: s.log for s in self.services}

    def _spawn(self, name: str, module: str, args: list[str], env: dict[str, str]) -> None:
        assert self.state_dir is not None
        log = self.state_dir / f"{name}.log"
        with open(log, "ab") as f:
            f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {module} {' '.join(args)}\n".encode())
        command = [sys.executable, "-m", module, *args]
        if not self.echo:
            with open(log, "ab") as out:
                process = subprocess.Popen(
                    command, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
                )
            self.services.append(Service(name, process, log))
        else:
            process = subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            assert process.stdout is not None
            thread = threading.Thread(
                target=_copy_lines, args=(process.stdout, log, name), name=f"log-{name}", daemon=True
            )
            thread.start()
            self.services.append(Service(name, process, log, thread))
        self.processes.append(process)

    def failed(self) -> Service | None:
        """The first service that has exited, if any."""
        return next((s for s in self.services if s.process.poll() is not None), None)

    def describe_exit(self, service: Service, what: str = "exited") -> str:
        """``the hypervisor service exited with status 1; its log (PATH) ends with: ...``."""
        if service.echo is not None:
            service.echo.join(timeout=2)  # the last lines are in the file
        tail = log_tail(service.log)
        status = service.process.returncode
        where = f"its log ({service.log})"
        said = f" ends with:\n{tail}" if tail else " is empty"
        return f"the {service.name} service {what} with status {status}; {where}{said}"

    def _wait_serving(self, target: str, service: Service, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                failed = self.failed()
                if failed is not None:
                    raise DeploymentFailed(self.describe_exit(failed, "exited while starting"))
                try:
                    # types-grpcio-health-checking declares HealthStub without its methods
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)  # type: ignore[attr-defined]
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    tail = log_tail(service.log)
                    raise DeploymentFailed(
                        f"the {service.name} service ({target}) did not report SERVING within "
                        f"{timeout:.0f} s; its log ({service.log})"
                        + (f" ends with:\n{tail}" if tail else " is empty")
                    )
                time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM every service (each stops gracefully), then the Redis server; a temporary state
        folder is removed."""
        for p in reversed(self.processes):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.processes):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for s in self.services:
            if s.echo is not None:
                s.echo.join(timeout=2)
        self.processes.clear()
        self.services.clear()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
        if self._own_state and self.state_dir is not None:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            self._own_state = False

    def __enter__(self) -> LocalDeployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _copy_lines(source: IO[bytes], log: Path, name: str) -> None:
    """Copy a service's output to its log file and, prefixed with its name, to stderr."""
    with open(log, "ab") as out:
        for line in iter(source.readline, b""):
            out.write(line)
            out.flush()
            text = line.decode("utf-8", errors="replace").rstrip("\n")
            with contextlib.suppress(OSError, ValueError):  # stderr closed under us: the file has it
                print(f"[{name}] {text}", file=sys.stderr, flush=True)
    source.close()


def _flush(url: str) -> None:
    from ringlab.store import connect

    client = connect(url)
    client.flushdb()
    client.close()
