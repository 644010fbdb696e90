"""The guest service: one guest OS, the owner (not the executor) of one VM.

On start it works out its configuration (flags and RINGLAB_* variables; identical replicas each
take the next entry of ``--mix`` by an atomic counter in Redis, and a restarted replica gets its
entry back), builds the kernel and workload image, creates its VM on the hypervisor (idempotently
for the same definition, so a restarted guest re-attaches; a name taken by another definition is
ALREADY_EXISTS, which stops the guest) and serves the VM's console: a malformed cursor is
INVALID_ARGUMENT here; the hypervisor's answers are mapped (``ringlab.rpc.errors``): NOT_FOUND for
a destroyed VM passes through, a hypervisor that is down or failed is UNAVAILABLE.

    --name NAME          RINGLAB_GUEST_NAME   VM name (default "guest"; with --mix, NAME-INDEX)
    --technique T        RINGLAB_TECHNIQUE    native | trap-emulate | bt | pv | hw (native)
    --kernel K           RINGLAB_KERNEL       stock | paravirt (stock; paravirt under pv)
    --workload W         RINGLAB_WORKLOAD     a workload of build.WORKLOADS (hello)
    --weight N           RINGLAB_WEIGHT       scheduler weight (256)
    --mix LIST           RINGLAB_MIX          TECHNIQUE:KERNEL:WORKLOAD[:WEIGHT],... for replicas
"""

from __future__ import annotations

import argparse
import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import grpc

from ringlab.errors import RinglabError
from ringlab.guestos.build import FLAVOURS, WORKLOADS, KernelFlavour, build_image
from ringlab.rpc import (
    ServiceConfig,
    ServiceServer,
    StreamSlots,
    add_service_flags,
    build_server,
    config_from_args,
    open_channel,
)
from ringlab.rpc.config import env_default
from ringlab.rpc.convert import KERNELS, TECHNIQUES
from ringlab.rpc.errors import InvalidField
from ringlab.rpc.metrics import GuestMetrics, add_metrics_flag
from ringlab.rpc.tracing import OFF_TRACING, Tracing, add_tracing_flag, check_tracing_flag, configure_tracing
from ringlab.store import InvalidRequest, SharedState
from ringlab.store.state import check_cursor
from ringlab.v1 import common_pb2, guest_pb2, guest_pb2_grpc, hypervisor_pb2, hypervisor_pb2_grpc
from ringlab.vmm import TechniqueName

__all__ = ["GuestConfig", "GuestServicer", "main", "parse_mix"]

log = logging.getLogger("ringlab.guest")


@dataclass(frozen=True)
class GuestConfig:
    name: str
    technique: str
    kernel: str
    workload: str
    weight: int
    replica: int = 0


def parse_mix(text: str) -> list[tuple[str, str, str, int]]:
    """``native:stock:hello,pv:paravirt:compute:512`` -> [(technique, kernel, workload, weight)]."""
    out = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        fields = item.split(":")
        if len(fields) not in (3, 4):
            raise InvalidRequest(f"mix entry {item!r}: want TECHNIQUE:KERNEL:WORKLOAD[:WEIGHT]")
        weight = int(fields[3]) if len(fields) == 4 else 256
        out.append((fields[0], fields[1], fields[2], weight))
    return out


def resolve_config(args: argparse.Namespace, state: SharedState | None) -> GuestConfig:
    if args.mix:
        mix = parse_mix(args.mix)
        if state is None:
            raise InvalidRequest("--mix needs Redis (RINGLAB_REDIS) for the replica counter")
        index = state.claim_mix_index(args.name, socket.gethostname() + ":" + args.replica_id)
        technique, kernel, workload, weight = mix[index % len(mix)]
        return GuestConfig(f"{args.name}-{index}", technique, kernel, workload, weight, index)
    return GuestConfig(args.name, args.technique, args.kernel, args.workload, args.weight)


def validate(config: GuestConfig) -> None:
    if config.technique not in TECHNIQUES:
        raise InvalidRequest(f"technique {config.technique!r}: choose one of {', '.join(TECHNIQUES)}")
    if config.kernel not in FLAVOURS:
        raise InvalidRequest(f"kernel {config.kernel!r}: choose {' or '.join(FLAVOURS)}")
    if config.workload not in WORKLOADS:
        raise InvalidRequest(f"workload {config.workload!r}: choose one of {', '.join(sorted(WORKLOADS))}")


class GuestServicer(guest_pb2_grpc.GuestServicer):
    def __init__(
        self,
        config: GuestConfig,
        hypervisor: str,
        token: str,
        streams: StreamSlots,
        tracing: Tracing = OFF_TRACING,
    ) -> None:
        self.config = config
        self.hypervisor = hypervisor
        self.tracing = tracing
        self.stub = hypervisor_pb2_grpc.HypervisorStub(open_channel(hypervisor, token, tracing=tracing))
        self.streams = streams
        self.vm = ""
        self.image = build_image(config.workload, config.kernel)
        """Built before the service starts: a kernel that cannot be built stops the guest at once."""

    def register(self) -> str:
        """Create (or find, by name) this guest's VM; returns its id."""
        c = self.config
        image = self.image
        vm = self.stub.CreateVm(
            hypervisor_pb2.CreateVmRequest(
                name=c.name,
                technique=TECHNIQUES[c.technique],
                kernel=KERNELS[c.kernel],
                workload=c.workload,
                image=image.to_bytes(),
                weight=c.weight,
                start=True,
            ),
            timeout=30,
        )
        self.vm = vm.id
        return vm.id

    def DescribeGuest(
        self, request: guest_pb2.DescribeGuestRequest, context: grpc.ServicerContext
    ) -> guest_pb2.GuestInfo:
        c = self.config
        return guest_pb2.GuestInfo(
            name=c.name,
            vm=self.vm,
            technique=TECHNIQUES[c.technique],
            kernel=KERNELS[c.kernel],
            workload=c.workload,
            weight=c.weight,
            hypervisor=self.hypervisor,
            replica=c.replica,
        )

    def StreamConsole(
        self, request: guest_pb2.GuestConsoleRequest, context: grpc.ServicerContext
    ) -> Iterator[common_pb2.ConsoleChunk]:
        if request.after:
            try:
                check_cursor(request.after)
            except InvalidRequest as exc:
                raise InvalidField("after", str(exc)) from None
        with self.streams.hold():
            upstream = self.stub.StreamConsole(
                hypervisor_pb2.StreamConsoleRequest(
                    vm=self.config.name, after=request.after, follow=request.follow
                )
            )

            def cancel() -> None:  # the caller went: so does the call upstream
                upstream.cancel()

            context.add_callback(cancel)
            yield from upstream


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ringlab-guest", description="One Ringlab guest OS owning one VM.")
    add_service_flags(parser, "guest")
    add_metrics_flag(parser)
    add_tracing_flag(parser)
    parser.add_argument("--name", default=env_default("GUEST_NAME", "guest"))
    parser.add_argument("--technique", default=env_default("TECHNIQUE", TechniqueName.NATIVE.value))
    parser.add_argument("--kernel", default=env_default("KERNEL", KernelFlavour.STOCK.value))
    parser.add_argument("--workload", default=env_default("WORKLOAD", "hello"))
    parser.add_argument("--weight", type=int, default=int(env_default("WEIGHT", "256")))
    parser.add_argument("--mix", default=env_default("MIX", ""))
    parser.add_argument("--replica-id", default=env_default("REPLICA_ID", ""), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    check_tracing_flag(parser, args.tracing)
    service = config_from_args(args, "guest")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s guest %(levelname)s %(message)s")
    state = SharedState.from_url(service.redis) if args.mix else None
    config = resolve_config(args, state)
    validate(config)
    try:
        traced = configure_tracing("guest", args.tracing, instance=config.name)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        servicer = GuestServicer(
            config, service.hypervisor, service.token, StreamSlots(service.max_streams), traced
        )
    except RinglabError as exc:
        log.error(
            "guest %s: cannot build its %s kernel with workload %s: %s",
            config.name,
            config.kernel,
            config.workload,
            exc,
        )
        return 2
    server = serve(service, servicer, metrics_port=args.metrics_port)
    server.install_signal_handlers()
    failed: list[str] = []

    def attach() -> None:
        if not register_until_done(servicer, server.stopping, failed):
            server.stop(0)  # a refusal no retry can change: stop, and say why (exit status 1)

    threading.Thread(target=attach, name="attach", daemon=True).start()
    print(f"READY guest {service.listen.rsplit(':', 1)[0]}:{server.port} {config.name}", flush=True)
    server.wait()
    return 1 if failed else 0


PERMANENT = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ALREADY_EXISTS,  # its name is taken by a VM of another definition
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
"""Refusals of CreateVm that no retry changes; anything else (the hypervisor is not up yet, a
timeout, Redis away) is retried every second."""


def register_until_done(servicer: GuestServicer, stopping: threading.Event, failed: list[str]) -> bool:
    """Create this guest's VM on the hypervisor, retrying while it may come up later; False (and
    the reason in ``failed``) when the hypervisor refused it for good."""
    target = servicer.hypervisor
    while not stopping.is_set():
        try:
            vm = servicer.register()
            log.info("guest %s owns VM %s on %s", servicer.config.name, vm, target)
            return True
        except grpc.RpcError as err:
            if err.code() in PERMANENT:
                failed.append(f"{err.code().name}: {err.details()}")
                log.error(
                    "the hypervisor at %s refused guest %s: %s", target, servicer.config.name, failed[-1]
                )
                return False
            log.warning("cannot register with the hypervisor at %s yet: %s", target, err.details())
        except Exception as exc:  # never die silently: say why, and keep trying
            log.exception("guest %s: registering failed: %s", servicer.config.name, exc)
        stopping.wait(1.0)
    return False


def serve(
    service: ServiceConfig, servicer: GuestServicer, *, metrics_port: str | None = None
) -> ServiceServer:
    """Serve ``servicer``, its metrics on the port ``metrics_port`` asks for (``--metrics-port``;
    None: ``RINGLAB_METRICS_PORT``, else the gRPC port + 1000), its spans as ``servicer.tracing``
    says (``--tracing``)."""
    c = servicer.config
    metrics = GuestMetrics(c.name, c.technique, c.kernel, c.workload, lambda: bool(servicer.vm))
    metrics.watch_streams(servicer.streams)

    def register(server: grpc.Server) -> None:
        guest_pb2_grpc.add_GuestServicer_to_server(servicer, server)

    server = build_server(
        service,
        register,
        ["ringlab.v1.Guest"],
        checks=[lambda: bool(servicer.vm)],
        metrics=metrics,
        metrics_port_setting=metrics_port,
        tracing=servicer.tracing,
    )
    server.start()
    return server
