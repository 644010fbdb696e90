"""A whole deployment on one machine: a real Redis, N cpu services and the hypervisor, each its
own process on loopback (``ringlab up``, ``ringlab demo``, the services benchmark).

Every service writes its output (stdout and stderr: its log lines) to its own file in the
deployment's state folder, ``STATE/redis.log``, ``STATE/cpu0.log`` ... ``STATE/hypervisor.log``,
never into the terminal of whoever started it; ``echo=True`` (``ringlab up --verbose``) copies the
cpu and hypervisor lines to stderr as well, each prefixed with its service.  Without a state
folder the logs go to a temporary folder that ``stop()`` removes.  A service that fails to start
raises :class:`DeploymentFailed` with the last lines of its log.

``ringlab up`` asks for more (``persist=True`` and ``supervise()``):

- Redis keeps an append-only file in ``STATE/redis/`` (fsync every second), so the VMs survive
  Redis, and ``up`` itself, being stopped or killed: a deployment started again on the same
  folder resumes them (``fresh=True`` discards them instead).
- ``supervise()``, called in a loop, restarts a service that exited (Redis first: the others
  need it) on the same address, as compose's ``restart: unless-stopped`` does, and gives up
  when one exits more than ``RestartPolicy.max_restarts`` times within ``window`` seconds.  A
  paused service (SIGSTOP) has not exited: it is left alone.
- ``STATE/services.json`` (``SERVICES_JSON``) says which process is which, for fault-injection
  tools; it is rewritten atomically at start and after every restart, and removed at ``stop()``.
- A state folder is used by one deployment at a time (a lock, ``STATE/up.lock``); the services
  an earlier deployment left running there (its supervisor was killed) are stopped first.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ringlab.errors import DeploymentFailed
from ringlab.rpc.metrics import METRICS_PORT_ENV, OFF, PORT_OFFSET
from ringlab.store import LocalRedis
from ringlab.store.credentials import (
    SECRET_FILE,
    DeploymentSecrets,
    register_login,
    remove_login,
    write_private,
)
from ringlab.store.server import free_port

__all__ = [
    "LOCK_FILE",
    "REDIS_DIR",
    "SECRETS_DIR",
    "SERVICES_JSON",
    "LocalDeployment",
    "RestartPolicy",
    "Service",
    "default_state_dir",
    "log_tail",
]

START_SECONDS = 120.0
"""How long a starting (or restarted) service may take to report SERVING.  A safety net for a
hung service, not a speed requirement: one that dies is seen at once, and on a machine whose
cores are all busy, importing grpc and the machine alone has taken 27 s."""

TAIL_LINES = 15
"""How many lines of a failed service's log its error shows."""
SERVICES_JSON = "services.json"
"""The deployment's record in its state folder (see ``LocalDeployment.record``)."""
REDIS_DIR = "redis"
"""Where, in the state folder, a persistent deployment's Redis keeps its append-only file."""
SECRETS_DIR = "secrets"
"""Where, in the state folder, a secure deployment keeps its secret and each service's credentials."""
LOCK_FILE = "up.lock"
"""Held (flock) by the deployment using the state folder; holds its pid."""
STOP_SECONDS = 20.0
"""How long the services (all of them together, Redis apart) have to stop after SIGTERM before
those still running are killed.  A safety net sized for a busy machine, not a speed requirement:
a service's graceful stop lets calls in flight finish for up to 5 s, then its interpreter exits,
which on two cores with a load of 15-30 can take seconds more; killing one instead loses nothing
(its state is in Redis), it is only less tidy."""

_ANY_HOST = ("", "0.0.0.0", "::", "[::]")

Say = Callable[[str], None]


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


@dataclass(frozen=True)
class RestartPolicy:
    """When the supervisor restarts a service that exited, and when it gives up (as compose's
    ``restart_policy``: ``max_attempts`` within ``window``).

    A service that exits more than ``max_restarts`` times within ``window`` seconds is not
    restarted again: the deployment gives up (0: the first exit gives up, as ``up`` did before it
    restarted anything).  The first restart within the window is immediate; each further one
    waits twice as long as the one before, from ``first_delay`` up to ``max_delay`` seconds."""

    max_restarts: int = 5
    window: float = 30.0
    first_delay: float = 0.25
    max_delay: float = 4.0

    def delay(self, exits: int) -> float:
        """How long to wait before restarting a service that exited ``exits`` times in the window."""
        if exits <= 1:
            return 0.0
        return float(min(self.first_delay * 2.0 ** (exits - 2), self.max_delay))


@dataclass
class Service:
    """One service process, where it serves and where its output goes."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    echo: threading.Thread | None = None
    kind: str = ""
    """redis, cpu or hypervisor."""
    address: str = ""
    """HOST:PORT where it serves (the same after every restart)."""
    command: list[str] = field(default_factory=list)
    """Its command line (empty for Redis: ``LocalRedis`` starts it)."""
    env: dict[str, str] | None = None
    restarts: int = 0
    exits: deque[float] = field(default_factory=deque)
    """When it exited (monotonic seconds), those within the restart policy's window."""
    due: float | None = None
    """When the restart of a service found exited is due (None: it is running, or not seen exited)."""
    metrics: str = ""
    """HOST:PORT where it serves ``/metrics`` ("" for none: Redis, or metrics off)."""


@dataclass
class LocalDeployment:
    redis_url: str
    hypervisor: str
    cpus: list[str]
    token: str = ""
    redis: LocalRedis | None = None
    services: list[Service] = field(default_factory=list)
    state_dir: Path | None = None
    echo: bool = False
    _own_state: bool = False
    persist: bool = False
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    timeout: float = START_SECONDS
    _lock: IO[str] | None = None
    _recorded: bool = False
    secrets: DeploymentSecrets | None = field(default=None, repr=False)
    """The deployment's secrets (``secure=True``): every credential derives from them."""
    _login: tuple[str, int] | None = None

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
        timeout: float = START_SECONDS,
        state_dir: Path | str | None = None,
        echo: bool = False,
        persist: bool = False,
        fresh: bool = False,
        policy: RestartPolicy | None = None,
        say: Say | None = None,
        secure: bool = False,
        rotate: bool = False,
    ) -> LocalDeployment:
        """Start Redis (unless ``redis_url`` names one), ``pcpus`` cpu services and then the
        hypervisor on ``hypervisor_host:hypervisor_port`` (0: a free port), and wait until each
        serves; then write ``STATE/services.json``.

        Logs go to ``state_dir`` (created if needed; default: a temporary folder removed by
        ``stop()``), and with ``echo`` to stderr as well.  With ``persist`` Redis keeps its data
        in ``STATE/redis/`` and loads what an earlier deployment left there; ``fresh`` deletes
        that first.  A given ``state_dir`` is locked for this deployment; services an earlier
        one left running there are stopped first (``say`` tells about it).  ``secure``: each
        role its own credentials, Redis locked down (the module's docstring); ``token`` is then
        the operator's (none: the operator API stays open); ``rotate``: a new deployment secret
        (every credential changes) instead of the one the folder keeps.  Raises DeploymentFailed when a
        service does not start or the folder is in use."""
        if pcpus < 1:
            raise ValueError(f"a deployment needs at least one pCPU, got pcpus={pcpus}")
        own = state_dir is None
        folder = Path(tempfile.mkdtemp(prefix="ringlab-state-")) if own else Path(state_dir or ".")
        folder.mkdir(parents=True, exist_ok=True)
        d = cls("", "", [], token, None, state_dir=folder, echo=echo, _own_state=own, persist=persist)
        d.policy = policy or RestartPolicy()
        d.timeout = timeout
        try:
            if not own:
                d._lock_folder()
                _stop_leftovers(folder, say or (lambda _text: None))
            if secure:
                d.secrets = d._load_secrets(token, rotate=rotate)
            if redis_url is None:
                d._start_redis(fresh=fresh)
            url = redis_url or (d.redis.url if d.redis else "")
            d.redis_url = url
            env = dict(os.environ, RINGLAB_REDIS=url, RINGLAB_TOKEN=token, PYTHONUNBUFFERED="1")
            env.pop("RINGLAB_CREDENTIALS", None)
            cpu_env = hypervisor_env = env
            if d.secrets is not None:
                cpu_env = d._role_env(env, "cpu", locked=redis_url is None)
                hypervisor_env = d._role_env(env, "hypervisor", locked=redis_url is None)
            # Metrics (docs/metrics.md): each cpu service on a free port of its own (they share the
            # host, so RINGLAB_METRICS_PORT, if set, is the hypervisor's alone), the hypervisor on
            # RINGLAB_METRICS_PORT, else its port + 1000; "off" turns every one off.
            metrics = os.environ.get(METRICS_PORT_ENV, "").strip()
            metrics_off = metrics.lower() in OFF
            for n in range(pcpus):
                address = f"127.0.0.1:{free_port()}"
                d.cpus.append(address)
                cpu_metrics = "" if metrics_off else f"127.0.0.1:{free_port()}"
                d._spawn(
                    f"cpu{n}",
                    "cpu",
                    address,
                    [
                        "--listen",
                        address,
                        "--pcpu",
                        f"pcpu{n}",
                        "--metrics-port",
                        cpu_metrics.rpartition(":")[2] or "off",
                    ],
                    cpu_env,
                    metrics=cpu_metrics,
                )
            # The hypervisor starts once every cpu service has registered its pCPU (they do before
            # they serve): it must not see the address a pCPU of the same name had in an earlier
            # deployment on this folder, whose registration may not have expired yet.
            for service in d.services:
                if service.kind == "cpu":
                    d._wait_serving(service.address, service, timeout)
            port = hypervisor_port or free_port()
            listen = f"{hypervisor_host}:{port}"
            d.hypervisor = f"{'127.0.0.1' if hypervisor_host in _ANY_HOST else hypervisor_host}:{port}"
            extra = ["--slice", str(slice)] if slice else []
            if metrics:
                extra += ["--metrics-port", metrics]
            metrics_port = None if metrics_off else int(metrics) if metrics.isdigit() else port + PORT_OFFSET
            hypervisor_metrics = (
                f"{d.hypervisor.rpartition(':')[0]}:{metrics_port}"
                if metrics_port and metrics_port <= 65535
                else ""
            )
            d._spawn(
                "hypervisor",
                "hypervisor",
                d.hypervisor,
                ["--listen", listen, *extra],
                hypervisor_env,
                metrics=hypervisor_metrics,
            )
            d._wait_serving(d.hypervisor, d.services[-1], timeout)
            d.write_record()
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
        """Each service's log file, by service name (redis, cpu0, cpu1, ..., hypervisor)."""
        return {s.name: s.log for s in self.services}

    @property
    def processes(self) -> list[subprocess.Popen[bytes]]:
        """Every service's current process (Redis's included, when started here)."""
        return [s.process for s in self.services]

    # -- starting ----------------------------------------------------------------------------------
    def _load_secrets(self, operator_token: str, *, rotate: bool = False) -> DeploymentSecrets:
        """The secret kept in the state folder (created the first time, or anew with ``rotate``;
        a temporary folder's is thrown away with it)."""
        assert self.state_dir is not None
        folder = self.state_dir / SECRETS_DIR
        try:
            if rotate:
                (folder / SECRET_FILE).unlink(missing_ok=True)
            return DeploymentSecrets.load_or_create(folder, operator_token)
        except OSError as exc:
            raise DeploymentFailed(
                f"cannot keep the deployment's secrets in {folder}: {exc.strerror}"
            ) from None

    def _role_env(self, env: dict[str, str], role: str, *, locked: bool) -> dict[str, str]:
        """The environment of a ``role`` service: its credentials file, and not the operator's
        token (it gets the token's digest in that file).  ``locked``: its Redis user too."""
        assert self.secrets is not None and self.state_dir is not None
        path = self.state_dir / SECRETS_DIR / f"{role}.json"
        write_private(path, self.secrets.for_role(role, redis=locked).to_json())
        out = {k: v for k, v in env.items() if k != "RINGLAB_TOKEN"}
        out["RINGLAB_CREDENTIALS"] = str(path)
        return out

    def credentials_file(self, role: str, *, guest_name: str = "") -> Path:
        """A credentials file for one more service of ``role`` (a guest: the one owning the VM
        ``guest_name``), 0600 in the state folder; DeploymentFailed when not ``secure``."""
        if self.secrets is None or self.state_dir is None:
            raise DeploymentFailed("this deployment was not started with per-role credentials (secure=True)")
        suffix = f"-{guest_name}" if guest_name else ""
        path = self.state_dir / SECRETS_DIR / f"{role}{suffix}.json"
        locked = self.redis is not None
        write_private(path, self.secrets.for_role(role, guest_name=guest_name, redis=locked).to_json())
        return path

    def _lock_folder(self) -> None:
        import fcntl

        assert self.state_dir is not None
        path = self.state_dir / LOCK_FILE
        lock = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held until stop()
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            lock.close()
            raise DeploymentFailed(
                f"the data folder {self.state_dir} is in use by another 'ringlab up' (pid {holder}): "
                "stop that one first, or give this one another folder with --data DIR"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        self._lock = lock

    def _start_redis(self, *, fresh: bool) -> None:
        assert self.state_dir is not None
        data = self.state_dir / REDIS_DIR if self.persist else None
        if data is not None and fresh:
            shutil.rmtree(data, ignore_errors=True)
        log = self.state_dir / "redis.log"
        _log_line(log, "redis-server" + (f" (data: {data})" if data else ""))
        try:
            self.redis = LocalRedis.start(data_dir=data, log=log, timeout=self.timeout, secrets=self.secrets)
        except FileNotFoundError as exc:  # no redis-server: the message says where to get one
            raise DeploymentFailed(str(exc)) from None
        except RuntimeError:
            tail = log_tail(log)
            raise DeploymentFailed(
                f"the redis service did not start (it exited, or did not answer within {self.timeout:.0f} s); "
                f"its log ({log})" + (f" ends with:\n{tail}" if tail else " is empty")
            ) from None
        self.services.append(
            Service("redis", self.redis.process, log, kind="redis", address=f"127.0.0.1:{self.redis.port}")
        )
        if self.secrets is not None:
            register_login("127.0.0.1", self.redis.port, "observer", self.secrets.redis_password("observer"))
            self._login = ("127.0.0.1", self.redis.port)

    def _spawn(
        self, name: str, kind: str, address: str, args: list[str], env: dict[str, str], *, metrics: str = ""
    ) -> None:
        command = [sys.executable, "-m", f"ringlab_{kind}", *args]
        service = Service(
            name,
            _NOT_STARTED,
            self._log(name),
            kind=kind,
            address=address,
            command=command,
            env=env,
            metrics=metrics,
        )
        with _signals_held():  # never a process started and not in the list stop() goes through
            self._launch(service)
            self.services.append(service)

    def _log(self, name: str) -> Path:
        assert self.state_dir is not None
        return self.state_dir / f"{name}.log"

    def _launch(self, service: Service) -> None:
        """Start ``service``'s process (again), its output to its log (and to stderr with echo)."""
        _log_line(service.log, " ".join(service.command[2:]))  # the module and its arguments
        if not self.echo:
            with open(service.log, "ab") as out:
                service.process = subprocess.Popen(
                    service.command,
                    env=service.env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            service.echo = None
            return
        service.process = subprocess.Popen(
            service.command,
            env=service.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert service.process.stdout is not None
        service.echo = threading.Thread(
            target=_copy_lines,
            args=(service.process.stdout, service.log, service.name),
            name=f"log-{service.name}",
            daemon=True,
        )
        service.echo.start()

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

    # -- supervising -------------------------------------------------------------------------------
    def supervise(self, say: Say) -> Service | None:
        """One round of the supervisor: restart every service that has exited, Redis first (the
        others need it: its restart waits until it answers), on the same address, as the restart
        policy says; ``say`` tells about each restart (also written to the service's log), and
        ``STATE/services.json`` is rewritten.  Returns the service it gives up on (it exited too
        often: ``giving_up()`` says so), else None.  Call it every half second or so."""
        restarted = False
        try:
            for service in self.services:
                status = service.process.poll()
                if status is None:
                    continue
                now = time.monotonic()
                if service.due is None:  # newly seen exited
                    service.exits.append(now)
                    while now - service.exits[0] > self.policy.window:
                        service.exits.popleft()
                    if len(service.exits) > self.policy.max_restarts:
                        return service
                    service.due = now + self.policy.delay(len(service.exits))
                if now < service.due:
                    continue
                self._restart(service, status, say)
                restarted = True
        finally:
            if restarted:
                self.write_record()
        return None

    def giving_up(self, service: Service) -> str:
        """Why the supervisor gave up on ``service``: ``the cpu0 service exited 6 times within 30 s
        (at most 5 restarts), the last time with status 1; its log (PATH) ends with: ...``."""
        exits = len(service.exits)
        if self.policy.max_restarts == 0:
            return self.describe_exit(service)
        what = (
            f"exited {exits} times within {self.policy.window:g} s (at most {self.policy.max_restarts} "
            "restarts), the last time"
        )
        return self.describe_exit(service, what)

    def _restart(self, service: Service, status: int, say: Say) -> None:
        service.due = None
        service.restarts += 1
        message = f"{service.name} exited with status {status}; restarted (restart {service.restarts})"
        _log_line(service.log, message)
        if service.kind == "redis":
            assert self.redis is not None
            with _signals_held():
                self.redis.respawn()
                service.process = self.redis.process
            say(message)
            if not self.redis.wait_ready(self.timeout) and self.redis.process.poll() is None:
                say(f"redis does not answer yet, {self.timeout:.0f} s after its restart (loading its data?)")
            return
        if service.echo is not None:
            service.echo.join(timeout=2)  # the end of the old process's output, before the new one's
        with _signals_held():
            self._launch(service)
        say(message)

    # -- the record ----------------------------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        """What ``STATE/services.json`` holds: the hypervisor's address, the Redis URL, and each
        service (Redis first, when started here; then cpu0..., the hypervisor) with its name,
        kind, current pid, address, where it serves ``/metrics`` (HOST:PORT, "" for none),
        restarts so far, log and command line; and the pid of the process supervising them
        (``ringlab up``)."""
        return {
            "hypervisor": self.hypervisor,
            "redis": self.redis_url,
            "services": [
                {
                    "name": s.name,
                    "kind": s.kind,
                    "pid": s.process.pid,
                    "address": s.address,
                    "metrics": s.metrics,
                    "restarts": s.restarts,
                    "log": str(s.log),
                    "command": s.command if s.kind != "redis" or self.redis is None else self.redis.command,
                }
                for s in self.services
            ],
            "supervisor_pid": os.getpid(),
            "state_dir": str(self.state_dir),
            "persistent": self.persist,
        }

    def write_record(self) -> None:
        """Rewrite ``STATE/services.json`` atomically (a reader sees the old file or the new one)."""
        assert self.state_dir is not None
        path = self.state_dir / SERVICES_JSON
        tmp = path.with_name(f".{SERVICES_JSON}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.record(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        self._recorded = True

    # -- stopping ------------------------------------------------------------------------------------
    def stop(self) -> None:
        """SIGTERM every service (each stops gracefully; a paused one is continued first), then
        the Redis server (which writes its append-only file out); services.json is removed, the
        folder unlocked, and a temporary state folder removed."""
        if self._recorded and self.state_dir is not None:
            with contextlib.suppress(OSError):
                (self.state_dir / SERVICES_JSON).unlink()
            self._recorded = False
        for s in self.services:  # a paused service (Redis included: the others need it) goes on
            if s.process.poll() is None:
                s.process.send_signal(signal.SIGCONT)
        others = [s.process for s in self.services if s.kind != "redis"]
        for p in reversed(others):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        # One deadline for all of them (they stop side by side): the stop takes STOP_SECONDS at
        # most, however many services there are (it was that much per service, one after another).
        deadline = time.monotonic() + STOP_SECONDS
        for p in reversed(others):
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for s in self.services:
            if s.echo is not None:
                s.echo.join(timeout=2)
        self.services.clear()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
        if self._login is not None:
            remove_login(*self._login)
            self._login = None
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None
        if self._own_state and self.state_dir is not None:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            self._own_state = False

    def __enter__(self) -> LocalDeployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _NotStarted:
    """The process of a service before its first start."""

    pid = 0
    returncode = None

    def poll(self) -> int | None:
        return None


_NOT_STARTED: Any = _NotStarted()


def _log_line(log: Path, text: str) -> None:
    """A line of the supervisor's own in a service's log: ``--- DATE TIME text``."""
    with open(log, "ab") as f:
        f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n".encode())


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM that arrive inside the block take effect at its end (their handler runs
    then), so that a process is never started without being recorded where ``stop()`` finds it.
    Only in the main thread (the only one that can set handlers); elsewhere nothing is held."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.getsignal(s) for s in held}
    for held_signal in held:
        if previous[held_signal] is not None:
            signal.signal(held_signal, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for held_signal, handler in previous.items():
            if handler is not None:
                signal.signal(held_signal, handler)
        for signum in caught:
            signal.raise_signal(signum)


def _stop_leftovers(folder: Path, say: Say) -> None:
    """Stop the services an earlier deployment on ``folder`` left running (its supervisor was
    killed, so nothing stopped them): each process its services.json names that still runs the
    command recorded there (Linux: /proc/PID/cmdline).  The cpu services and the hypervisor
    first, then Redis, which writes its append-only file out as it stops."""
    try:
        old = json.loads((folder / SERVICES_JSON).read_text(encoding="utf-8"))
        entries = [e for e in old["services"] if isinstance(e, dict)]
    except (OSError, ValueError, KeyError, TypeError):
        return
    left = [e for e in entries if _runs(e)]
    for wave in (
        [e for e in left if e.get("kind") != "redis"],
        [e for e in left if e.get("kind") == "redis"],
    ):
        for entry in wave:
            say(
                f"stopping the {entry.get('name')} service (pid {entry['pid']}) that an earlier "
                f"'ringlab up' on {folder} left running"
            )
            with contextlib.suppress(OSError):
                os.kill(entry["pid"], signal.SIGTERM)
                os.kill(entry["pid"], signal.SIGCONT)
        deadline = time.monotonic() + STOP_SECONDS
        for entry in wave:
            while _runs(entry) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _runs(entry):
                with contextlib.suppress(OSError):
                    os.kill(entry["pid"], signal.SIGKILL)
    with contextlib.suppress(OSError):
        (folder / SERVICES_JSON).unlink()


def _runs(entry: dict[str, Any]) -> bool:
    """Whether the process a services.json entry names still runs its command (a zombie runs
    nothing).  redis-server rewrites its command line as ``EXE HOST:PORT``: that is compared."""
    pid, command = entry.get("pid"), entry.get("command")
    if not isinstance(pid, int) or pid <= 0 or not isinstance(command, list) or not command:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    if entry.get("kind") == "redis":
        return cmdline.rstrip(b"\0 ") == f"{command[0]} {entry.get('address')}".encode()
    return cmdline.split(b"\0")[:-1] == [str(part).encode() for part in command]


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
