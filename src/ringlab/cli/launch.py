"""Start and remove guest OS instances: as local processes, or as containers through Docker.

An adapter with no domain in it: a launcher runs *a command with an environment under a name* and
can find and remove what it started by that name. Two implementations behind one interface:

- ``ProcessLauncher``: a detached local process (``ringlab up`` and a laptop), recorded in a state
  directory so that another ``ringlab`` invocation can find and stop it.
- ``DockerLauncher``: a container on a running compose deployment's network, started through the
  Docker SDK for Python the way OpenStack's container drivers do. It carries the compose project's
  labels (as a one-off container of the ``guest`` service, like ``docker compose run``), so
  ``docker-compose down`` (1.29) and ``docker compose down --remove-orphans`` (v2, which treats
  its own ``run`` containers so too) remove it with the rest, plus ``ringlab.*`` labels so
  ``ringlab`` finds it by VM name. It runs on the operator's side: no container ever gets the Docker socket.

Engine trouble (no SDK, no engine, no deployment, image missing) becomes a ``LaunchError`` whose
message says what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ringlab.endpoints import DEFAULT_PORTS

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

__all__ = [
    "DockerLauncher",
    "LaunchError",
    "LaunchSpec",
    "Launched",
    "Launcher",
    "ProcessLauncher",
    "guest_spec",
    "make_launcher",
]

LABEL_LAUNCHER = "ringlab.launcher"
LABEL_NAME = "ringlab.vm"
COMPOSE_PROJECT = "com.docker.compose.project"
COMPOSE_SERVICE = "com.docker.compose.service"
GUEST_SECRETS = "/run/ringlab/guest"
"""Where a guest container finds its credentials (the compose file's ``secrets-guest`` volume)."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class LaunchError(RuntimeError):
    """Something a person must fix before a launch (or a removal) can work; the message says what."""


@dataclass(frozen=True)
class LaunchSpec:
    name: str
    """Unique among what this launcher started (the VM's name)."""
    command: Sequence[str]
    """argv; for a container, inside the image (``python -m ringlab_guest``)."""
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Launched:
    name: str
    launcher: str
    ref: str
    """A process id, or a container id."""
    detail: str = ""
    """Where to look: the process's log file, or the container's name."""


class Launcher(Protocol):
    kind: str

    def launch(self, spec: LaunchSpec) -> Launched:
        """Start ``spec`` detached; raise LaunchError when it cannot start."""
        ...

    def remove(self, name: str) -> list[Launched]:
        """Stop and remove everything started under ``name``; returns what was removed."""
        ...

    def running(self) -> list[Launched]:
        """Everything this launcher started that still exists."""
        ...


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise LaunchError(
            f"name {name!r}: use letters, digits, '_', '.' and '-' (at most 63, starting with a letter "
            "or digit): it names a file or a container"
        )
    return name


# -- local processes ---------------------------------------------------------------------------------
def _state_home() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "ringlab" / "launched"


_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
"""Processes this process started and has not reaped: a detached service outlives the command
that launched it, so its ``Popen`` is kept (not collected while running, which Python warns
about) and reaped here if this process removes it too (no zombie left behind)."""


class ProcessLauncher:
    """Detached local processes, one record (JSON) and one log file per name in ``state_dir``."""

    kind = "process"

    def __init__(self, state_dir: Path | None = None, startup_check: float = 0.5) -> None:
        self.state_dir = state_dir or _state_home()
        self.startup_check = startup_check

    def _record(self, name: str) -> Path:
        return self.state_dir / f"{_check_name(name)}.json"

    def launch(self, spec: LaunchSpec) -> Launched:
        record = self._record(spec.name)
        if record.exists():
            old = self._load(record)
            if old is not None and _alive(old):
                raise LaunchError(
                    f"{spec.name!r} is already running as process {old.ref} (log {old.detail}): "
                    "remove it first (ringlab vm destroy) or pick another name"
                )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.state_dir / f"{spec.name}.log"
        with open(log_path, "ab") as log:
            try:
                proc = subprocess.Popen(
                    list(spec.command),
                    env={**os.environ, **spec.env},
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # outlives this CLI; Ctrl-C here does not reach it
                )
            except OSError as err:
                raise LaunchError(f"cannot start {spec.command[0]!r}: {err}") from err
        _CHILDREN[proc.pid] = proc
        launched = Launched(spec.name, self.kind, str(proc.pid), str(log_path))
        record.write_text(json.dumps({"pid": proc.pid, "command": list(spec.command), "log": str(log_path)}))
        # A configuration error shows at once: report it here rather than leave a dead record.
        time.sleep(self.startup_check)
        if proc.poll() is not None:
            del _CHILDREN[proc.pid]
            record.unlink(missing_ok=True)
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            raise LaunchError(
                f"{spec.name!r} exited at once with status {proc.returncode}:\n" + "\n".join(tail)
            )
        return launched

    def _load(self, record: Path) -> Launched | None:
        try:
            data = json.loads(record.read_text())
            return Launched(record.stem, self.kind, str(int(data["pid"])), str(data.get("log", "")))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def running(self) -> list[Launched]:
        if not self.state_dir.is_dir():
            return []
        found = [self._load(p) for p in sorted(self.state_dir.glob("*.json"))]
        return [item for item in found if item is not None and _alive(item)]

    def remove(self, name: str) -> list[Launched]:
        record = self._record(name)
        item = self._load(record) if record.exists() else None
        record.unlink(missing_ok=True)
        if item is None or not _alive(item):
            return []
        pid = int(item.ref)
        child = _CHILDREN.pop(pid, None)  # started by this process: reap it, leave no zombie

        def running() -> bool:
            return child.poll() is None if child is not None else _alive(item)

        os.kill(pid, signal.SIGTERM)  # the services stop gracefully on SIGTERM
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and running():
            time.sleep(0.05)
        if running():
            os.kill(pid, signal.SIGKILL)
            if child is not None:
                child.wait(timeout=5)
        return [item]


def _alive(item: Launched) -> bool:
    pid = int(item.ref)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A pid can be reused: only a process whose log is ours (opened as its stdout) counts.
    try:
        return os.path.realpath(f"/proc/{pid}/fd/1") == os.path.realpath(item.detail)
    except OSError:
        return True


# -- Docker ------------------------------------------------------------------------------------------
def _docker_client() -> docker.DockerClient:
    try:
        import docker as docker_sdk
        from docker.errors import DockerException
    except ImportError as err:
        raise LaunchError(
            "the docker launcher needs the Docker SDK for Python: pip install 'ringlab[docker]'"
        ) from err
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker_sdk.from_env()
        client.ping()
    except DockerException as err:
        raise LaunchError(
            f"no Docker engine answers at {where} ({err}): start one (scripts/docker-engine starts "
            "Debian's), or point DOCKER_HOST at one"
        ) from err
    return client


class DockerLauncher:
    """Containers on the network of a running compose project (found by its hypervisor)."""

    kind = "docker"

    def __init__(
        self,
        image: str | None = None,
        project: str | None = None,
        service: str = "guest",
        anchor_service: str = "hypervisor",
        client_factory: Callable[[], docker.DockerClient] = _docker_client,
    ) -> None:
        self.image = image or os.environ.get("RINGLAB_IMAGE", "ringlab:latest")
        self.project = project or os.environ.get("RINGLAB_COMPOSE_PROJECT") or None
        self.service = service
        self.anchor_service = anchor_service
        self._client_factory = client_factory
        self._client: docker.DockerClient | None = None

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def anchor(self) -> Container:
        """The deployment's running hypervisor container: its project, network and settings."""
        filters: dict[str, Any] = {"label": [f"{COMPOSE_SERVICE}={self.anchor_service}"], "status": "running"}
        if self.project:
            filters["label"].append(f"{COMPOSE_PROJECT}={self.project}")
        found = self.client.containers.list(filters=filters)
        projects = sorted({c.labels.get(COMPOSE_PROJECT, "") for c in found})
        if not found:
            where = f"compose project {self.project!r}" if self.project else "any compose project"
            raise LaunchError(
                f"no running '{self.anchor_service}' container in {where}: start the deployment "
                "(docker compose up -d), or set RINGLAB_COMPOSE_PROJECT to its project name"
            )
        if len(projects) > 1:
            raise LaunchError(
                f"several compose projects run a '{self.anchor_service}' ({', '.join(projects)}): "
                "set RINGLAB_COMPOSE_PROJECT to the one to launch into"
            )
        return found[0]

    def peer_env(self, anchor: Container) -> dict[str, str]:
        """How a container on the network reaches the deployment: the anchor by its service name
        and port, and the anchor's own RINGLAB_REDIS and RINGLAB_TOKEN."""
        env = dict(
            item.split("=", 1) for item in anchor.attrs.get("Config", {}).get("Env") or [] if "=" in item
        )
        port = env.get("RINGLAB_LISTEN", f"0.0.0.0:{DEFAULT_PORTS['hypervisor']}").rpartition(":")[2]
        out = {"RINGLAB_HYPERVISOR": f"{self.anchor_service}:{port}"}
        out.update({k: env[k] for k in ("RINGLAB_REDIS", "RINGLAB_TOKEN") if k in env})
        return out

    def launch(self, spec: LaunchSpec) -> Launched:
        from docker.errors import APIError, ImageNotFound

        name = _check_name(spec.name)
        anchor = self.anchor()
        project = anchor.labels[COMPOSE_PROJECT]
        networks = list((anchor.attrs.get("NetworkSettings", {}).get("Networks") or {}).keys())
        if not networks:
            raise LaunchError(f"the {self.anchor_service} container of {project!r} is on no network")
        container_name = f"{project}-{self.service}-vm-{name}"
        env = {**self.peer_env(anchor), **spec.env}
        volumes = {}
        guest_secrets = self._guest_secrets(project)
        if guest_secrets is not None:  # the guests' credentials (docs/security.md), read-only
            volumes[guest_secrets] = {"bind": GUEST_SECRETS, "mode": "ro"}
            env.pop("RINGLAB_TOKEN", None)
            env["RINGLAB_CREDENTIALS"] = f"{GUEST_SECRETS}/credentials.json"
        config = json.dumps({"image": self.image, "env": env, "command": spec.command}, sort_keys=True)
        labels = {
            COMPOSE_PROJECT: project,
            COMPOSE_SERVICE: self.service,
            # A one-off container of the service, as `docker compose run` makes: `up --scale`
            # neither counts nor recreates it; `docker-compose down` (1.29) removes it, and so
            # does `docker compose down --remove-orphans` (v2), which only considers containers
            # that carry a config hash, as every container compose itself creates does.
            "com.docker.compose.oneoff": "True",
            "com.docker.compose.container-number": "1",
            "com.docker.compose.config-hash": hashlib.sha256(config.encode()).hexdigest(),
            LABEL_LAUNCHER: self.kind,
            LABEL_NAME: name,
        }
        try:
            # Looked up first: containers.run would otherwise try to pull it, and fail with a
            # registry error that says nothing about the image.
            self.client.images.get(self.image)
            container = self.client.containers.run(
                self.image,
                command=list(spec.command),
                name=container_name,
                hostname=name,
                environment=env,
                labels=labels,
                network=networks[0],
                volumes=volumes,
                init=True,
                detach=True,
                restart_policy={"Name": "on-failure"},  # a crashed guest re-attaches to its VM
            )
        except ImageNotFound as err:
            raise LaunchError(
                f"image {self.image!r} is missing: build it (docker compose build, or scripts/docker-images "
                "where no registry is reachable), or set RINGLAB_IMAGE to the deployment's image"
            ) from err
        except APIError as err:
            if err.status_code == 409:
                raise LaunchError(
                    f"a container named {container_name!r} exists already: remove it first "
                    f"(ringlab vm destroy {name}) or pick another name"
                ) from err
            raise LaunchError(
                f"the Docker engine refused to start {container_name!r}: {err.explanation}"
            ) from err
        return Launched(name, self.kind, container.id or "", container_name)

    def _guest_secrets(self, project: str) -> str | None:
        """The compose project's guest credentials volume (``PROJECT_secrets-guest``), if any."""
        from docker.errors import DockerException

        name = f"{project}_secrets-guest"
        try:
            self.client.volumes.get(name)
        except DockerException:
            return None
        return name

    def _mine(self, name: str | None = None) -> list[Container]:
        labels = [f"{LABEL_LAUNCHER}={self.kind}"]
        if name is not None:
            labels.append(f"{LABEL_NAME}={name}")
        if self.project:
            labels.append(f"{COMPOSE_PROJECT}={self.project}")
        found: list[Container] = self.client.containers.list(all=True, filters={"label": labels})
        return found

    def running(self) -> list[Launched]:
        return [Launched(c.labels[LABEL_NAME], self.kind, c.id or "", c.name or "") for c in self._mine()]

    def remove(self, name: str) -> list[Launched]:
        from docker.errors import NotFound

        removed = []
        for c in self._mine(_check_name(name)):
            try:
                c.remove(force=True)  # SIGKILL then remove: the VM's state is in Redis, not here
            except NotFound:
                continue
            removed.append(Launched(name, self.kind, c.id or "", c.name or ""))
        return removed


def make_launcher(kind: str, image: str | None = None) -> Launcher:
    if kind == "process":
        return ProcessLauncher()
    if kind == "docker":
        return DockerLauncher(image=image)
    raise LaunchError(f"launcher {kind!r}: choose process or docker")


# -- guest OS instances ------------------------------------------------------------------------------
def guest_spec(
    name: str,
    *,
    technique: str,
    kernel: str,
    workload: str,
    weight: int,
    launcher: str,
    hypervisor: str,
    redis: str | None = None,
    token: str | None = None,
) -> LaunchSpec:
    """A guest service (``python -m ringlab_guest``) owning one VM, configured by RINGLAB_* variables.

    For a process, ``hypervisor`` (and Redis) are as this machine reaches them; a container gets
    the deployment's in-network addresses from ``DockerLauncher`` instead."""
    env = {
        "RINGLAB_GUEST_NAME": name,
        "RINGLAB_TECHNIQUE": technique,
        "RINGLAB_KERNEL": kernel,
        "RINGLAB_WORKLOAD": workload,
        "RINGLAB_WEIGHT": str(weight),
        "RINGLAB_MIX": "",  # one named VM, not the next entry of a replica mix
    }
    if launcher == "process":
        env["RINGLAB_HYPERVISOR"] = hypervisor
        env["RINGLAB_LISTEN"] = "127.0.0.1:0"  # any free port: several guests on one machine
        if redis:
            env["RINGLAB_REDIS"] = redis
        if token is not None:
            env["RINGLAB_TOKEN"] = token
        return LaunchSpec(name, (sys.executable, "-m", "ringlab_guest"), env)
    env["RINGLAB_LISTEN"] = f"0.0.0.0:{DEFAULT_PORTS['guest']}"
    return LaunchSpec(name, ("python", "-m", "ringlab_guest"), env)
