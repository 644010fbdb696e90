"""A deployment's secrets and each role's credentials (docs/security.md).

One random **deployment secret** is the root; every credential is an HMAC-SHA256 of it, so that a
deployment keeps one secret and hands each service only what its role needs:

    gRPC, the hypervisor's token       hypervisor:HMAC(secret, "grpc:hypervisor")
    gRPC, the guest key                HMAC(secret, "grpc:guest")   (the hypervisor verifies with it)
    gRPC, one guest's token            guest:NAME:HMAC(guest key, "guest:" + NAME)
    Redis, each role's password        HMAC(secret, "redis:" + ROLE)   (admin, hypervisor, cpu, guest, observer)

The operator's token is the one given to ``ringlab up --token`` / ``$RINGLAB_TOKEN`` (none: the
operator API is open, as before); services that accept it are given its SHA-256 only.

A service gets one **credentials file** (``RINGLAB_CREDENTIALS=PATH``, JSON, mode 0600):

    role            cpu | hypervisor | guest
    token           what it sends on its own calls (the hypervisor's to the pCPUs, a guest's to the
                    hypervisor); "guest-key:KEY" for a guest replica that learns its name at run time
    guest_key       the hypervisor's: to verify guests' tokens
    accept          {"hypervisor": sha256, "operator": sha256}: digests of the tokens it serves
    operator_open   true when the deployment has no operator token (callers without one are operators)
    redis_user, redis_password    its Redis ACL user

``python -m ringlab.store.credentials DIR`` writes a compose deployment's files (see
docker-compose.yml's ``secrets`` service).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

__all__ = [
    "GUEST_KEY_PREFIX",
    "REDIS_ROLES",
    "Credentials",
    "DeploymentSecrets",
    "acl_lines",
    "digest",
    "guest_token",
    "load_credentials",
    "register_login",
    "remove_login",
    "with_login",
    "write_private",
]

SERVICE_ROLES = ("cpu", "hypervisor", "guest")
REDIS_ROLES = ("admin", "hypervisor", "cpu", "guest", "observer")
"""Redis ACL users: ``admin`` for the process that runs Redis (start, health, shutdown),
``observer`` read-only for the operator's tools (``ringlab chaos``), one per service role."""
GUEST_KEY_PREFIX = "guest-key:"
SECRET_FILE = "deployment.json"
_HEX = re.compile(r"^[0-9a-f]{64}$")


def _mac(key: str, label: str) -> str:
    return hmac.new(key.encode(), label.encode(), hashlib.sha256).hexdigest()


def digest(token: str) -> str:
    """What a service keeps of a token it accepts: its SHA-256 (hex)."""
    return hashlib.sha256(token.encode()).hexdigest()


def guest_token(guest_key: str, name: str) -> str:
    """The bearer token of the guest that owns the VM named ``name``."""
    return f"guest:{name}:{_mac(guest_key, 'guest:' + name)}"


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Write ``text`` to ``path`` created with ``mode`` (0600: its owner only), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


@dataclass(frozen=True)
class Credentials:
    """What one service is handed (its credentials file)."""

    role: str
    token: str = ""
    guest_key: str = ""
    accept: dict[str, str] = field(default_factory=dict)
    operator_open: bool = False
    redis_user: str = ""
    redis_password: str = ""

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Credentials:
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("role") not in SERVICE_ROLES:
            raise ValueError(
                f"not a Ringlab credentials file (role must be one of {', '.join(SERVICE_ROLES)})"
            )
        accept = doc.get("accept") or {}
        if not isinstance(accept, dict):
            raise ValueError("'accept' must be an object")
        return cls(
            role=str(doc["role"]),
            token=str(doc.get("token") or ""),
            guest_key=str(doc.get("guest_key") or ""),
            accept={str(k): str(v) for k, v in accept.items()},
            operator_open=bool(doc.get("operator_open", False)),
            redis_user=str(doc.get("redis_user") or ""),
            redis_password=str(doc.get("redis_password") or ""),
        )


def load_credentials(path: str) -> Credentials:
    """The credentials file at ``path``; SystemExit (one line, no traceback) when it is unusable."""
    try:
        return Credentials.from_json(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SystemExit(
            f"cannot read the credentials file {path} (RINGLAB_CREDENTIALS): {exc.strerror}"
        ) from None
    except ValueError as exc:
        raise SystemExit(f"the credentials file {path} (RINGLAB_CREDENTIALS) is unusable: {exc}") from None


@dataclass(frozen=True)
class DeploymentSecrets:
    """The root secret and the operator's token; every credential derives from them."""

    secret: str
    operator_token: str = ""

    @classmethod
    def generate(cls, operator_token: str = "") -> DeploymentSecrets:
        return cls(secrets.token_hex(32), operator_token)

    @classmethod
    def load_or_create(cls, folder: Path, operator_token: str = "") -> DeploymentSecrets:
        """The secret kept in ``folder/deployment.json`` (0600), created there the first time."""
        path = folder / SECRET_FILE
        try:
            secret = str(json.loads(path.read_text(encoding="utf-8"))["secret"])
            if _HEX.match(secret):
                return cls(secret, operator_token)
        except (OSError, ValueError, KeyError, TypeError):
            pass
        made = cls.generate(operator_token)
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        write_private(path, json.dumps({"secret": made.secret}) + "\n")
        return made

    @property
    def hypervisor_token(self) -> str:
        return f"hypervisor:{_mac(self.secret, 'grpc:hypervisor')}"

    @property
    def guest_key(self) -> str:
        return _mac(self.secret, "grpc:guest")

    def guest_token(self, name: str) -> str:
        return guest_token(self.guest_key, name)

    def redis_password(self, role: str) -> str:
        return _mac(self.secret, f"redis:{role}")

    def for_role(self, role: str, *, guest_name: str = "", redis: bool = True) -> Credentials:
        """The credentials of one service: ``cpu``, ``hypervisor``, or ``guest`` (with
        ``guest_name``: the token of that VM's guest; without: the guest key, for replicas that
        learn their name at run time)."""
        accept = {"operator": digest(self.operator_token)} if self.operator_token else {}
        open_ = not self.operator_token
        user = role if redis else ""
        password = self.redis_password(role) if redis else ""
        if role == "cpu":
            return Credentials(
                "cpu",
                accept={"hypervisor": digest(self.hypervisor_token)},
                redis_user=user,
                redis_password=password,
            )
        if role == "hypervisor":
            return Credentials(
                "hypervisor",
                token=self.hypervisor_token,
                guest_key=self.guest_key,
                accept=accept,
                operator_open=open_,
                redis_user=user,
                redis_password=password,
            )
        if role == "guest":
            token = self.guest_token(guest_name) if guest_name else GUEST_KEY_PREFIX + self.guest_key
            return Credentials(
                "guest",
                token=token,
                accept=accept,
                operator_open=open_,
                redis_user=user,
                redis_password=password,
            )
        raise ValueError(f"no such role: {role!r}")

    def acl(self) -> str:
        """The Redis ACL file: ``default`` off, one user per role (``acl_lines``)."""
        return acl_lines({role: self.redis_password(role) for role in REDIS_ROLES})


# -- Redis ACLs ---------------------------------------------------------------------------------------
_SCRIPTS = {
    "hypervisor": (
        "create_vm",
        "control",
        "destroy_vm",
        "grant",
        "renew_driver",
        "reboot_vm",
        "flight_append",
    ),
    "cpu": ("commit",),
    "guest": ("claim_mix",),
}
"""The Lua scripts (store/lua) each role runs: a script runs under its caller's ACL user, so its
user needs every command the script calls (read from the scripts themselves)."""
_BASE = (
    "ping",
    "select",
    "echo",
    "multi",
    "exec",
    "discard",
    "evalsha",
    "eval",
    "script|load",
    "script|exists",
)
_DIRECT = {
    "hypervisor": ("hget", "hgetall", "hexists", "hkeys", "get", "incrby", "exists", "del", "xadd", "xread", "xrange", "xrevrange"),
    "cpu": ("hget", "hgetall", "hset", "set", "exists"),
    "guest": (),
}  # fmt: skip
"""The commands ``SharedState`` sends itself for each role (besides its scripts)."""
_KEYS = {
    "hypervisor": ("rl:*",),
    "cpu": (
        "rl:sched:*", "rl:events", "rl:commits", "rl:pcpus", "rl:pcpu:*:alive",
        "rl:{vm:*}:vcpu", "rl:{vm:*}:pages", "rl:{vm:*}:console", "rl:{vm:*}:record",
    ),
    "guest": ("rl:guest:mix:*",),
}  # fmt: skip
"""Key patterns per role: the pCPUs never see rl:fence, the VM names, images or the drivers'
leases; a guest sees only the replica counters."""
_CALL = re.compile(r"redis\.p?call\(\s*['\"]([A-Za-z]+)['\"]")


def script_commands(names: tuple[str, ...]) -> list[str]:
    folder = resources.files("ringlab.store") / "lua"
    found: set[str] = set()
    for name in names:
        found |= {m.lower() for m in _CALL.findall((folder / f"{name}.lua").read_text())}
    return sorted(found)


def acl_rules(role: str) -> list[str]:
    """One role's ACL rules (after ``reset``): its key patterns and commands."""
    if role == "admin":
        return ["~*", "&*", "+@all"]
    if role == "observer":
        # +eval: read-only scripts (ringlab chaos reads a compose Redis through redis-cli EVAL);
        # Redis checks every command a script calls against the caller's ACL, so they only read
        return [
            "~rl:*",
            "resetchannels",
            "-@all",
            "+@read",
            "-@dangerous",
            "+ping",
            "+select",
            "+echo",
            "+eval",
        ]
    commands = sorted({*_BASE, *_DIRECT[role], *script_commands(_SCRIPTS[role])})
    return [
        *(f"~{pattern}" for pattern in _KEYS[role]),
        "resetchannels",
        "-@all",
        *(f"+{c}" for c in commands),
    ]


def acl_lines(passwords: dict[str, str]) -> str:
    """An ACL file (redis-server --aclfile): ``default`` disabled with no password (so protected
    mode stays on and a client that does not authenticate can do nothing), and each role's user."""
    lines = ["user default off resetpass resetkeys resetchannels -@all"]
    for role, password in passwords.items():
        lines.append(" ".join(["user", role, "on", f"#{digest(password)}", *acl_rules(role)]))
    return "\n".join(lines) + "\n"


# -- compose ----------------------------------------------------------------------------------------
def write_compose(root: Path, operator_token: str = "") -> None:
    """A compose deployment's files under ``root``, each role's in its own folder (one volume each,
    mounted into that role's containers only): ``secret/deployment.json`` (kept: the next run
    derives the same credentials), ``cpu/``, ``hypervisor/``, ``guest/`` (credentials.json),
    ``redis/users.acl``, ``redis/health.password`` (the health check's user) and
    ``redis/observer.password`` (read-only: ``ringlab chaos`` reads through it, by ``docker exec``
    into the Redis container, which only someone who may run the containers can do)."""
    made = DeploymentSecrets.load_or_create(root / "secret", operator_token)
    for role in SERVICE_ROLES:
        write_private(root / role / "credentials.json", made.for_role(role).to_json())
    passwords = {role: made.redis_password(role) for role in REDIS_ROLES}
    health = _mac(made.secret, "redis:health")
    acl = acl_lines(passwords) + f"user health on #{digest(health)} resetkeys resetchannels -@all +ping\n"
    # 0644 in a volume only the redis service mounts: its server runs as its own user.
    write_private(root / "redis" / "users.acl", acl, mode=0o644)
    write_private(root / "redis" / "health.password", health + "\n", mode=0o644)
    write_private(root / "redis" / "observer.password", passwords["observer"] + "\n", mode=0o644)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ringlab.store.credentials",
        description="Write a compose deployment's secrets: one folder per role (docs/security.md).",
    )
    parser.add_argument("root", help="the folder holding one sub-folder per role")
    parser.add_argument(
        "--operator-token",
        default=os.environ.get("RINGLAB_TOKEN", ""),
        help="the operator's token the services accept (default: $RINGLAB_TOKEN; none: the operator API is open)",
    )
    args = parser.parse_args(argv)
    try:
        write_compose(Path(args.root), args.operator_token)
    except OSError as exc:
        print(f"ringlab: cannot write the secrets under {args.root}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"secrets written under {args.root} (roles: {', '.join(SERVICE_ROLES)}, redis)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


# -- logins: where the operator's tools find a local deployment's Redis credentials ---------------------
def logins_dir() -> Path:
    """``$XDG_STATE_HOME/ringlab/redis-logins`` (else ``~/.local/state/...``): one file per Redis
    that a ``ringlab up`` of this user runs, as ``~/.pgpass`` is for PostgreSQL."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "ringlab" / "redis-logins"


def _login_file(host: str, port: int) -> Path:
    return logins_dir() / f"{host}-{port}.json"


def register_login(host: str, port: int, user: str, password: str) -> Path:
    """Record (0600) that ``host:port``'s Redis takes ``user``/``password`` while this process
    lives: a URL with no credentials for it then connects as that user (``with_login``)."""
    path = _login_file(host, port)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    write_private(path, json.dumps({"user": user, "password": password, "owner": os.getpid()}) + "\n")
    return path


def remove_login(host: str, port: int) -> None:
    try:
        path = _login_file(host, port)
        if json.loads(path.read_text(encoding="utf-8")).get("owner") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def with_login(url: str) -> str:
    """``url`` with the credentials a live ``ringlab up`` of this user registered for its Redis
    (its ``observer`` user: read-only), when the URL names none and the record is the owner's
    only (mode 0600) and its process still runs; else ``url`` as it is."""
    from urllib.parse import quote, urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.scheme != "redis" or parts.username or parts.password or not parts.hostname or not parts.port:
        return url
    path = _login_file(parts.hostname, parts.port)
    try:
        if path.stat().st_mode & 0o077:
            return url
        doc = json.loads(path.read_text(encoding="utf-8"))
        os.kill(int(doc["owner"]), 0)
        user, password = str(doc["user"]), str(doc["password"])
    except (OSError, ValueError, KeyError, TypeError):
        return url
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.netloc}"
    return urlunsplit(parts._replace(netloc=netloc))
