"""``ringlab chaos``: fault injection for a running deployment, and a checker over what it saw.

    ringlab chaos run [--seed N] [--faults N] [--schedule T:ACTION:TARGET[:S],...] [--compose]
    ringlab chaos run --scenario split-brain --vm NAME
    ringlab chaos check HISTORY [--json]

``run`` kills, pauses and restarts the services of a deployment (``targets``) at seeded random
moments or on a schedule, records a history (``history``: the faults, the hypervisor's events,
every VM's result, the store's commit log), then, unless ``--no-check``, judges it (``checker``)
as ``check`` does.  Exit statuses (``ringlab.cli.exitstatus``): 0 every property held; 4
(``EXIT_CHECK_FAILED``) one failed; 2 bad usage; 3 the deployment cannot be reached or acted on.
docs/labs/chaos.md is the lab built on it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from ringlab.cli.exitstatus import EXIT_CHECK_FAILED, EXIT_DEPLOYMENT, EXIT_OK
from ringlab.errors import DeploymentFailed, UsageError

__all__ = ["add_chaos_command", "cmd_chaos_check", "cmd_chaos_run", "judge"]

EPILOG = (
    "Exit status: 0 every property held; 4 a property failed (the table says which, with the "
    "evidence); 2 bad usage; 3 the deployment cannot be reached or acted on. docs/labs/chaos.md "
    "walks through it."
)


def _list(choices: tuple[str, ...], what: str) -> Any:
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(filter(None, (part.strip() for part in text.split(","))))
        wrong = [item for item in items if item not in choices]
        if wrong or not items:
            raise argparse.ArgumentTypeError(
                f"{what}: {', '.join(wrong) or 'none given'}: choose from {', '.join(choices)}, separated by commas"
            )
        return items

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 < value < 86400:
        raise argparse.ArgumentTypeError(f"expected seconds above 0 (and under a day), got {text!r}")
    return value


def _bound(text: str) -> float | str:
    """--failover-bound: seconds, or ``lease`` (each grant's lease plus one slice)."""
    return "lease" if text == "lease" else _seconds(text)


def add_chaos_command(sub: Any) -> None:
    """Register ``ringlab chaos`` (``run``, ``check``) on the ``ringlab`` sub-parser set."""
    from ringlab.cli.chaos.targets import ACTIONS, KINDS
    from ringlab.cli.options import int_in

    summary = "inject faults into a running deployment and check that nothing committed was lost"
    p = sub.add_parser(
        "chaos", help=summary, description=summary[0].upper() + summary[1:] + ".", epilog=EPILOG
    )
    chaos = p.add_subparsers(dest="chaos_command", required=True, metavar="ACTION")

    def bounds(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--json", action="store_true", help="print the verdict as one JSON object (default: tables)"
        )
        q.add_argument(
            "--failover-bound",
            type=_bound,
            default=None,
            metavar="SECONDS|lease",
            help="also fail when a VM whose pCPU failed took longer than this to run again, not counting "
            "the time no pCPU, hypervisor or Redis was up; 'lease': its grant's lease plus one slice, "
            "the design's bound (default: only measured)",
        )
        q.add_argument(
            "--charge-bound",
            type=_seconds,
            default=None,
            metavar="SECONDS",
            help="also fail when a VM was charged more than this for slices lost to a fault (default: only measured)",
        )

    q = chaos.add_parser(
        "run",
        help="break services at random moments (or on a schedule), record a history, check it",
        description="Kill, pause and restart the services of a running deployment (a local 'ringlab up', or "
        "compose with --compose) while its VMs run, record what happened, wait for every VM to end, "
        "then check the history (as 'ringlab chaos check' does).",
        epilog=EPILOG,
    )
    q.add_argument(
        "--hypervisor",
        default=None,
        metavar="HOST:PORT",
        help="the deployment's hypervisor (default: $RINGLAB_HYPERVISOR, else the one services.json or the "
        "compose project names)",
    )
    q.add_argument(
        "--token",
        default=os.environ.get("RINGLAB_TOKEN", ""),
        metavar="TOKEN",
        help="the bearer token to send (default: $RINGLAB_TOKEN; none when unset)",
    )
    q.add_argument(
        "--data",
        "--state",
        dest="data",
        default=None,
        metavar="DIR",
        help="the local deployment's data folder ('ringlab up --data'), where up writes services.json "
        "(default: up's own default for the --hypervisor port)",
    )
    q.add_argument(
        "--compose",
        nargs="?",
        const="",
        default=None,
        metavar="PROJECT",
        help="a compose deployment instead, through the Docker SDK (default project: $RINGLAB_COMPOSE_PROJECT, "
        "else the one running a hypervisor)",
    )
    q.add_argument(
        "--seed",
        type=int_in(0, 2**63),
        default=None,
        metavar="N",
        help="the random seed (default: a fresh one, printed)",
    )
    q.add_argument(
        "--faults",
        type=int_in(0, 10_000),
        default=6,
        metavar="N",
        help="random faults to inject (default: 6)",
    )
    q.add_argument(
        "--every", type=_seconds, default=2.0, metavar="SECONDS", help="mean time between faults (default: 2)"
    )
    q.add_argument(
        "--actions",
        type=_list(ACTIONS, "--actions"),
        default=("kill", "pause", "restart"),
        metavar="A,...",
        help=f"the actions to draw from, of {', '.join(ACTIONS)} (partition: compose only; default: kill,pause,restart)",
    )
    q.add_argument(
        "--kinds",
        type=_list(KINDS, "--kinds"),
        default=KINDS,
        metavar="K,...",
        help=f"the services to draw from, of {', '.join(KINDS)} (default: all)",
    )
    q.add_argument(
        "--pause",
        type=_seconds,
        default=3.0,
        metavar="SECONDS",
        help="longest pause or partition (default: 3)",
    )
    q.add_argument(
        "--schedule",
        default=None,
        metavar="T:ACTION:TARGET[:S],...",
        help="these faults instead of random ones: at T seconds, ACTION on TARGET (a kind, or a name such as "
        "cpu0), S seconds for a pause; e.g. 2:kill:cpu0,4:pause:redis:3",
    )
    q.add_argument(
        "--scenario",
        choices=("split-brain",),
        default=None,
        help="split-brain: pause the pCPU running --vm past its lease so the VM moves, then resume it: its "
        "stale commit must be refused (the broken-fencing exercise of docs/labs/chaos.md)",
    )
    q.add_argument("--vm", default=None, metavar="NAME", help="the VM of --scenario")
    q.add_argument(
        "--history",
        default=None,
        metavar="FILE",
        help="where to write the history (default: chaos-TIME.jsonl here)",
    )
    q.add_argument(
        "--timeout",
        type=_seconds,
        default=600.0,
        metavar="SECONDS",
        help="after the faults, how long to wait for every VM to end (default: 600)",
    )
    q.add_argument("--no-check", action="store_true", help="only record the history (default: check it too)")
    bounds(q)
    q.set_defaults(func=cmd_chaos_run)

    q = chaos.add_parser(
        "check",
        help="judge a history: every VM ended as its in-process run, no stale commit, nothing went back",
        description="Check a chaos history: every VM ended, with the console, exit and guest statistics of its "
        "in-process run; no commit landed with a stale token; no committed state went backwards. Also "
        "measures failover times, the time lost to failed slices and the credit charged for it.",
        epilog=EPILOG,
    )
    q.add_argument("history", metavar="HISTORY", help="a history written by 'ringlab chaos run'")
    bounds(q)
    q.set_defaults(func=cmd_chaos_check)


def judge(records: list[dict[str, Any]], args: argparse.Namespace) -> int:
    """Check ``records`` and print the verdict; the exit status."""
    from ringlab.cli.chaos import checker
    from ringlab.cli.chaos.report import render
    from ringlab.cli.deployment import _console

    verdict = checker.check(
        records,
        expected=checker.expected_result,
        failover_bound=args.failover_bound,
        charge_bound=args.charge_bound,
    )
    if args.json:
        print(json.dumps(verdict.to_json()))
    else:
        start = next((r["time"] for r in records if r["type"] == "start"), None)
        console = _console()
        if sys.stdout.isatty():
            console.print(render(verdict, start))
        else:
            from rich.console import Console

            Console(width=120, soft_wrap=False).print(render(verdict, start))
    return EXIT_OK if verdict.ok else EXIT_CHECK_FAILED


def cmd_chaos_check(args: argparse.Namespace) -> int:
    from ringlab.cli.chaos.history import load

    try:
        records = load(args.history)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return judge(records, args)


def _targets(args: argparse.Namespace) -> Any:
    from ringlab.cli.chaos.targets import ComposeTargets, LocalTargets
    from ringlab.endpoints import DEFAULT_HYPERVISOR

    hypervisor = args.hypervisor or os.environ.get("RINGLAB_HYPERVISOR") or None
    if args.compose is not None:
        return ComposeTargets(args.compose or None, hypervisor)
    if "partition" in args.actions and not args.schedule:
        raise UsageError("--actions partition needs a compose deployment (--compose)")
    if args.data:
        state = Path(args.data).expanduser()
    else:
        from ringlab.rpc.local import default_state_dir

        port = (hypervisor or DEFAULT_HYPERVISOR).rpartition(":")[2]
        state = default_state_dir(int(port) if port.isdigit() else 0)
    return LocalTargets(state, hypervisor)


def cmd_chaos_run(args: argparse.Namespace) -> int:
    from ringlab.cli.chaos.history import History
    from ringlab.cli.chaos.runner import (
        Injector,
        Recorder,
        parse_schedule,
        random_schedule,
        run_schedule,
        split_brain,
    )
    from ringlab.store.state import fencing_enabled

    if args.scenario and not args.vm:
        raise UsageError("--scenario split-brain needs the VM to move: --vm NAME")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    schedule = (
        parse_schedule(args.schedule)
        if args.schedule
        else random_schedule(
            rng,
            faults=args.faults,
            every=args.every,
            actions=args.actions,
            kinds=args.kinds,
            pause=args.pause,
        )
    )
    if args.scenario:
        schedule = []
    try:
        targets = _targets(args)
    except DeploymentFailed as exc:
        print(f"ringlab: {exc}", file=sys.stderr)
        return EXIT_DEPLOYMENT
    path = Path(args.history or f"chaos-{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
    print(
        f"chaos: seed {seed}, {len(schedule)} faults on {targets.kind} deployment {targets.hypervisor}; history {path}",
        file=sys.stderr,
    )
    with History(path) as history:
        history.add(
            "start",
            seed=seed,
            deployment=targets.kind,
            hypervisor=targets.hypervisor,
            targets=[t.__dict__ for t in targets.targets()],
            schedule=[f.__dict__ for f in schedule],
            scenario=args.scenario,
            fencing=fencing_enabled(),
        )
        recorder = Recorder(history, targets, args.token)
        injector = Injector(history, targets, rng)
        try:
            recorder.start()
            t0 = time.monotonic()
            if args.scenario == "split-brain":
                if not split_brain(recorder, injector, args.vm):
                    history.add(
                        "note", text="split-brain: the scenario did not happen (see the notes before)"
                    )
            else:
                run_schedule(injector, schedule, t0)
            ended = recorder.wait_ended(args.timeout)
        finally:
            injector.recover_all()
        recorder.finish(ended)
        records = history.records
    print(f"chaos: history written to {path}", file=sys.stderr)
    if args.no_check:
        return EXIT_OK
    return judge(records, args)
