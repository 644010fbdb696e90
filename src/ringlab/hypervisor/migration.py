"""Live migration by pre-copy, as Xen and KVM do it (Clark et al., "Live Migration of Virtual
Machines", NSDI 2005): the source deployment copies every page of a VM to the destination while
the VM runs on, then, round after round, the pages it dirtied meanwhile, until what is left
would take no longer than the target downtime (or the round limit is reached: a VM that dirties
pages faster than the link carries them never converges); then it pauses the VM, copies the
last dirty pages with the VM's whole state (stop-and-copy), releases the VM and lets the
destination run it.

Memory comes from the store: each round reads the VM's last commit (registers, statistics and
every page, read together) and sends the pages whose content changed since they were last sent
(a SHA-256 per page: the commits already carry only the pages a slice changed, and comparing
digests finds exactly those changed since the previous round, whichever commits changed them).
The VM's state at the last commit - the VMM's for it (shadow tables, the technique's own state)
as well as the vCPU's - is rebuilt here by replaying the VM from its boot to that commit, as a
replica that has no copy of a VM does (``boot.snapshot_at``), and sent, after the last dirty
pages, as a snapshot file with no pages.  The destination lays the state over the pages it holds
and checks that the memory they make is the memory of the state (``memory_digest``) before it
defines the VM.

The link is modelled: ``bandwidth`` bytes per second, each round taking at least its bytes'
time on it (the source waits out the rest), so that a lab can vary the link and see the rounds
and the downtime change.  Downtime is reported as the wall time the VM was paused (which
includes the replay here, reported apart) and as the stop-and-copy round's time on the link,
also in the cost model's cycles.

Safety: the VM runs here until the destination holds the whole VM (created, not started); then,
as libvirt does, the destination's copy is started while this one stays paused, and only then is
this one released (destroyed).  Any failure before the destination's copy runs aborts it there
(an ABORT destroys a committed copy never started) and resumes the VM here.  If the destination
stops answering while starting it, whether it runs there cannot be known: the VM stays paused
here and the error says so: never two running copies.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from ringlab.errors import RinglabError
from ringlab.hypervisor.boot import snapshot_at
from ringlab.machine.memory import PAGE_SIZE
from ringlab.sched.credit import TERMINAL
from ringlab.vmm.snapshot import encode_snapshot

__all__ = [
    "CLOCK_HZ",
    "DEFAULT_BANDWIDTH",
    "DEFAULT_MAX_ROUNDS",
    "DEFAULT_TARGET_DOWNTIME",
    "PAGES_PER_CALL",
    "Destination",
    "MigrationFailed",
    "MigrationOptions",
    "MigrationReport",
    "MigrationSource",
    "Round",
    "memory_digest",
    "migrate",
]

DEFAULT_BANDWIDTH = 125_000_000
"""Bytes per second of the modelled link: 1 Gbit/s, as in Clark et al.'s testbed."""
DEFAULT_MAX_ROUNDS = 30
"""Xen's limit on pre-copy iterations (``xc_domain_save``) is 29 after the first full copy."""
DEFAULT_TARGET_DOWNTIME = 0.05
"""Seconds the stop-and-copy round may take on the link: QEMU's default (``downtime-limit`` 300
ms) is for gigabytes; a teaching VM of a few MiB meets 50 ms."""
CLOCK_HZ = 3.8e9
"""The cost model's clock (``costs.P4_2006``: the 3.8 GHz Pentium 4 of Adams and Agesen)."""
PAGES_PER_CALL = 256
"""Pages per PAGES step (1 MiB): each call well under gRPC's message limit."""


class MigrationFailed(RinglabError):
    """Raised when a migration cannot go on; ``where`` says in which phase."""

    def __init__(self, message: str, where: str = "") -> None:
        super().__init__(message)
        self.where = where


@dataclass(frozen=True)
class MigrationOptions:
    max_rounds: int = DEFAULT_MAX_ROUNDS
    target_downtime: float = DEFAULT_TARGET_DOWNTIME
    bandwidth: int = DEFAULT_BANDWIDTH
    name: str = ""
    """The VM's name at the destination ("": its name here)."""
    to: str = ""
    """Where it goes (for the events: the destination's HOST:PORT)."""


@dataclass(frozen=True)
class Round:
    number: int
    pages: int
    bytes: int
    link_seconds: float
    wall_seconds: float
    retired: int
    stop_and_copy: bool = False


@dataclass
class MigrationReport:
    vm: str
    name: str
    destination_vm: str = ""
    rounds: list[Round] = field(default_factory=list)
    total_seconds: float = 0.0
    downtime_seconds: float = 0.0
    downtime_link_seconds: float = 0.0
    converged: bool = True
    rebuild_seconds: float = 0.0
    started: bool = False
    """Whether the destination runs it (a VM created or paused here arrives created)."""

    @property
    def downtime_cycles(self) -> int:
        return round(self.downtime_link_seconds * CLOCK_HZ)


class Committed(Protocol):
    """A VM's last commit as the store reads it (``store.state.VcpuContext``)."""

    stats: dict[str, Any]
    pages: dict[int, bytes]


class MigrationSource(Protocol):
    """What migration needs of the source deployment's store."""

    def vm_record(self, vm: str) -> tuple[dict[str, Any], dict[str, str]]: ...

    def vm_image(self, vm: str) -> bytes: ...

    def load_vcpu(self, vm: str) -> Committed: ...

    def sched_entry(self, vm: str) -> dict[str, Any]: ...

    def control(self, vm: str, action: str) -> str: ...

    def destroy_vm(self, vm: str) -> bool: ...

    def add_event(self, kind: str, vm: str, detail: str) -> None: ...


class Destination(Protocol):
    """The destination deployment's side (``Hypervisor.ReceiveMigration``, then ``StartVm``)."""

    def begin(self, migration: str, name: str) -> None: ...

    def pages(self, migration: str, pages: Mapping[int, bytes]) -> int: ...

    def commit(self, migration: str, snapshot: bytes, memory_sha256: str) -> str: ...

    def abort(self, migration: str) -> None: ...

    def start(self, vm: str) -> None: ...

    def status(self, vm: str) -> str: ...


class _Unknown(Exception):
    """The destination stopped answering while it was asked to start the VM."""


def _start_there(destination: Destination, vm: str, name: str) -> None:
    """Start the destination's copy; raise if it did not start (the caller aborts and resumes
    the source), ``_Unknown`` if whether it did cannot be known."""
    try:
        destination.start(vm)
        return
    except Exception:
        pass
    try:
        status = destination.status(vm)
    except Exception:
        raise _Unknown() from None
    if status == "created":
        raise MigrationFailed(f"the destination did not start VM {name!r}: it runs on here", "start")
    # it runs there (the start's answer was lost): the migration is done


def memory_digest(pages: Mapping[int, bytes]) -> str:
    """The SHA-256 of a memory given as its pages (those all zeros left out, as a snapshot keeps
    them): what source and destination compare before the destination defines the VM."""
    h = hashlib.sha256()
    for number in sorted(pages):
        page = pages[number]
        if page.count(0) != len(page):
            h.update(number.to_bytes(4, "big"))
            h.update(page)
    return h.hexdigest()


def _digest(page: bytes) -> bytes:
    return hashlib.sha256(page).digest()


def migrate(
    store: MigrationSource,
    vm: str,
    destination: Destination,
    options: MigrationOptions = MigrationOptions(),
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> MigrationReport:
    """Move ``vm`` to ``destination`` by pre-copy (see the module's description)."""
    definition, _record = store.vm_record(vm)
    status = store.sched_entry(vm).get("status")
    if status in TERMINAL:
        raise MigrationFailed(
            f"VM {definition.get('name', vm)!r} has ended ({status}): there is nothing to move "
            "(a snapshot or a new VM is what you want)",
            "check",
        )
    name = options.name or str(definition.get("name", vm))
    report = MigrationReport(vm=vm, name=name)
    migration = uuid.uuid4().hex
    sent: dict[int, bytes] = {}
    paused_here = False
    started = clock()

    def link(nbytes: int, since: float) -> float:
        """Wait out the rest of ``nbytes``' time on the modelled link; returns that time."""
        seconds = nbytes / options.bandwidth
        rest = seconds - (clock() - since)
        if rest > 0:
            sleep(rest)
        return seconds

    def dirty(pages: Mapping[int, bytes]) -> dict[int, bytes]:
        changed = {p: page for p, page in pages.items() if sent.get(p) != _digest(page)}
        for p in sent.keys() - pages.keys():  # (the store never drops a page; a zero page if it did)
            changed[p] = bytes(PAGE_SIZE)
        return changed

    where = options.to or "the destination"
    try:
        destination.begin(migration, name)
        store.add_event("migrating", vm, f"to {where} as {name}")
        budget = options.target_downtime * options.bandwidth / PAGE_SIZE
        number = 0
        while True:
            round_started = clock()
            committed = store.load_vcpu(vm)
            changed = dirty(committed.pages)
            if number > 0 and (len(changed) <= budget or number >= options.max_rounds):
                report.converged = len(changed) <= budget
                break
            items = sorted(changed.items())
            for i in range(0, len(items), PAGES_PER_CALL):
                destination.pages(migration, dict(items[i : i + PAGES_PER_CALL]))
            sent.update((p, _digest(page)) for p, page in changed.items())
            nbytes = len(changed) * PAGE_SIZE
            seconds = link(nbytes, round_started)
            retired = int(committed.stats.get("retired", 0))
            report.rounds.append(
                Round(number, len(changed), nbytes, seconds, clock() - round_started, retired)
            )
            number += 1
            if status in ("created", "paused"):  # it does not run: one round is all
                number = options.max_rounds

        # stop-and-copy
        paused_at = clock()
        if status not in ("created", "paused"):
            store.control(vm, "pause")
            paused_here = True
        committed = store.load_vcpu(vm)
        retired = int(committed.stats.get("retired", 0))
        rebuild = clock()
        snap = snapshot_at(definition, store.vm_image(vm), retired)
        report.rebuild_seconds = clock() - rebuild
        # The replay's memory is the state's: it stops where the commit's count of instructions
        # is reached, which may be before what the commit holds beyond it (a tick delivered to an
        # idle guest retires nothing): an earlier point of the same run, which goes on the same.
        changed = dirty(snap.pages)
        items = sorted(changed.items())
        for i in range(0, len(items), PAGES_PER_CALL):
            destination.pages(migration, dict(items[i : i + PAGES_PER_CALL]))
        state = encode_snapshot(replace(snap, pages={}))  # the rest of the VM: no pages
        new_vm = destination.commit(migration, state, memory_digest(snap.pages))
        nbytes = len(changed) * PAGE_SIZE + len(state)
        seconds = link(nbytes, paused_at)
        report.rounds.append(Round(number, len(changed), nbytes, seconds, clock() - paused_at, retired, True))
        report.downtime_link_seconds = seconds
        report.destination_vm = new_vm
        # The hand-over, as libvirt does it: the destination's copy runs first, while the source's
        # stays paused; a start that fails is aborted and the source resumes.  A VM that was not
        # running here (created, or paused by its operator) arrives created: start it there.
        report.started = status not in ("created", "paused")
        if report.started:
            _start_there(destination, new_vm, name)
    except _Unknown:  # whether it runs there cannot be known: keep it paused here, never twice
        with contextlib.suppress(Exception):
            store.add_event(
                "migration-failed", vm, f"to {where}: the destination stopped answering at its start"
            )
        raise MigrationFailed(
            f"the destination {where} stopped answering while starting VM {name!r}: it may run there. "
            f"It stays paused here: resume it here ('ringlab vm resume {name}') only if it is not "
            "running there",
            "start",
        ) from None
    except BaseException as exc:
        with contextlib.suppress(Exception):  # unreachable: its copy expires there (never started)
            destination.abort(migration)
        if paused_here:
            store.control(vm, "resume")
        with contextlib.suppress(Exception):
            store.add_event("migration-failed", vm, f"to {where}: {exc}"[:300])
        raise
    store.add_event(
        "migrated",
        vm,
        f"to {where} as {name} (id {report.destination_vm}): {len(report.rounds)} rounds, "
        f"{sum(r.pages for r in report.rounds)} pages, downtime {report.downtime_link_seconds * 1000:.1f} ms "
        "on the link",
    )
    store.destroy_vm(vm)  # released: the destination's copy is the VM now
    end = clock()
    report.downtime_seconds = end - paused_at
    report.total_seconds = end - started
    return report
