"""What ``ringlab chaos`` can break, and how: the services of a local deployment (``ringlab up``:
processes found in its ``services.json``, guests in the process launcher's records) or of a
compose deployment (containers, through the Docker SDK).

Each target is one service instance: a kind (cpu, hypervisor, guest, redis), a name (``cpu0``,
``hypervisor``, ``redis``, ``guest/NAME`` locally; the container's name under compose) and what
the action acts on (a pid, a container).  Faults:

    kill       SIGKILL (a container: docker kill); the supervisor (``up``, or the compose restart
               policy) restarts it; a launched guest, which has no supervisor, is relaunched here
    pause      SIGSTOP, then SIGCONT after the pause (a container: docker pause / unpause)
    restart    SIGTERM: a graceful stop, and the supervisor starts it again (docker restart)
    partition  compose only: the container is disconnected from the deployment's network, then
               reconnected with its aliases

The targets are read afresh before every action: pids change with every restart.

The store (Redis) is read through ``Store``: directly for a local deployment, through
``redis-cli`` inside the Redis container for compose (its port is not published).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ringlab.errors import DeploymentFailed, UsageError

if TYPE_CHECKING:
    from docker.models.containers import Container

__all__ = [
    "ACTIONS",
    "KINDS",
    "ComposeTargets",
    "LocalTargets",
    "Store",
    "Target",
    "Targets",
]

ACTIONS = ("kill", "pause", "restart", "partition")
KINDS = ("cpu", "hypervisor", "guest", "redis")
SERVICES_FILE = "services.json"


@dataclass(frozen=True)
class Target:
    name: str
    kind: str
    ref: str
    """A pid, or a container id."""
    pcpu: str = ""
    """A cpu target's pCPU id (as the scheduler's events name it), when known."""


class Store(Protocol):
    """What the recorder reads from the deployment's Redis."""

    def commits(self, after: str) -> list[dict[str, str]]: ...

    def pcpus(self) -> dict[str, str]:
        """pCPU id -> its address."""
        ...

    def definition(self, vm: str) -> tuple[dict[str, Any], bytes]:
        """The VM's stored definition and image."""
        ...


class Targets(Protocol):
    kind: str
    hypervisor: str
    store: Store

    def targets(self) -> list[Target]: ...

    def act(self, action: str, target: Target) -> dict[str, Any]:
        """Start ``action`` on ``target``; returns what to record (pid, container)."""
        ...

    def recover(self, action: str, target: Target) -> dict[str, Any] | None:
        """End a pause or a partition, or relaunch a killed guest; None when nothing was due."""
        ...


# -- local: ringlab up -----------------------------------------------------------------------------
class LocalStore:
    def __init__(self, url: str) -> None:
        from ringlab.store import SharedState

        self.state = SharedState.from_url(url)

    def commits(self, after: str) -> list[dict[str, str]]:
        return self.state.commits_read(after)

    def pcpus(self) -> dict[str, str]:
        return {p: address for p, (address, _alive) in self.state.pcpus().items()}

    def definition(self, vm: str) -> tuple[dict[str, Any], bytes]:
        definition, _record = self.state.vm_record(vm)
        return definition, self.state.vm_image(vm)


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def _cmdline(pid: int) -> list[str]:
    return [
        part
        for part in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        if part
    ]


def _running(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


class LocalTargets:
    """A ``ringlab up`` deployment, from its state folder's ``services.json`` (rewritten by ``up``
    at every restart), and the guests ``ringlab vm create --launcher process`` started for it."""

    kind = "local"

    def __init__(self, state_dir: Path, hypervisor: str | None = None, relaunch_after: float = 1.0) -> None:
        self.file = state_dir / SERVICES_FILE
        doc = self.read()
        self.hypervisor = hypervisor or str(doc.get("hypervisor", ""))
        if not self.hypervisor:
            raise DeploymentFailed(f"{self.file} names no hypervisor: is it a 'ringlab up' deployment's?")
        self.redis = str(doc.get("redis", ""))
        self.store: Store = LocalStore(self.redis)
        self.relaunch_after = relaunch_after
        self._pcpus: dict[str, str] = {}
        self._guests: dict[str, tuple[list[str], dict[str, str], float]] = {}
        """A guest killed or restarted here: its command, environment and when to relaunch it."""

    def read(self) -> dict[str, Any]:
        try:
            doc: dict[str, Any] = json.loads(self.file.read_text())
        except FileNotFoundError:
            raise DeploymentFailed(
                f"no {self.file}: start the deployment with 'ringlab up' (it writes the services' pids "
                "there), or name its state folder with --state"
            ) from None
        except ValueError:  # being rewritten: read it again
            time.sleep(0.05)
            doc = json.loads(self.file.read_text())
        return doc

    def services(self) -> list[dict[str, Any]]:
        return list(self.read().get("services", []))

    def _pcpu_ids(self, addresses: set[str]) -> dict[str, str]:
        """address -> pCPU id, asked of Redis only for an address not seen yet (a restarted
        service keeps its address; and Redis may be the service that is paused)."""
        if not addresses <= set(self._pcpus):
            with contextlib.suppress(Exception):
                self._pcpus.update({address: pcpu for pcpu, address in self.store.pcpus().items()})
        return self._pcpus

    def targets(self) -> list[Target]:
        from ringlab.cli.launch import ProcessLauncher

        services = self.services()
        by_address = self._pcpu_ids({str(s.get("address", "")) for s in services if s.get("kind") == "cpu"})
        out = []
        for s in services:
            kind, name = str(s.get("kind", "")), str(s.get("name", ""))
            pcpu = ""
            if kind == "cpu":
                pcpu = by_address.get(str(s.get("address", "")), f"p{name}" if name.startswith("cpu") else "")
            out.append(Target(name, kind, str(s.get("pid", "")), pcpu))
        for launched in ProcessLauncher().running():
            try:
                env = _environ(int(launched.ref))
            except OSError:
                continue
            if env.get("RINGLAB_HYPERVISOR") == self.hypervisor:
                out.append(Target(f"guest/{launched.name}", "guest", launched.ref))
        return out

    def act(self, action: str, target: Target) -> dict[str, Any]:
        pid = int(target.ref)
        if action == "partition":
            raise UsageError(
                "a network partition needs a compose deployment (--compose): use kill, pause, restart"
            )
        if target.kind == "guest" and action in ("kill", "restart"):
            name = target.name.removeprefix("guest/")
            self._guests[name] = (_cmdline(pid), _environ(pid), time.monotonic() + self.relaunch_after)
        sig = {"kill": signal.SIGKILL, "pause": signal.SIGSTOP, "restart": signal.SIGTERM}[action]
        os.kill(pid, sig)
        return {"pid": pid}

    def recover(self, action: str, target: Target) -> dict[str, Any] | None:
        pid = int(target.ref)
        if action == "pause":
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                return {"pid": pid, "detail": "gone before it was resumed"}
            return {"pid": pid}
        name = target.name.removeprefix("guest/")
        if target.kind != "guest" or name not in self._guests:
            return None
        return self._relaunch(name, pid)

    def _relaunch(self, name: str, old: int) -> dict[str, Any]:
        from ringlab.cli.launch import LaunchSpec, ProcessLauncher

        command, env, when = self._guests.pop(name)
        deadline = time.monotonic() + 15.0
        while (_running(old) or time.monotonic() < when) and time.monotonic() < deadline:
            time.sleep(0.05)
        launched = ProcessLauncher(startup_check=0.2).launch(LaunchSpec(name, command, env))
        return {"pid": int(launched.ref), "detail": "relaunched"}


# -- compose: the Docker SDK -----------------------------------------------------------------------
_EVAL_COMMITS = """
local out = {}
for _, e in ipairs(redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])) do
  local f = {cursor = e[1]}
  for i = 1, #e[2], 2 do f[e[2][i]] = e[2][i + 1] end
  table.insert(out, f)
end
if #out == 0 then return '[]' end
return cjson.encode(out)
"""
_EVAL_HASH = """
local flat = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #flat, 2 do out[flat[i]] = flat[i + 1] end
return cjson.encode(out)
"""
_EVAL_VM = """
local image = redis.call('GET', KEYS[2]) or ''
local hex = image:gsub('.', function(c) return string.format('%02x', string.byte(c)) end)
return cjson.encode({def = redis.call('HGET', KEYS[1], 'def'), image = hex})
"""


OBSERVER_PASSWORD = "/run/ringlab/redis/observer.password"
"""Where the compose file's Redis container has its secrets volume (docker-compose.yml)."""


class ComposeStore:
    """The compose deployment's Redis, through ``redis-cli`` in its container."""

    def __init__(self, targets: ComposeTargets) -> None:
        self.targets = targets

    def _eval(self, script: str, keys: list[str], args: list[str]) -> Any:
        """A read-only script, as the deployment's ``observer`` Redis user (its password is in
        the Redis container's secrets volume: docs/security.md); the script goes as ``$0`` and
        its arguments as ``$@``, so no shell quoting touches them."""
        container = self.targets.container("redis")
        login = (
            f'REDISCLI_AUTH="$(cat {OBSERVER_PASSWORD})" exec redis-cli --user observer --raw EVAL "$0" "$@"'
        )
        code, output = container.exec_run(
            ["sh", "-c", login, script, str(len(keys)), *keys, *args], stdout=True, stderr=True
        )
        text = (output if isinstance(output, bytes) else b"".join(output)).decode(errors="replace").strip()
        if code != 0 or text.startswith(("ERR", "(error)", "Could not connect")):
            raise DeploymentFailed(f"redis-cli in {container.name}: {text[:300]}")
        return json.loads(text)

    def commits(self, after: str) -> list[dict[str, str]]:
        from ringlab.store import keys

        start = "-" if after in ("", "0-0") else f"({after}"
        found: list[dict[str, str]] = self._eval(_EVAL_COMMITS, [keys.COMMITS], [start, "10000"])
        return found

    def pcpus(self) -> dict[str, str]:
        from ringlab.store import keys

        found: dict[str, str] = self._eval(_EVAL_HASH, [keys.PCPUS], [])
        return found if isinstance(found, dict) else {}

    def definition(self, vm: str) -> tuple[dict[str, Any], bytes]:
        from ringlab.store import keys

        doc = self._eval(_EVAL_VM, [keys.vm_record(vm), keys.vm_image(vm)], [])
        return json.loads(doc["def"]), bytes.fromhex(doc["image"])


class ComposeTargets:
    """A compose project's containers (redis, cpu, hypervisor, guest and launched guests)."""

    kind = "compose"

    def __init__(
        self, project: str | None = None, hypervisor: str | None = None, restart_after: float = 1.0
    ) -> None:
        from ringlab.cli.launch import COMPOSE_PROJECT, DockerLauncher, LaunchError

        try:
            launcher = DockerLauncher(project=project)
            anchor = launcher.anchor()
        except LaunchError as exc:
            raise DeploymentFailed(str(exc)) from None
        self.client = launcher.client
        self.project = anchor.labels[COMPOSE_PROJECT]
        self.hypervisor = hypervisor or self._published(anchor)
        self.store: Store = ComposeStore(self)
        self.restart_after = restart_after
        self._networks: dict[str, tuple[str, list[str]]] = {}
        self._killed: dict[str, float] = {}

    @staticmethod
    def _published(anchor: Container) -> str:
        ports = (anchor.attrs.get("NetworkSettings", {}).get("Ports") or {}).get("50051/tcp") or []
        for binding in ports:
            host = binding.get("HostIp") or "127.0.0.1"
            return f"{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{binding['HostPort']}"
        raise DeploymentFailed(
            "the hypervisor container publishes no port: name its address with --hypervisor"
        )

    def containers(self) -> list[Container]:
        from ringlab.cli.launch import COMPOSE_PROJECT

        found: list[Container] = self.client.containers.list(
            all=True, filters={"label": [f"{COMPOSE_PROJECT}={self.project}"]}
        )
        return found

    def container(self, ref: str) -> Container:
        """A container by id, or the first running one of a service."""
        from ringlab.cli.launch import COMPOSE_SERVICE

        for c in self.containers():
            if c.id == ref or (c.labels.get(COMPOSE_SERVICE) == ref and c.status == "running"):
                return c
        raise DeploymentFailed(f"no container {ref!r} in compose project {self.project!r}")

    def targets(self) -> list[Target]:
        from ringlab.cli.launch import COMPOSE_SERVICE

        try:
            by_host = {address.rsplit(":", 1)[0]: pcpu for pcpu, address in self.store.pcpus().items()}
        except Exception:
            by_host = {}
        out = []
        for c in self.containers():
            kind = c.labels.get(COMPOSE_SERVICE, "")
            if kind not in KINDS:
                continue
            pcpu = by_host.get(str(c.attrs.get("Config", {}).get("Hostname", ""))) if kind == "cpu" else ""
            out.append(Target(c.name or c.id or "", kind, c.id or "", pcpu or ""))
        return out

    def act(self, action: str, target: Target) -> dict[str, Any]:
        c = self.container(target.ref)
        if action == "kill":
            c.kill(signal="SIGKILL")
            self._killed[target.ref] = time.monotonic() + self.restart_after
        elif action == "pause":
            retry_transient(c.pause, FREEZE_FAILED)
        elif action == "restart":
            c.restart(timeout=5)
        elif action == "partition":
            networks = c.attrs.get("NetworkSettings", {}).get("Networks") or {}
            name, settings = next(iter(networks.items()))
            aliases = [a for a in settings.get("Aliases") or [] if a]
            self._networks[target.ref] = (name, aliases)
            self.client.networks.get(name).disconnect(c, force=True)
        return {"container": c.name}

    def recover(self, action: str, target: Target) -> dict[str, Any] | None:
        c = self.container(target.ref)
        if action == "pause":
            c.reload()
            if c.status == "paused":
                c.unpause()
            return {"container": c.name}
        if action == "partition":
            name, aliases = self._networks.pop(target.ref)
            self.client.networks.get(name).connect(c, aliases=aliases or None)
            return {"container": c.name}
        if action == "kill":  # the restart policy may have brought it back already
            when = self._killed.pop(target.ref, time.monotonic())
            time.sleep(max(0.0, when - time.monotonic()))
            c.reload()
            if c.status != "running":
                c.start()
                return {"container": c.name, "detail": "started again"}
            return {"container": c.name, "detail": "restarted by its restart policy"}
        return None


FREEZE_FAILED = "unable to freeze"
"""The engine's answer when the cgroup freezer gave up on a container (a process it could not
stop in time, on a loaded host): a refusal of this moment, which the next try may not meet (seen
once in CI: 'oci runtime pause failed: unable to freeze: unknown')."""


def retry_transient(call: Callable[[], Any], transient: str, attempts: int = 5, delay: float = 0.3) -> Any:
    """``call()``, again after ``delay`` seconds while it fails with an error whose text says
    ``transient``, at most ``attempts`` times in all; any other error, or the last, is raised."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:
            if transient not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def docker_available() -> bool:
    """Whether the Docker SDK is installed (``ringlab[docker]``)."""
    try:
        import docker  # noqa: F401
    except ImportError:
        return False
    return True
