"""Live migration over gRPC: the destination as the source sees it (``GrpcDestination``, the
``migration.Destination`` port: ``Hypervisor/ReceiveMigration`` and ``StartVm`` of the other
deployment), and what a destination holds of the migrations coming in (``Incoming``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import grpc

from ringlab.machine.memory import PAGE_SIZE
from ringlab.rpc import open_channel
from ringlab.rpc.errors import InvalidField
from ringlab.store import AlreadyExists, DeploymentError, Exhausted, VmNotFound
from ringlab.v1 import hypervisor_pb2, hypervisor_pb2_grpc

__all__ = ["CALL_TIMEOUT", "GrpcDestination", "Incoming", "IncomingMigration"]

CALL_TIMEOUT = 60.0
"""Seconds for one step at the destination (a COMMIT boots the VM there)."""
_STEP = hypervisor_pb2.MigrationChunk


class GrpcDestination:
    """The destination deployment's hypervisor at ``address``, called with ``token``."""

    def __init__(self, address: str, token: str) -> None:
        self._channel = open_channel(address, token)
        self._stub = hypervisor_pb2_grpc.HypervisorStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def _step(self, chunk: hypervisor_pb2.MigrationChunk) -> hypervisor_pb2.MigrationAck:
        ack: hypervisor_pb2.MigrationAck = self._stub.ReceiveMigration(chunk, timeout=CALL_TIMEOUT)
        return ack

    def begin(self, migration: str, name: str) -> None:
        self._step(_STEP(migration=migration, step=_STEP.STEP_BEGIN, name=name))

    def pages(self, migration: str, pages: Mapping[int, bytes]) -> int:
        return self._step(_STEP(migration=migration, step=_STEP.STEP_PAGES, pages=dict(pages))).pages_held

    def commit(self, migration: str, snapshot: bytes, memory_sha256: str) -> str:
        chunk = _STEP(
            migration=migration, step=_STEP.STEP_COMMIT, snapshot=snapshot, memory_sha256=memory_sha256
        )
        return self._step(chunk).vm

    def abort(self, migration: str) -> None:
        self._step(_STEP(migration=migration, step=_STEP.STEP_ABORT))

    def start(self, vm: str) -> None:
        last: grpc.RpcError | None = None
        for _ in range(3):  # the VM is released at the source: try hard to start it here
            try:
                self._stub.StartVm(hypervisor_pb2.VmRef(vm=vm), timeout=CALL_TIMEOUT)
                return
            except grpc.RpcError as exc:
                last = exc
                time.sleep(0.5)
        assert last is not None
        raise last

    def status(self, vm: str) -> str:
        """The VM's status there, as the store names it (``created``, ``running``, ...)."""
        reply = self._stub.DescribeVm(hypervisor_pb2.VmRef(vm=vm), timeout=CALL_TIMEOUT)
        return hypervisor_pb2.VmStatus.Name(reply.status).removeprefix("VM_STATUS_").lower()


class MigrationNotFound(VmNotFound):
    """NOT_FOUND: a step for a migration this destination does not hold."""

    def __init__(self, message: str) -> None:
        DeploymentError.__init__(self, message)
        self.ref = ""


@dataclass
class IncomingMigration:
    name: str
    max_pages: int
    pages: dict[int, bytes] = field(default_factory=dict)
    touched: float = field(default_factory=time.monotonic)


class Incoming:
    """The migrations a destination is receiving, by the source's id: their name and the pages so
    far.  At most ``limit`` at once; one untouched for ``expiry`` seconds is dropped (its source
    died or gave up), as is every one when this hypervisor restarts."""

    def __init__(self, limit: int = 8, expiry: float = 600.0) -> None:
        self.limit = limit
        self.expiry = expiry
        self._lock = threading.Lock()
        self._by_id: dict[str, IncomingMigration] = {}
        self.committed: dict[str, str] = {}
        """The VM each recently committed migration made (an ABORT after COMMIT destroys it while
        it is still only created)."""

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, m in self._by_id.items() if now - m.touched > self.expiry]:
            del self._by_id[key]

    def begin(self, migration: str, name: str, max_memory: int) -> None:
        if not migration:
            raise InvalidField("migration", "name the migration in 'migration' (the source's id for it)")
        with self._lock:
            self._expire()
            if migration in self._by_id:
                raise AlreadyExists(f"migration {migration[:40]!r} has begun already")
            if any(m.name == name for m in self._by_id.values()):
                raise AlreadyExists(f"a VM named {name!r} is being moved here already")
            if len(self._by_id) >= self.limit:
                raise Exhausted(f"{self.limit} migrations are coming in already: try again when one is done")
            self._by_id[migration] = IncomingMigration(name, max_memory // PAGE_SIZE)

    def get(self, migration: str) -> IncomingMigration:
        with self._lock:
            self._expire()
            found = self._by_id.get(migration)
        if found is None:
            raise MigrationNotFound(
                f"no migration {migration[:40]!r} is coming in here (never begun, aborted, expired "
                "or this hypervisor restarted): the source must begin again"
            )
        found.touched = time.monotonic()
        return found

    def add_pages(self, migration: str, pages: Mapping[int, bytes]) -> int:
        incoming = self.get(migration)
        for number, page in pages.items():
            if len(page) != PAGE_SIZE or number >= incoming.max_pages:
                raise InvalidField(
                    "pages",
                    f"page {number} ({len(page)} bytes) is not a 4 KiB page of a VM this deployment "
                    f"allows ({incoming.max_pages} pages)",
                )
        with self._lock:
            incoming.pages.update(pages)
            return len(incoming.pages)

    def drop(self, migration: str, committed: str = "") -> IncomingMigration | None:
        """Forget the migration (and with ``committed``, remember for an ABORT the VM it made)."""
        with self._lock:
            if committed:
                self.committed[migration] = committed
                while len(self.committed) > 64:
                    del self.committed[next(iter(self.committed))]
            return self._by_id.pop(migration, None)
