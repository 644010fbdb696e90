"""``SharedState``: the Redis side of a deployment (VM records, vCPU contexts, memory pages,
consoles, events, the scheduler's entries, pCPU registrations and leases).

Every multi-key change is one Lua script in ``lua/`` (see each file's header); single-key
changes are plain commands; reads that must agree are one MULTI/EXEC round trip.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis

from ringlab.hypervisor.ports import GrantResult
from ringlab.store import keys
from ringlab.store.credentials import with_login
from ringlab.store.errors import InvalidRequest, StaleLease, VmNotFound, WrongState
from ringlab.store.scripts import Scripts

__all__ = [
    "Commit",
    "GrantResult",
    "RoundTripObserver",
    "SharedState",
    "VcpuContext",
    "check_cursor",
    "connect",
]

log = logging.getLogger("ringlab.store")

PCPU_TTL_MS = 5_000
_CURSOR = re.compile(r"^([0-9]{1,20})(?:-([0-9]{1,20}))?$")
UNSAFE_NO_FENCING = "RINGLAB_UNSAFE_NO_FENCING"
"""A teaching switch (docs/labs/chaos.md): ``1`` makes every commit this process makes skip the
lease check in lua/commit.lua (the token and the VM's status), so a stale holder's commit lands.
Never set it outside that exercise; ``ringlab chaos check`` then finds the stale commits."""
_warned = False


def fencing_enabled() -> bool:
    """False only under ``RINGLAB_UNSAFE_NO_FENCING=1`` (read at each commit)."""
    return os.environ.get(UNSAFE_NO_FENCING, "").strip() != "1"


def check_cursor(cursor: str, what: str = "after") -> str:
    """``cursor`` if it is a stream entry id (``MS-SEQ``, as chunks and events carry), else
    InvalidRequest saying what one looks like ("" is the caller's own default)."""
    match = _CURSOR.match(cursor)
    if match is None or any(int(part) >= 1 << 64 for part in match.groups() if part is not None):
        raise InvalidRequest(
            f"{what} {cursor[:40]!r} is not a cursor: pass back the `cursor` of a chunk or event "
            'this deployment sent (digits-digits, e.g. 1700000000000-0), or "" for the start'
        )
    return cursor


def connect(url: str) -> redis.Redis:
    """A client for ``url`` (redis://[user:password@]host:port/db or unix:///path) with short
    timeouts, so a dead server shows as an error in seconds rather than a hang.  A URL without
    credentials for the Redis of a live ``ringlab up`` of this user connects as its read-only
    ``observer`` (``credentials.with_login``)."""
    return redis.Redis.from_url(
        with_login(url), socket_connect_timeout=2, socket_timeout=10, health_check_interval=30
    )


def _s(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


@dataclass
class VcpuContext:
    """A VM's committed execution context, as a pCPU loads it."""

    generation: int
    state: dict[str, Any]
    stats: dict[str, Any]
    vmm: dict[str, Any]
    pages: dict[int, bytes]
    memory_size: int
    definition: dict[str, Any]


@dataclass
class Commit:
    """What one commit carries (see lua/commit.lua)."""

    vm: str
    token: int
    base_generation: int
    state: dict[str, Any]
    stats: dict[str, Any]
    vmm: dict[str, Any]
    console: bytes = b""
    status: str = ""
    code: int | None = None
    detail: str = ""
    pages: dict[int, bytes] | None = None


RoundTripObserver = Callable[[str, float, bool], None]
"""Told of every counted round trip: (the operation: the ``SharedState`` method's name, its host
seconds, whether it succeeded).  Called on the caller's thread: quick, and never raising."""


def _entries(flat: list[Any]) -> dict[str, dict[str, Any]]:
    it = iter(flat)
    return {_s(k): json.loads(v) for k, v in zip(it, it)}


class SharedState:
    """Typed access to one deployment's Redis."""

    def __init__(self, client: redis.Redis) -> None:
        # redis-py types replies as unions over decode_responses; ours are always bytes.
        self.r: Any = client
        self.scripts = Scripts(client)
        self.round_trips = 0
        """Round trips made by the hot-path methods (loads, commits, grants, snapshots): the
        services benchmark divides them by world switches."""
        self.observer: RoundTripObserver | None = None
        """Told of each round trip ``round_trips`` counts (the services' metrics)."""
        global _warned
        if not fencing_enabled() and not _warned:
            _warned = True
            log.warning(
                "!!! %s=1: commits are NOT fenced by their lease token: a stale pCPU's commit will "
                "land. A teaching exercise only (docs/labs/chaos.md); never run a deployment so !!!",
                UNSAFE_NO_FENCING,
            )

    @classmethod
    def from_url(cls, url: str) -> SharedState:
        return cls(connect(url))

    def counted(self) -> SharedState:
        """A handle on the same Redis (the same connection pool) that counts its own round trips
        (and tells the same observer)."""
        other = SharedState(self.r)
        other.observer = self.observer
        return other

    @contextmanager
    def _round_trip(self, op: str) -> Iterator[None]:
        """Count one round trip of ``op`` (and time it for the observer, if any)."""
        self.round_trips += 1
        observer = self.observer
        if observer is None:
            yield
            return
        started, ok = time.perf_counter(), False
        try:
            yield
            ok = True
        finally:
            try:
                observer(op, time.perf_counter() - started, ok)
            except Exception:  # counting never fails a round trip
                log.exception("the store's round-trip observer failed")

    def ping(self) -> bool:
        try:
            return bool(self.r.ping())
        except redis.RedisError:
            return False

    # -- VMs ---------------------------------------------------------------------------------
    def create_vm(
        self,
        name: str,
        definition: dict[str, Any],
        image: bytes,
        state: dict[str, Any],
        stats: dict[str, Any],
        entry: dict[str, Any],
        pages: dict[int, bytes],
        console: bytes = b"",
    ) -> tuple[bool, str]:
        """Define a VM; returns (created, id).  Idempotent by name: an existing name returns its
        id with created False and changes nothing.  ``console`` is its console so far (a VM
        restored from a snapshot has one)."""
        existing = self.r.hget(keys.VM_NAMES, name)
        if existing is not None:
            return False, _s(existing)
        vm = str(self.r.incr(keys.VM_SEQ))  # a retried INCR only leaves a gap in the ids
        args: list[Any] = [
            name,
            vm,
            json.dumps(definition),
            image,
            json.dumps(state),
            json.dumps(stats),
            json.dumps(entry),
            time.time(),
            console,
        ]
        for number, blob in sorted(pages.items()):
            args += [number, blob]
        created, vid = self.scripts(
            "create_vm",
            [
                keys.VM_NAMES,
                keys.vm_record(vm),
                keys.vm_image(vm),
                keys.vm_vcpu(vm),
                keys.vm_pages(vm),
                keys.SCHED_VMS,
                keys.SCHED_META,
                keys.EVENTS,
                keys.vm_console(vm),
            ],
            args,
        )
        return bool(created), _s(vid)

    def resolve(self, ref: str) -> str:
        """The id of the VM named or numbered ``ref``."""
        if not ref:
            raise InvalidRequest("name the VM: give its name or id (see 'ringlab vm list')")
        by_name = self.r.hget(keys.VM_NAMES, ref)
        if by_name is not None:
            return _s(by_name)
        if self.r.hexists(keys.SCHED_VMS, ref):
            return ref
        raise VmNotFound(ref)

    def vm_by_name(self, name: str) -> str | None:
        """The id of the VM named ``name`` (names only, unlike ``resolve``), or None."""
        found = self.r.hget(keys.VM_NAMES, name)
        return None if found is None else _s(found)

    def sched_entry(self, vm: str) -> dict[str, Any]:
        """The VM's scheduler entry (its live status: created, runnable, ..., or how it ended)."""
        raw = self.r.hget(keys.SCHED_VMS, vm)
        if raw is None:
            raise VmNotFound(vm)
        entry: dict[str, Any] = json.loads(raw)
        return entry

    def vm_ids(self) -> list[str]:
        return sorted((_s(k) for k in self.r.hkeys(keys.SCHED_VMS)), key=int)

    def vm_record(self, vm: str) -> tuple[dict[str, Any], dict[str, str]]:
        """(definition, {status, code, detail}) from the VM's record."""
        with self._round_trip("vm_record"):
            raw = self.r.hgetall(keys.vm_record(vm))
        if not raw:
            raise VmNotFound(vm)
        rec = {_s(k): _s(v) for k, v in raw.items()}
        return json.loads(rec.pop("def")), rec

    def vm_definitions(self, vms: list[str]) -> dict[str, dict[str, Any]]:
        """The definitions of ``vms`` (those that still exist), in one round trip."""
        if not vms:
            return {}
        pipe = self.r.pipeline(transaction=False)
        for vm in vms:
            pipe.hget(keys.vm_record(vm), "def")
        with self._round_trip("vm_definitions"):
            found = pipe.execute()
        return {vm: json.loads(raw) for vm, raw in zip(vms, found) if raw is not None}

    def vm_image(self, vm: str) -> bytes:
        blob = self.r.get(keys.vm_image(vm))
        if blob is None:
            raise VmNotFound(vm)
        return bytes(blob)

    def vm_vcpu_summary(self, vm: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], int]:
        """(state, stats, vmm, generation) without the pages."""
        with self._round_trip("vm_vcpu_summary"):
            raw = self.r.hgetall(keys.vm_vcpu(vm))
        if not raw:
            raise VmNotFound(vm)
        rec = {_s(k): v for k, v in raw.items()}
        return (
            json.loads(rec["state"]),
            json.loads(rec["stats"]),
            json.loads(rec["vmm"]),
            int(rec["generation"]),
        )

    def control(self, vm: str, action: str) -> str:
        """start / pause / resume / stop; returns the new status."""
        ok, what = self.scripts(
            "control",
            [keys.SCHED_VMS, keys.SCHED_META, keys.vm_record(vm), keys.EVENTS],
            [vm, action, time.time()],
        )
        if not ok:
            if _s(what) == "no such VM":
                raise VmNotFound(vm)
            raise WrongState(f"cannot {action} VM {vm}: {_s(what)}")
        return _s(what)

    def reboot_vm(
        self,
        vm: str,
        state: dict[str, Any],
        stats: dict[str, Any],
        entry: dict[str, Any],
        pages: dict[int, bytes],
        console: bytes = b"",
    ) -> tuple[bool, str]:
        """Boot an ended VM afresh (lua/reboot_vm.lua): (True, boot number) when done, (False,
        status) when the VM has not ended, and nothing changed.  ``console``: as for
        ``create_vm``."""
        args: list[Any] = [vm, json.dumps(state), json.dumps(stats), json.dumps(entry), time.time(), console]
        for number, blob in sorted(pages.items()):
            args += [number, blob]
        done, what = self.scripts(
            "reboot_vm",
            [
                keys.SCHED_VMS,
                keys.SCHED_META,
                keys.vm_record(vm),
                keys.vm_vcpu(vm),
                keys.vm_pages(vm),
                keys.vm_console(vm),
                keys.EVENTS,
            ],
            args,
        )
        if not done and not _s(what):
            raise VmNotFound(vm)
        return bool(done), _s(what)

    def destroy_vm(self, vm: str) -> bool:
        definition, _ = self.vm_record(vm)
        done = self.scripts(
            "destroy_vm",
            [keys.VM_NAMES, keys.SCHED_VMS, keys.SCHED_META, keys.EVENTS, *keys.vm_keys(vm)],
            [vm, definition.get("name", ""), time.time()],
        )
        return bool(done)

    # -- vCPU contexts and commits ---------------------------------------------------------------
    def generation(self, vm: str) -> int:
        return int(self.r.hget(keys.vm_vcpu(vm), "generation") or 0)

    def load_vcpu(self, vm: str) -> VcpuContext:
        """The VM's last commit: registers, statistics, VMM state and every stored page, read in
        one MULTI/EXEC so they belong to the same commit."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hgetall(keys.vm_vcpu(vm))
        pipe.hgetall(keys.vm_pages(vm))
        pipe.hget(keys.vm_record(vm), "def")
        with self._round_trip("load_vcpu"):
            vcpu, pages, definition = pipe.execute()
        if not vcpu or definition is None:
            raise VmNotFound(vm)
        rec = {_s(k): v for k, v in vcpu.items()}
        definition = json.loads(definition)
        return VcpuContext(
            generation=int(rec["generation"]),
            state=json.loads(rec["state"]),
            stats=json.loads(rec["stats"]),
            vmm=json.loads(rec["vmm"]),
            pages={int(k): bytes(v) for k, v in pages.items()},
            memory_size=int(definition["memory_size"]),
            definition=definition,
        )

    def commit(self, c: Commit) -> int:
        """Apply one fenced commit; returns the new generation.  Raises ``StaleLease`` when the
        token is no longer the VM's grant (nothing is written then)."""
        args: list[Any] = [
            c.vm,
            c.token,
            c.base_generation,
            json.dumps(c.state),
            json.dumps(c.stats),
            json.dumps(c.vmm),
            c.console,
            c.status,
            "" if c.code is None else c.code,
            c.detail,
            time.time(),
            "1" if fencing_enabled() else "0",
        ]
        for number, blob in sorted((c.pages or {}).items()):
            args += [number, blob]
        with self._round_trip("commit"):
            result = self.scripts(
                "commit",
                [
                    keys.SCHED_VMS,
                    keys.SCHED_META,
                    keys.vm_vcpu(c.vm),
                    keys.vm_pages(c.vm),
                    keys.vm_console(c.vm),
                    keys.vm_record(c.vm),
                    keys.EVENTS,
                    keys.COMMITS,
                ],
                args,
            )
        if not result[0]:
            raise StaleLease(f"commit for VM {c.vm} refused: {_s(result[1])}")
        return int(result[1])

    # -- scheduler -------------------------------------------------------------------------------
    def sched_snapshot(self) -> tuple[int, dict[str, dict[str, Any]]]:
        pipe = self.r.pipeline(transaction=True)
        pipe.hget(keys.SCHED_META, "version")
        pipe.hgetall(keys.SCHED_VMS)
        with self._round_trip("sched_snapshot"):
            version, flat = pipe.execute()
        return int(version or 0), {_s(k): json.loads(v) for k, v in flat.items()}

    def grant(
        self,
        *,
        version: int,
        pcpu: str,
        now: float,
        lease_seconds: float,
        chosen: str | None,
        updates: dict[str, dict[str, Any]],
        events: list[dict[str, str]],
        busy_seconds: float = 0.0,
        scheduler_seconds: float = 0.0,
        slices: int = 0,
        world_switches: int = 0,
        round_trips: int = 0,
    ) -> GrantResult:
        args: list[Any] = [
            version,
            pcpu,
            now,
            lease_seconds,
            chosen or "",
            repr(busy_seconds),
            repr(scheduler_seconds),
            slices,
            world_switches,
            round_trips,
            len(updates),
        ]
        for vm, entry in updates.items():
            args += [vm, json.dumps(entry)]
        args += [json.dumps(e) for e in events]
        with self._round_trip("grant"):
            result = self.scripts(
                "grant",
                [keys.SCHED_VMS, keys.SCHED_META, keys.FENCE, keys.EVENTS, keys.pcpu_stats(pcpu)],
                args,
            )
        if result[0]:
            return GrantResult(True, int(result[1]), int(result[2]), _entries(result[3]))
        return GrantResult(False, 0, int(result[2]), _entries(result[3]))

    # -- consoles and events ---------------------------------------------------------------------
    def console_read(
        self, vm: str, after: str = "0-0", block_ms: int | None = None
    ) -> list[tuple[str, bytes]]:
        reply = self.r.xread({keys.vm_console(vm): after or "0-0"}, count=1000, block=block_ms)
        out: list[tuple[str, bytes]] = []
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                out.append((_s(entry_id), bytes(fields[b"data"])))
        return out

    def console_all(self, vm: str) -> bytes:
        return b"".join(bytes(f[b"data"]) for _id, f in self.r.xrange(keys.vm_console(vm)))

    # -- the flight recorder ---------------------------------------------------------------------
    def flight_append(self, vm: str, records: list[dict[str, Any]], keep: int) -> None:
        """Add one slice's flight records (``ringlab.vmm.recorder``) to the VM's capped stream,
        which keeps about the last ``keep`` slices; nothing once the VM is destroyed."""
        with self._round_trip("flight_append"):
            self.scripts(
                "flight_append",
                [keys.vm_record(vm), keys.vm_flight(vm)],
                [json.dumps(records, separators=(",", ":")), keep],
            )

    def flight_read(self, vm: str, slices: int = 0) -> list[dict[str, Any]]:
        """The VM's recorded slices, oldest first (the last ``slices`` of them; 0: all kept)."""
        with self._round_trip("flight_read"):
            if slices:
                entries = list(reversed(self.r.xrevrange(keys.vm_flight(vm), count=slices)))
            else:
                entries = self.r.xrange(keys.vm_flight(vm))
        out: list[dict[str, Any]] = []
        for _id, fields in entries:
            out.extend(json.loads(fields[b"records"]))
        return out

    def events_read(self, after: str, block_ms: int | None = None, count: int = 1000) -> list[dict[str, str]]:
        reply = self.r.xread({keys.EVENTS: after}, count=count, block=block_ms)
        out = []
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                out.append({"cursor": _s(entry_id)} | {_s(k): _s(v) for k, v in fields.items()})
        return out

    def commits_read(self, after: str = "0-0", count: int = 10_000) -> list[dict[str, str]]:
        """The commit log after ``after`` (lua/commit.lua appends every applied or refused commit):
        each entry's fields as strings, with its ``cursor``, oldest first."""
        entries = self.r.xrange(keys.COMMITS, f"({after}" if after != "0-0" else "-", "+", count=count)
        return [{"cursor": _s(i)} | {_s(k): _s(v) for k, v in f.items()} for i, f in entries]

    def add_event(self, kind: str, vm: str, detail: str) -> None:
        """Append an event to the deployment's stream (the lifecycle scripts append theirs
        themselves, in the same step as the change they record)."""
        fields = {"kind": kind, "vm": vm, "pcpu": "", "detail": detail, "time": time.time()}
        with self._round_trip("add_event"):
            self.r.xadd(keys.EVENTS, fields, maxlen=100_000, approximate=True)

    def events_last_id(self) -> str:
        info = self.r.xrevrange(keys.EVENTS, count=1)
        return _s(info[0][0]) if info else "0-0"

    # -- pCPUs -----------------------------------------------------------------------------------
    def register_pcpu(self, pcpu: str, address: str) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(keys.PCPUS, pcpu, address)
        pipe.set(keys.pcpu_alive(pcpu), address, px=PCPU_TTL_MS)
        pipe.execute()

    def pcpu_alive(self, pcpu: str) -> bool:
        return bool(self.r.exists(keys.pcpu_alive(pcpu)))

    def pcpus(self) -> dict[str, tuple[str, bool]]:
        """pcpu id -> (address, alive)."""
        found = {_s(k): _s(v) for k, v in self.r.hgetall(keys.PCPUS).items()}
        if not found:
            return {}
        pipe = self.r.pipeline(transaction=False)
        for pcpu in found:
            pipe.exists(keys.pcpu_alive(pcpu))
        alive = pipe.execute()
        return {p: (addr, bool(a)) for (p, addr), a in zip(found.items(), alive)}

    def pcpu_stats(self, pcpu: str) -> dict[str, float]:
        return {_s(k): float(v) for k, v in self.r.hgetall(keys.pcpu_stats(pcpu)).items()}

    def renew_driver(self, pcpu: str, owner: str, ttl_ms: int) -> bool:
        with self._round_trip("renew_driver"):
            return bool(self.scripts("renew_driver", [keys.pcpu_driver(pcpu)], [owner, ttl_ms]))

    def release_driver(self, pcpu: str, owner: str) -> None:
        if _s(self.r.get(keys.pcpu_driver(pcpu))) == owner:
            self.r.delete(keys.pcpu_driver(pcpu))

    # -- guests ----------------------------------------------------------------------------------
    def claim_mix_index(self, name: str, replica: str) -> int:
        """0, 1, 2, ... across identical guest replicas in order of arrival; a replica that
        restarts with the same identity gets its index back (and so re-attaches to its VM)."""
        return int(self.scripts("claim_mix", [keys.guest_mix(name)], [replica]))
