"""``ringlab trace``: the flight recorder's records as a Perfetto trace, and a xenalyze-style summary.

    ringlab trace run [PROGRAM | --workload NAME] [--technique T ...] [-o FILE] [--clock wall|virtual]
    ringlab trace vm [VM ...] [--slices N] [--spans DIR] [-o FILE]

``run`` runs one guest in this process under each technique asked for (by default every full
virtualization technique: trap-emulate, bt, hw, hw with nested paging), each with a flight
recorder (``ringlab.vmm.recorder``), writes one trace file with a track per technique, and prints
each one's exits by reason with their count and their total and mean simulated cost.  The file
opens in ui.perfetto.dev (or chrome://tracing).  docs/tracing.md describes the records and the file.

``vm`` fetches a deployment's records through the hypervisor, and with ``--spans DIR`` (by default
the folder of ``RINGLAB_TRACING=file:DIR``) puts the OpenTelemetry spans the services wrote there
(``ringlab.rpc.tracing``) in the same file: a track per service process, a thread per thread.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ringlab.cli.exitstatus import EXIT_OK
from ringlab.errors import UsageError

__all__ = [
    "DEFAULT_OUTPUT",
    "TRACE_TECHNIQUES",
    "add_trace_command",
    "cmd_trace_run",
    "print_summary",
    "span_tracks",
]

TRACE_TECHNIQUES = ("native", "trap-emulate", "bt", "pv", "hw", "hw+np")
"""What ``--technique`` takes: ``hw+np`` is hw with nested paging."""
FULL_VIRTUALIZATION = ("trap-emulate", "bt", "hw", "hw+np")
DEFAULT_OUTPUT = "ringlab-trace.json"


def add_trace_command(sub: Any) -> None:
    import shtab

    from ringlab.cli.main import _add_defines, _command, _file, _parse_count, _parse_size
    from ringlab.guestos.build import FLAVOURS, WORKLOADS
    from ringlab.vmm.recorder import DEFAULT_CAPACITY
    from ringlab.vmm.trace_events import CLOCKS

    summary = "record exits and slices with the flight recorder and write a Perfetto trace"
    p = sub.add_parser("trace", help=summary, description=summary[0].upper() + summary[1:] + ".")
    p.epilog = (
        "Open the file at https://ui.perfetto.dev (it works offline too: the file never leaves your machine)."
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    r = _command(
        actions,
        "run",
        "run one guest in-process under each technique, recording every exit, and write the trace",
        cmd_trace_run,
    )
    _file(
        r.add_argument(
            "program", nargs="?", metavar="PROGRAM", help="RL-32 assembly or an image (default: --workload)"
        )
    )
    r.add_argument(
        "--workload",
        choices=WORKLOADS,
        default=None,
        help="boot the guest OS running this workload instead of PROGRAM (default: hello when no PROGRAM)",
    )
    r.add_argument(
        "--kernel",
        choices=FLAVOURS,
        default=None,
        help="with --workload: the guest kernel (default: paravirt for pv, stock for the others)",
    )
    r.add_argument(
        "--technique",
        dest="techniques",
        action="append",
        choices=TRACE_TECHNIQUES,
        default=None,
        help=f"record under this technique; may repeat (default: {', '.join(FULL_VIRTUALIZATION)})",
    )
    _file(
        r.add_argument(
            "-o",
            "--output",
            default=DEFAULT_OUTPUT,
            metavar="FILE",
            help="the trace file (default: %(default)s)",
        )
    )
    r.add_argument(
        "--clock",
        choices=CLOCKS,
        default="wall",
        help="the trace's time axis: wall time, or virtual time (one instruction = 1 us; the same "
        "every run) (default: %(default)s)",
    )
    r.add_argument(
        "--memory", type=_parse_size, default=4 << 20, metavar="BYTES", help="guest RAM (default: 4M)"
    )
    r.add_argument(
        "--max-instructions",
        type=_parse_count,
        default=None,
        metavar="N",
        help="stop each run after N retired instructions (default: no limit)",
    )
    r.add_argument(
        "--capacity",
        type=_parse_count,
        default=DEFAULT_CAPACITY,
        metavar="N",
        help="records kept per run, the oldest dropped first (default: %(default)s)",
    )
    r.add_argument("--json", action="store_true", help="print the summary as JSON (default: a table)")
    _add_defines(r)

    from ringlab.cli.deployment import _guarded, _hypervisor_default, _token_default

    d = _command(
        actions,
        "vm",
        "fetch the recent history of a running deployment's VMs from its flight recorder and write the trace",
        _guarded(cmd_trace_vm),
    )
    d.add_argument("vms", nargs="*", metavar="VM", help="the VMs, by name or id (default: every VM)")
    d.add_argument(
        "--target",
        default=_hypervisor_default(),
        metavar="HOST:PORT",
        help="the deployment's hypervisor (default: $RINGLAB_HYPERVISOR, else %(default)s)",
    )
    d.add_argument(
        "--token",
        default=_token_default(),
        metavar="TOKEN",
        help="the operator's token (default: $RINGLAB_TOKEN)",
    )
    d.add_argument(
        "--slices",
        type=_parse_count,
        default=0,
        metavar="N",
        help="each VM's last N recorded slices (default: every one the deployment kept)",
    )
    _file(
        d.add_argument(
            "-o",
            "--output",
            default=DEFAULT_OUTPUT,
            metavar="FILE",
            help="the trace file (default: %(default)s)",
        )
    )
    d.add_argument(
        "--clock", choices=CLOCKS, default="wall", help="the trace's time axis (default: %(default)s)"
    )
    spans = d.add_argument(
        "--spans",
        default=None,
        metavar="DIR",
        help="add the services' OpenTelemetry spans from the span files in DIR, each process a "
        "track (default: DIR of RINGLAB_TRACING=file:DIR, else none)",
    )
    spans.complete = shtab.DIRECTORY  # read by shtab
    d.add_argument("--json", action="store_true", help="print the summary as JSON (default: a table)")


def _image(args: argparse.Namespace, technique: str) -> Any:
    from ringlab.cli.main import _load_program
    from ringlab.guestos.build import build_image
    from ringlab.vmm import default_kernel

    defines = dict(args.defines)
    if args.program and args.workload:
        raise UsageError("PROGRAM and --workload both name the guest: give one")
    if args.program:
        return _load_program(args.program, defines)
    kernel = args.kernel or default_kernel(technique.partition("+")[0])
    return build_image(args.workload or "hello", kernel, defines)


def cmd_trace_run(args: argparse.Namespace) -> int:
    from ringlab.cli.termout import progress
    from ringlab.vmm import run_vm
    from ringlab.vmm.recorder import FlightRecorder

    if args.capacity < 1:
        raise UsageError("--capacity: keep at least one record")
    techniques = list(dict.fromkeys(args.techniques or FULL_VIRTUALIZATION))
    records: dict[str, list[dict[str, Any]]] = {}
    results: dict[str, dict[str, Any]] = {}
    dropped: dict[str, int] = {}
    with progress("recording", len(techniques), enabled=not args.json) as step:
        for technique in techniques:
            name, _, np = technique.partition("+")
            recorder = FlightRecorder(args.capacity, pcpu=f"in-process ({technique})")
            result = run_vm(
                _image(args, technique),
                technique=name,
                nested_paging=bool(np),
                memory_size=args.memory,
                max_instructions=args.max_instructions,
                recorder=recorder,
            ).to_json()
            records[technique] = list(recorder.records)
            results[technique] = result
            dropped[technique] = recorder.dropped
            step(f"recorded {technique}")
    for t in techniques:
        if dropped[t] and not args.json:
            print(
                f"{t}: the ring buffer dropped the oldest {dropped[t]:,} records (raise --capacity)",
                file=sys.stderr,
            )
    runs = {
        t: {
            "exit": results[t]["exit"],
            "exits": results[t]["stats"]["guest"].get("exits", {}),
            "dropped": dropped[t],
        }
        for t in techniques
    }
    return _write(records, args, {t: results[t]["stats"]["guest"].get("cycles", 0) for t in techniques}, runs)


def cmd_trace_vm(args: argparse.Namespace) -> int:
    from ringlab.cli.deployment import _client
    from ringlab.rpc.tracing import spans_directory
    from ringlab.v1 import hypervisor_pb2

    folder = Path(args.spans) if args.spans is not None else spans_directory()
    if args.spans is not None and folder is not None:
        if args.clock != "wall":
            raise UsageError("--spans: spans are timed on the wall clock; leave --clock at wall")
        if not folder.is_dir():
            raise UsageError(
                f"--spans {folder}: no such folder (the services write their span files there "
                f"with RINGLAB_TRACING=file:{folder})"
            )
    client = _client(args.target, args.token)
    names = list(args.vms) or [
        vm.name for vm in client.call(client.stub.ListVms, hypervisor_pb2.ListVmsRequest()).vms
    ]
    records: dict[str, list[dict[str, Any]]] = {}
    ids: set[str] = set()
    for name in names:
        reply = client.call(
            client.stub.GetFlightRecord, hypervisor_pb2.FlightRecordRequest(vm=name, slices=args.slices)
        )
        records[reply.name or name] = json.loads(reply.records_json or "[]")
        ids.add(reply.vm)
    spans = None
    if folder is not None and folder.is_dir() and args.clock == "wall":
        spans = span_tracks(_read_spans(folder), ids if args.vms else None, _window(records))
    return _write(records, args, spans=spans)


def _read_spans(folder: Path) -> list[dict[str, Any]]:
    from ringlab.rpc.tracing import read_spans

    try:
        return read_spans(folder)
    except OSError as exc:
        raise UsageError(f"--spans {folder}: cannot read the span files: {exc.strerror or exc}") from None


def _window(records: dict[str, list[dict[str, Any]]]) -> tuple[int, int] | None:
    """The wall-clock span (epoch ns) of the records, None when there are none."""
    times = [
        int(t)
        for rs in records.values()
        for r in rs
        for t in (r.get("start_ns"), r.get("end_ns"), r.get("wall_ns"))
        if isinstance(t, int)
    ]
    return (min(times), max(times)) if times else None


def span_tracks(
    spans: list[dict[str, Any]], vms: set[str] | None = None, window: tuple[int, int] | None = None
) -> list[dict[str, Any]]:
    """The span files' spans as ``trace_events`` takes them: every trace (all its spans, so that
    each span's parent is there) that names one of the ``vms`` (by id; None: any trace) and
    overlaps the ``window`` of the records (epoch ns; None: whenever), each span on the track of
    its process (``cpu pcpu0 (pid 41)``) and the thread it ran on."""
    traces: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        traces.setdefault(str(span["trace_id"]), []).append(span)
    kept: list[dict[str, Any]] = []
    for members in traces.values():
        if vms is not None and not any(
            str(s.get("attributes", {}).get("ringlab.vm.id", "")) in vms for s in members
        ):
            continue
        if window is not None and (
            min(s["start_ns"] for s in members) > window[1] or max(s["end_ns"] for s in members) < window[0]
        ):
            continue
        kept += members
    kept.sort(key=lambda s: s["start_ns"])
    out = []
    for span in kept:
        attributes = dict(span.get("attributes", {}))
        process = " ".join(p for p in (str(span.get("service", "")), str(span.get("instance", ""))) if p)
        out.append(
            {
                "name": span["name"],
                "start_ns": span["start_ns"],
                "end_ns": span["end_ns"],
                "track": f"{process or 'spans'} (pid {span.get('pid', '?')})",
                "thread": str(attributes.pop("thread.name", "spans")),
                "span_id": span.get("span_id"),
                "parent_id": span.get("parent_id"),
                "args": {
                    "trace_id": span["trace_id"],
                    "span_id": span.get("span_id"),
                    "parent_id": span.get("parent_id"),
                    "kind": span.get("kind", ""),
                    "status": span.get("status", ""),
                    **attributes,
                },
            }
        )
    return out


def _write(
    records: dict[str, list[dict[str, Any]]],
    args: argparse.Namespace,
    cycles: dict[str, int] | None = None,
    runs: dict[str, Any] | None = None,
    spans: list[dict[str, Any]] | None = None,
) -> int:
    """Write the trace of ``records`` (and of the services' ``spans``, None: none asked for)
    where ``args.output`` says, then print the summary (with each run's cycles, for its share;
    ``--json``: with ``runs`` too)."""
    from ringlab.vmm.trace_events import summarize, trace_events

    trace = trace_events(records, clock=args.clock, spans=spans or ())
    out = Path(args.output)
    try:
        out.write_text(json.dumps(trace, separators=(",", ":")))
    except OSError as exc:
        raise UsageError(f"cannot write the trace to {out}: {exc.strerror or exc}") from None
    rows = summarize(records)
    if args.json:
        doc: dict[str, Any] = {"trace": str(out), "clock": args.clock, "summary": _rows(rows)}
        if runs is not None:
            doc["runs"] = runs
        if spans is not None:
            doc["spans"] = len(spans)
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    print_summary(rows, cycles)
    events = sum(1 for e in trace["traceEvents"] if e["ph"] != "M")
    if spans is not None:
        print(
            f"{len(spans):,} spans from the services' span files" if spans else "no spans in the span files"
        )
    print(f"wrote {out} ({events:,} events, {args.clock} clock): open it at https://ui.perfetto.dev")
    return EXIT_OK


def _rows(rows: list[Any]) -> list[dict[str, Any]]:
    return [
        {
            "vm": r.vm,
            "reason": r.reason,
            "count": r.count,
            "total_cost": r.total_cost,
            "mean_cost": r.mean_cost,
        }
        for r in rows
    ]


def print_summary(rows: list[Any], cycles: dict[str, int] | None = None) -> None:
    """xenalyze's summary: per VM, exits by reason with count, total and mean cost and the share
    of the VM's simulated cycles they took."""
    from ringlab.cli.termout import compact_table, stdout_console

    console = stdout_console()
    if not rows:
        console.print("no exits were recorded (natively there is no hypervisor to exit to)")
        return
    for vm in dict.fromkeys(r.vm for r in rows):
        mine = [r for r in rows if r.vm == vm]
        total = sum(r.count for r in mine)
        table = compact_table(
            f"{vm}: {total:,} exits",
            [
                ("reason", "left"),
                ("count", "right"),
                ("total cycles", "right"),
                ("mean", "right"),
                ("of run", "right"),
            ],
        )
        run_cycles = (cycles or {}).get(vm, 0)
        for r in mine:
            share = f"{100 * r.total_cost / run_cycles:.1f}%" if run_cycles else "-"
            table.add_row(r.reason, f"{r.count:,}", f"{r.total_cost:,}", f"{r.mean_cost:,.0f}", share)
        console.print(table)
        console.print()
