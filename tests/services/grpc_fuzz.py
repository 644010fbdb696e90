"""The gRPC fuzzer's parts (tests/services/test_grpc_fuzz.py runs them): a real deployment in
processes of its own, every RPC of every service enumerated from the service descriptors, three
families of requests, and a run that sends them and judges every answer.

- ``random``: a message of the method's request type filled field by field from its descriptor
  (every scalar type, enums in and out of range, nested messages, repeated fields, maps), each
  value drawn from the field's pool: what a real client sends (live VM ids and names, cursors the
  deployment handed out, workloads, images, register names) mixed with the extremes (empty, huge,
  NUL, non-ASCII, out of range, NaN, malformed JSON, nested 10,000 deep).
- ``mutated``: a valid request (a random one, or one of the method's seeds: what the CLI and
  the hypervisor send) serialized, then bytes flipped, inserted, deleted, duplicated or cut.
- ``raw``: bytes that are no message at all, or a valid message's tag with garbage after it.

Every request is sent as bytes (``channel.unary_unary(path)`` without a serializer), so a request
that does not parse reaches the server as it is.  Request ``i`` of a run is drawn from
``random.Random(f"{seed}:{i}")``: a failure names its index, and ``request(rpcs, pools, seed, i)``
makes it again.

The run asserts nothing itself: it counts answers by RPC and status code, keeps every INTERNAL or
UNKNOWN (with the request) and every INVALID_ARGUMENT without a ``google.rpc.BadRequest`` naming
a field, samples each service's resident memory, and cleans up the VMs its requests created
(a VM a fuzzer creates is a legitimate VM: keeping hundreds of them alive would measure their
memory, not a leak).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import grpc
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message as pb_message
from google.protobuf import message_factory
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from ringlab.guestos.build import WORKLOADS, build_image
from ringlab.isa import MNEMONICS
from ringlab.machine.state import CpuState
from ringlab.machine.stats import Stats, stats_to_json
from ringlab.rpc import open_channel
from ringlab.store import LocalRedis, SharedState
from ringlab.v1 import common_pb2, cpu_pb2, guest_pb2, hypervisor_pb2, hypervisor_pb2_grpc
from ringlab.vmm import VM, make_technique
from ringlab.vmm.snapshot import encode_snapshot, snapshot

__all__ = [
    "FAMILIES",
    "Deployment",
    "Outcome",
    "Pools",
    "bad_request_fields",
    "Rpc",
    "enumerate_rpcs",
    "fuzz",
    "request",
    "rss_kib",
]

FAMILIES = ("random", "mutated", "raw")
RESIDENT = ("resident-hello", "resident-created", "resident-loop")
"""The VMs the run starts with (besides the guest service's own): they stay, whatever the requests
do to them (started, paused, stopped, rebooted); every other VM is destroyed between batches."""
UNARY_DEADLINE = 2.0
STREAM_DEADLINE = 1.0
STREAM_MESSAGES = 20
"""A stream is read for at most this many messages (then cancelled) or its deadline."""
BUDGET_CAP = 20_000
"""Run budgets above this and up to the per-call maximum are cut to it (a 50-million-instruction
run is a legitimate request that takes seconds of a busy machine's CPU: not what a fuzzer is for)."""


# -- the deployment --------------------------------------------------------------------------------
@dataclass
class Service:
    name: str
    process: subprocess.Popen[str]
    address: str
    log: Path


def _start(name: str, args: list[str], log: Path, env: dict[str, str]) -> Service:
    handle = log.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", f"ringlab_{name}", "--listen", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE,
        stderr=handle,
        text=True,
        env=env,
    )
    handle.close()
    assert process.stdout is not None
    line = process.stdout.readline().split()  # READY NAME ADDRESS ...
    if line[:2] != ["READY", name]:
        process.kill()
        process.wait()
        raise RuntimeError(f"the {name} service did not start: {line}; its log: {log.read_text()[-2000:]}")
    threading.Thread(target=process.stdout.read, daemon=True).start()  # never block its stdout
    return Service(name, process, line[2], log)


@dataclass
class Deployment:
    """Redis, a cpu, a hypervisor and a guest service, each its own process."""

    redis: LocalRedis
    state: SharedState
    services: dict[str, Service]

    @classmethod
    def start(cls, folder: Path) -> Deployment:
        redis = LocalRedis.start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RINGLAB_")}
        env["RINGLAB_REDIS"] = redis.url
        services: dict[str, Service] = {}
        try:
            services["cpu"] = _start("cpu", ["--pcpu", "fuzz-pcpu"], folder / "cpu.log", env)
            services["hypervisor"] = _start(
                "hypervisor", ["--slice", "20000"], folder / "hypervisor.log", env
            )
            services["guest"] = _start(
                "guest",
                ["--hypervisor", services["hypervisor"].address, "--name", "fuzz-guest"],
                folder / "guest.log",
                env,
            )
        except BaseException:
            for service in services.values():
                service.process.kill()
                service.process.wait()
            redis.stop()
            raise
        return cls(redis, SharedState.from_url(redis.url), services)

    def stop(self) -> None:
        for service in self.services.values():
            if service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
        for service in self.services.values():
            try:
                service.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait()
            if service.process.stdout is not None:
                service.process.stdout.close()
        self.redis.stop()

    def dead(self) -> list[str]:
        """The services that exited, with their status."""
        return [
            f"{s.name} (exit {s.process.poll()})"
            for s in self.services.values()
            if s.process.poll() is not None
        ]

    def serving(self) -> dict[str, str]:
        """Each service's health, as a probe asks it."""
        out = {}
        for name, service in self.services.items():
            channel = grpc.insecure_channel(service.address)
            try:
                stub: Any = health_pb2_grpc.HealthStub(channel)
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
                out[name] = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as err:
                out[name] = err.code().name
            finally:
                channel.close()
        return out

    def rss(self) -> dict[str, int]:
        """Each service's resident memory (KiB)."""
        return {name: rss_kib(s.process.pid) for name, s in self.services.items()}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# -- the RPCs --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rpc:
    service: str
    """Which process serves it: cpu, hypervisor or guest."""
    path: str
    """/package.Service/Method"""
    method: Any
    """Its ``MethodDescriptor``."""
    request_class: type[pb_message.Message]
    streaming: bool

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 2)[-2].rsplit(".", 1)[-1] + "/" + self.method.name


SERVED_BY = {
    "ringlab.v1.Cpu": (cpu_pb2, "cpu"),
    "ringlab.v1.Hypervisor": (hypervisor_pb2, "hypervisor"),
    "ringlab.v1.Guest": (guest_pb2, "guest"),
}


def enumerate_rpcs() -> list[Rpc]:
    """Every method of every Ringlab service, from the generated modules' descriptors, and the
    health service's Check on each process."""
    out = []
    for full_name, (module, service) in SERVED_BY.items():
        descriptor = module.DESCRIPTOR.services_by_name[full_name.rsplit(".", 1)[1]]
        for method in descriptor.methods:
            if method.client_streaming:
                raise AssertionError(f"{full_name}/{method.name}: a client stream the fuzzer cannot send")
            out.append(
                Rpc(
                    service,
                    f"/{full_name}/{method.name}",
                    method,
                    message_factory.GetMessageClass(method.input_type),
                    method.server_streaming,
                )
            )
    check = health_pb2.DESCRIPTOR.services_by_name["Health"].methods_by_name["Check"]
    for service in ("cpu", "hypervisor", "guest"):
        out.append(Rpc(service, "/grpc.health.v1.Health/Check", check, health_pb2.HealthCheckRequest, False))
    return out


# -- the pools of values ----------------------------------------------------------------------------
_U32, _U64 = (1 << 32) - 1, (1 << 64) - 1
_I32 = (-(1 << 31), (1 << 31) - 1)
_I64 = (-(1 << 63), (1 << 63) - 1)


def _nasty_strings() -> list[str]:
    return [
        "",
        " ",
        "\x00",
        "a\x00b",
        "é",
        "\u202e\u0301",
        "\U0001f600" * 3,
        "../../etc/passwd",
        "%s%n",
        "${RINGLAB_TOKEN}",
        "'; DROP TABLE vms; --",
        "*",
        "$",
        ">",
        "+",
        "-",
        "rl:{vm:1}:record",
        "x" * 64,
        "y" * 10_000,
        "z" * 300_000,
    ]


def _json_values() -> list[str]:
    return [
        "",
        "{}",
        "[]",
        "null",
        "1",
        '"x"',
        "{",
        "{'a': 1}",
        '{"retired": "x"}',
        '{"retired": -1}',
        '{"retired": 1e400}',
        '{"retired": {"a": 1}}',
        '{"exceptions": {"x": 1}}',
        '{"exceptions": [1]}',
        '{"retired_by_ring": [1, 2]}',
        '{"retired_by_ring": "abcd"}',
        '{"__class__": 1, "guest": 2}',
        '{"result": {}}',
        '{"result": {"exit": 1}}',
        '{"vmm_cycles": "many"}',
        '{"exits_by_reason": [1], "exits": "x", "started": "never"}',
        '{"exits_by_reason": {"a": "b"}}',
        "[" * 10_000 + "]" * 10_000,
        '{"a":' * 5_000 + "1" + "}" * 5_000,
        json.dumps({"k" + str(i): i for i in range(2_000)}),
    ]


@dataclass
class Pools:
    """Values worth sending, by field name (live ones refreshed from the deployment)."""

    vms: list[str] = field(default_factory=list)
    """Ids and names of VMs that exist (or existed)."""
    cursors: list[str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=lambda: [1, 2, 3])
    generations: list[int] = field(default_factory=lambda: [0, 1, 2])
    images: list[bytes] = field(default_factory=list)
    snapshots: list[bytes] = field(default_factory=list)
    """Snapshot files (RestoreVm's ``snapshot``)."""
    seeds: dict[str, list[bytes]] = field(default_factory=dict)
    """Valid requests by RPC path (what the CLI, the guest and the hypervisor send)."""

    def refresh(self, state: SharedState) -> None:
        names = {k.decode(): v.decode() for k, v in state.r.hgetall("rl:vm:names").items()}
        self.vms = sorted({*self.vms[-50:], *names, *names.values()})
        sched = {k.decode(): json.loads(v) for k, v in state.r.hgetall("rl:sched:vms").items()}
        self.tokens = sorted({int(e.get("token") or 0) for e in sched.values()} | {1, 2, 3})
        self.generations = sorted({state.generation(vm) for vm in sched} | {0, 1})
        events = state.r.xrevrange("rl:events", count=5)
        self.cursors = sorted({*self.cursors[-20:], *(i.decode() for i, _f in events)})
        for vm in list(sched)[:5]:
            for entry_id, _f in state.r.xrange(f"rl:{{vm:{vm}}}:console", count=2):
                self.cursors.append(entry_id.decode())
        self.seeds = _seeds(self, state, sched)


def _seeds(pools: Pools, state: SharedState, sched: dict[str, Any]) -> dict[str, list[bytes]]:
    """Requests as the project's own clients send them, for the mutations to start from."""
    vm = next(iter(sched), "1")
    out: dict[str, list[bytes]] = {
        "/ringlab.v1.Hypervisor/CreateVm": [
            hypervisor_pb2.CreateVmRequest(
                name="fuzz-seed", technique=common_pb2.TECHNIQUE_BT, workload="hello", start=True
            ).SerializeToString(),
            hypervisor_pb2.CreateVmRequest(
                name="fuzz-raw",
                technique=common_pb2.TECHNIQUE_NATIVE,
                kernel=common_pb2.KERNEL_FLAVOUR_NONE,
                image=pools.images[0] if pools.images else b"",
                memory_size=1 << 20,
                max_instructions=1000,
                defines={"ROUNDS": 2},
            ).SerializeToString(),
        ],
        "/ringlab.v1.Hypervisor/StreamConsole": [
            hypervisor_pb2.StreamConsoleRequest(vm=vm, after=c, follow=True).SerializeToString()
            for c in pools.cursors[-3:]
        ],
        "/ringlab.v1.Hypervisor/StreamEvents": [
            hypervisor_pb2.StreamEventsRequest(vm=vm, after=c).SerializeToString() for c in pools.cursors[-3:]
        ],
        "/ringlab.v1.Hypervisor/WaitVm": [
            hypervisor_pb2.WaitVmRequest(vm=vm, timeout_seconds=0.2).SerializeToString()
        ],
        "/ringlab.v1.Hypervisor/GetFlightRecord": [
            hypervisor_pb2.FlightRecordRequest(vm=vm, slices=n).SerializeToString() for n in (0, 1, 64)
        ],
        "/ringlab.v1.Hypervisor/SnapshotVm": [hypervisor_pb2.VmRef(vm=vm).SerializeToString()],
        "/ringlab.v1.Hypervisor/MigrateVm": [
            hypervisor_pb2.MigrateVmRequest(vm=vm, to=to, bandwidth=1 << 30, max_rounds=2).SerializeToString()
            for to in ("127.0.0.1:1", "[::1]:1", "no-such-host.invalid:50051")
        ],
        "/ringlab.v1.Hypervisor/ReceiveMigration": [
            hypervisor_pb2.MigrationChunk(
                migration="fuzz", step=step, name="fuzz-in", pages={1: bytes(4096)}
            ).SerializeToString()
            for step in hypervisor_pb2.MigrationChunk.Step.values()
        ],
        "/ringlab.v1.Hypervisor/RestoreVm": [
            hypervisor_pb2.RestoreVmRequest(
                name="fuzz-restored", snapshot=snap, start=False
            ).SerializeToString()
            for snap in pools.snapshots[:1]
        ],
        "/ringlab.v1.Guest/StreamConsole": [
            guest_pb2.GuestConsoleRequest(follow=False, after=c).SerializeToString()
            for c in pools.cursors[-3:]
        ],
    }
    try:
        vcpu = state.r.hgetall(f"rl:{{vm:{vm}}}:vcpu")
        registers = json.loads(vcpu[b"state"])
        stats = json.loads(vcpu[b"stats"])
        generation = int(vcpu[b"generation"])
    except (KeyError, ValueError):
        registers, stats, generation = CpuState().to_dict(), stats_to_json(Stats()), 0
    sync = cpu_pb2.VcpuSync(
        base=int(stats.get("retired", 0)),
        registers={k: int(v) & _U64 for k, v in registers.items()},
        stats_json=json.dumps(stats),
        pages={1: bytes(4096)},
        tlb=[-1, 0x1000, -2, 0x1000],
    )
    run = cpu_pb2.RunVcpuRequest(
        vm=vm,
        lease_token=max(pools.tokens),
        generation=generation,
        budget=1000,
        controls=common_pb2.Controls(intercept_vectors=[13, 14], intercept_mnemonics=["hlt", "mov cr,r"]),
        sync=sync,
    )
    committing = cpu_pb2.RunVcpuRequest()
    committing.CopyFrom(run)
    committing.budget = 0
    committing.commit.CopyFrom(
        cpu_pb2.CommitRequest(console=b"x", stats_json='{"vmm_cycles": 1}', vmm_state="{}", status="poweroff")
    )
    translated = cpu_pb2.RunVcpuRequest()
    translated.CopyFrom(run)
    translated.tc.CopyFrom(
        cpu_pb2.TcRun(
            vcpu={"cpl": 0, "if": 1},
            reset=True,
            install=[cpu_pb2.TcBlock(eip=0x1000, pa=0x1000, count=3)],
            drop=[cpu_pb2.TcKey(eip=0x1000, pa=0x1000)],
            adapted=[0x1000],
        )
    )
    out["/ringlab.v1.Cpu/RunVcpu"] = [m.SerializeToString() for m in (run, committing, translated)]
    return out


# -- the generators --------------------------------------------------------------------------------
_REGISTER_NAMES = list(CpuState().to_dict())
_STATS_NAMES = list(stats_to_json(Stats()))
_MNEMONICS = sorted(MNEMONICS)


def _int(rng: random.Random, signed: bool, bits: int) -> int:
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    pick = rng.random()
    if pick < 0.35:
        return rng.choice(
            [v for v in (0, 1, 2, 4096, lo, hi, hi - 1, lo + 1, 1 << 20, 64 << 20, 0x3F8) if lo <= v <= hi]
        )
    if pick < 0.7:
        return rng.randint(max(lo, -1000), min(hi, 1000))
    return rng.randint(lo, hi)


def _string(rng: random.Random, name: str, pools: Pools) -> str:
    pick = rng.random()
    if pick < 0.25:
        return rng.choice(_nasty_strings())
    if name in ("vm", "name") and pools.vms and pick < 0.75:
        return rng.choice(pools.vms) if name == "vm" or pick < 0.5 else f"fuzz-{rng.randrange(1 << 30):x}"
    if name == "after" and pick < 0.8:
        options = [
            *pools.cursors,
            "0-0",
            "0",
            "1-1",
            "$",
            "0-",
            "-0",
            "1-2-3",
            "18446744073709551615-18446744073709551615",
            "18446744073709551616-0",
            "99999999999999999999",
            "abc",
            "1.5",
            " 1-0",
        ]
        return rng.choice(options)
    if name == "workload" and pick < 0.8:
        return rng.choice([*WORKLOADS, "no-such", "HELLO"])
    if name in ("stats_json", "vmm_state") and pick < 0.85:
        return rng.choice(_json_values())
    if name == "status" and pick < 0.8:
        return rng.choice(["poweroff", "halted", "shutdown", "limit", "stopped", "running", "created", "x"])
    if name == "intercept_mnemonics" and pick < 0.8:
        return rng.choice([*_MNEMONICS, "mov cr,r", "hlt x", "nope"])
    if name == "service":
        return rng.choice(["", "ringlab.v1.Cpu", "ringlab.v1.Hypervisor", "nope"])
    length = rng.choice([0, 1, 5, 20, 100])
    return (
        "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x10FFFF)])) for _ in range(length))
        .encode("utf-8", "replace")
        .decode("utf-8", "replace")
    )


def _bytes(rng: random.Random, name: str, pools: Pools) -> bytes:
    pick = rng.random()
    if name == "image" and pools.images and pick < 0.6:
        image = rng.choice(pools.images)
        return image if pick < 0.3 else _mutate_bytes(rng, image, 3)
    if name == "snapshot" and pools.snapshots and pick < 0.6:
        snap = rng.choice(pools.snapshots)
        return snap if pick < 0.2 else _mutate_bytes(rng, snap, 3)
    if name in ("source",) and pick < 0.5:
        return bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 3, 8])))
    length = rng.choice([0, 1, 16, 4095, 4096, 4097, 65_536, 1 << 20] if pick < 0.5 else [0, 3, 50])
    return rng.randbytes(length)


def _scalar(rng: random.Random, f: Any, pools: Pools, key: str = "") -> Any:
    T = pb_descriptor.FieldDescriptor
    name = key or f.name
    t = f.type
    if t == T.TYPE_BOOL:
        return rng.random() < 0.5
    if t == T.TYPE_STRING:
        return _string(rng, name, pools)
    if t == T.TYPE_BYTES:
        return _bytes(rng, name, pools)
    if t in (T.TYPE_DOUBLE, T.TYPE_FLOAT):
        return rng.choice(
            [0.0, -1.0, 0.1, 0.5, 1.0, 2.0, float("nan"), float("inf"), -float("inf"), 1e300, 5e-324]
        )
    if t == T.TYPE_ENUM:
        values = [v.number for v in f.enum_type.values]
        return rng.choice([*values, max(values) + 1, 1000, -1, _I32[0], _I32[1]])
    signed = t in (T.TYPE_INT32, T.TYPE_INT64, T.TYPE_SINT32, T.TYPE_SINT64, T.TYPE_SFIXED32, T.TYPE_SFIXED64)
    bits = 32 if t in (T.TYPE_INT32, T.TYPE_UINT32, T.TYPE_SINT32, T.TYPE_FIXED32, T.TYPE_SFIXED32) else 64
    if name == "lease_token" and rng.random() < 0.6:
        return rng.choice(pools.tokens)
    if name in ("generation", "base") and rng.random() < 0.6:
        return rng.choice(pools.generations)
    if name == "budget":
        return rng.choice([0, 1, 10, 1000, BUDGET_CAP, 50_000_001, _U64])
    if name == "memory_size" and rng.random() < 0.6:
        return rng.choice(
            [0, 4096, 4097, 1 << 20, 4 << 20, 64 << 20, (64 << 20) + 4096, 99_999_999_999_999, _U64]
        )
    if name == "max_instructions" and rng.random() < 0.8:
        return rng.choice([0, 1, 100, 10_000, _U64])
    return _int(rng, signed, bits)


def random_message(
    rng: random.Random, cls: type[pb_message.Message], pools: Pools, depth: int = 0
) -> pb_message.Message:
    """A message of ``cls`` with a random subset of its fields set from the pools."""
    message = cls()
    for f in cls.DESCRIPTOR.fields:
        if rng.random() < 0.3:
            continue  # left unset
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            key_f, value_f = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
            target = getattr(message, f.name)
            for _ in range(rng.choice([0, 1, 3, 30] if depth < 2 else [0, 1])):
                if f.name == "registers" and rng.random() < 0.7:
                    key: Any = rng.choice([*_REGISTER_NAMES, "eax", "nope", ""])
                else:
                    key = _scalar(rng, key_f, pools, key=f.name + ".key")
                if value_f.message_type is not None:
                    target[key].CopyFrom(
                        random_message(
                            rng,
                            message_factory.GetMessageClass(cast(Any, value_f.message_type)),
                            pools,
                            depth + 1,
                        )
                    )
                else:
                    value = _scalar(rng, value_f, pools, key=f.name)
                    if f.name == "pages" and rng.random() < 0.6:
                        value = rng.randbytes(4096)
                    with contextlib.suppress(ValueError, TypeError):
                        target[key] = value
            continue
        repeated = f.is_repeated
        count = rng.choice([0, 1, 2, 5, 100] if depth < 2 else [0, 1]) if repeated else 1
        for _ in range(count):
            if f.message_type is not None:
                if depth >= 4:
                    break
                sub = random_message(
                    rng, message_factory.GetMessageClass(cast(Any, f.message_type)), pools, depth + 1
                )
                if repeated:
                    getattr(message, f.name).add().CopyFrom(sub)
                else:
                    getattr(message, f.name).CopyFrom(sub)
                continue
            value = _scalar(rng, f, pools)
            try:
                if repeated:
                    getattr(message, f.name).append(value)
                else:
                    setattr(message, f.name, value)
            except (ValueError, TypeError):
                pass
    return message


def _mutate_bytes(rng: random.Random, data: bytes, rounds: int) -> bytes:
    out = bytearray(data)
    for _ in range(rounds):
        op = rng.randrange(6)
        at = rng.randrange(len(out) + 1)
        if op == 0 and out:  # flip bits
            out[at % len(out)] ^= 1 << rng.randrange(8)
        elif op == 1:  # insert bytes
            out[at:at] = rng.randbytes(rng.choice([1, 2, 8, 100]))
        elif op == 2:  # delete a run
            del out[at : at + rng.choice([1, 4, 64])]
        elif op == 3 and out:  # duplicate a run
            end = min(len(out), at + rng.choice([2, 16, 256]))
            out[at:at] = out[at:end] * rng.choice([1, 2, 50])
        elif op == 4:  # cut
            del out[at:]
        elif out:  # a byte set to an extreme
            out[at % len(out)] = rng.choice([0x00, 0x7F, 0x80, 0xFF])
    return bytes(out)


def _raw(rng: random.Random) -> bytes:
    pick = rng.randrange(5)
    if pick == 0:
        return rng.randbytes(rng.choice([1, 2, 7, 64, 1000, 100_000]))
    if pick == 1:  # a field tag, then a length that lies
        return bytes([rng.randrange(1, 16) << 3 | 2]) + b"\xff\xff\xff\xff\x0f" + rng.randbytes(10)
    if pick == 2:  # a varint that never ends
        return bytes([rng.randrange(1, 16) << 3]) + b"\xff" * rng.choice([10, 11, 1000])
    if pick == 3:  # groups (deprecated wire types 3/4), unknown fields, field number 0
        return rng.choice([b"\x0b\x0c", b"\x0b" * 100, b"\x00\x01", b"\xfa\xff\xff\xff\x0f\x00", b"\x0c"])
    # deeply nested length-delimited fields (a message in a message in ...)
    depth = rng.choice([10, 100, 200])
    out = b""
    for _ in range(depth):
        out = bytes([(rng.randrange(1, 12) << 3) | 2]) + _varint(len(out)) + out
    return out


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _tame(rpc: Rpc, data: bytes) -> bytes:
    """A request that parses into a run of more than ``BUDGET_CAP`` instructions (and at most the
    per-call maximum) is cut to ``BUDGET_CAP``: a fair request, but seconds of CPU each."""
    if rpc.request_class is not cpu_pb2.RunVcpuRequest:
        return data
    try:
        parsed = cpu_pb2.RunVcpuRequest.FromString(data)
    except Exception:
        return data
    if BUDGET_CAP < parsed.budget <= 50_000_000:
        parsed.budget = BUDGET_CAP
        return parsed.SerializeToString()
    return data


def request(rpcs: list[Rpc], pools: Pools, seed: int, index: int) -> tuple[Rpc, str, bytes]:
    """Request ``index`` of the run seeded ``seed``: (the RPC, the family, the bytes)."""
    rng = random.Random(f"{seed}:{index}")
    rpc = rpcs[index % len(rpcs)]
    family = FAMILIES[(index // len(rpcs)) % len(FAMILIES)]
    if family == "random":
        data = random_message(rng, rpc.request_class, pools).SerializeToString()
    elif family == "mutated":
        seeds = pools.seeds.get(rpc.path, [])
        base = (
            rng.choice(seeds)
            if seeds and rng.random() < 0.6
            else random_message(rng, rpc.request_class, pools).SerializeToString()
        )
        data = _mutate_bytes(rng, base, rng.choice([1, 2, 4, 16]))
    else:
        data = _raw(rng)
    return rpc, family, _tame(rpc, data)


# -- the run ---------------------------------------------------------------------------------------
@dataclass
class Outcome:
    sent: int = 0
    by_code: Counter[str] = field(default_factory=Counter)
    by_rpc: Counter[str] = field(default_factory=Counter)
    bad: list[str] = field(default_factory=list)
    """INTERNAL and UNKNOWN answers (and, seen from the client, a deserialization failure)."""
    no_field_violation: list[str] = field(default_factory=list)
    """INVALID_ARGUMENT answers without a BadRequest naming a field."""
    rss: list[dict[str, int]] = field(default_factory=list)
    """Each service's RSS (KiB) after each batch."""
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


def bad_request_fields(err: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    if status is None:
        return []
    fields: list[str] = []
    for detail in status.details:
        found = error_details_pb2.BadRequest()
        if detail.Unpack(found):
            fields += [v.field for v in found.field_violations]
    return fields


def _send(channels: dict[str, grpc.Channel], rpc: Rpc, data: bytes) -> tuple[str, grpc.RpcError | None]:
    channel: Any = channels[rpc.service]  # bytes in, bytes out: no (de)serializer
    try:
        if rpc.streaming:
            stream = channel.unary_stream(rpc.path)(data, timeout=STREAM_DEADLINE)
            try:
                for n, _chunk in enumerate(stream):
                    if n + 1 >= STREAM_MESSAGES:
                        break
            finally:
                stream.cancel()
        else:
            channel.unary_unary(rpc.path)(data, timeout=UNARY_DEADLINE)
    except grpc.RpcError as err:
        return err.code().name, err
    return "OK", None


def _clean_up(deployment: Deployment, channels: dict[str, grpc.Channel]) -> None:
    """Destroy every VM but the resident ones and the guest's (their memory is the fuzzer's, not
    a leak), through the API as any client would."""
    stub = hypervisor_pb2_grpc.HypervisorStub(channels["hypervisor"])
    keep = {*RESIDENT, "fuzz-guest"}
    for name, _vm in deployment.state.r.hgetall("rl:vm:names").items():
        if name.decode() not in keep:
            with contextlib.suppress(grpc.RpcError):
                stub.DestroyVm(hypervisor_pb2.VmRef(vm=name.decode()), timeout=10)
    # VMs whose name entry was lost (destroyed meanwhile) are gone; ids without names cannot be.


def setup(deployment: Deployment) -> Pools:
    """The resident VMs, and the pools refreshed from them."""
    stub = hypervisor_pb2_grpc.HypervisorStub(open_channel(deployment.services["hypervisor"].address))
    hello = build_image("hello", "stock").to_bytes()
    loop = bytes(build_image("compute", "stock").to_bytes())
    stub.CreateVm(
        hypervisor_pb2.CreateVmRequest(
            name=RESIDENT[0], technique=common_pb2.TECHNIQUE_NATIVE, workload="hello", start=True
        ),
        timeout=60,
    )
    stub.CreateVm(
        hypervisor_pb2.CreateVmRequest(
            name=RESIDENT[1], technique=common_pb2.TECHNIQUE_BT, workload="compute"
        ),
        timeout=60,
    )
    stub.CreateVm(
        hypervisor_pb2.CreateVmRequest(
            name=RESIDENT[2],
            technique=common_pb2.TECHNIQUE_HW,
            workload="compute",
            max_instructions=3_000_000,
            start=True,
        ),
        timeout=60,
    )
    stub.WaitVm(hypervisor_pb2.WaitVmRequest(vm=RESIDENT[0], timeout_seconds=60), timeout=90)
    vm = VM(build_image("hello", "stock"), make_technique("hw"))
    vm.advance(200)
    pools = Pools(images=[hello, loop[:64], b"RLIMG"], snapshots=[encode_snapshot(snapshot(vm))])
    pools.refresh(deployment.state)
    return pools


def fuzz(
    deployment: Deployment,
    pools: Pools,
    *,
    seed: int,
    first: int,
    count: int,
    threads: int = 4,
    batch: int = 300,
    progress: Callable[[str], None] | None = None,
) -> Outcome:
    """Send requests ``first`` .. ``first + count - 1`` of the run seeded ``seed``."""
    rpcs = enumerate_rpcs()
    outcome = Outcome()
    channels = {name: grpc.insecure_channel(s.address) for name, s in deployment.services.items()}
    started = time.monotonic()

    def one(index: int) -> None:
        rpc, family, data = request(rpcs, pools, seed, index)
        code, err = _send(channels, rpc, data)
        with outcome.lock:
            outcome.sent += 1
            outcome.by_code[code] += 1
            outcome.by_rpc[rpc.name] += 1
            where = f"request {index} ({family}, {rpc.name}, {len(data)} bytes)"
            if code in ("INTERNAL", "UNKNOWN") and err is not None:
                outcome.bad.append(f"{where}: {code}: {err.details()}")
            if code == "INVALID_ARGUMENT" and err is not None:
                fields = bad_request_fields(err)
                if not fields or not all(fields):
                    outcome.no_field_violation.append(f"{where}: {err.details()} (violations: {fields})")

    try:
        with ThreadPoolExecutor(threads) as pool:
            for start in range(first, first + count, batch):
                list(pool.map(one, range(start, min(first + count, start + batch))))
                _clean_up(deployment, channels)
                pools.refresh(deployment.state)
                outcome.rss.append(deployment.rss())
                if progress is not None:
                    progress(f"{outcome.sent} sent, {dict(outcome.by_code)}, rss {outcome.rss[-1]}")
    finally:
        for channel in channels.values():
            channel.close()
    outcome.seconds = time.monotonic() - started
    return outcome


def iter_counts(outcome: Outcome) -> Iterator[str]:
    yield f"{outcome.sent} requests in {outcome.seconds:.0f} s"
    yield "by status: " + ", ".join(f"{k} {v}" for k, v in outcome.by_code.most_common())
    yield "by RPC: " + ", ".join(f"{k} {v}" for k, v in sorted(outcome.by_rpc.items()))
