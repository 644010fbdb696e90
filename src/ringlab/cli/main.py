"""The ``ringlab`` command.

Exit statuses are defined once, in ``ringlab.cli.exitstatus`` (its docstring is the table): 0 when
the command itself worked, whatever the guest did; 1 for an unexpected error (a bug: one line
asks for a report, ``--debug`` or ``RINGLAB_DEBUG=1`` prints the traceback); 2 for bad usage
(unknown option or value, a program that does not assemble, a file that is not an image or cannot
be read); 3 when a deployment cannot be reached, refuses the caller or cannot be started; 130
when interrupted.  With ``--guest-status``, ``run`` and ``boot`` exit with how the guest ended
instead of 0 (``exitstatus.guest_status``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from ringlab import __version__
from ringlab.asm.limits import MAX_SOURCE_BYTES, size_text
from ringlab.cli.exitstatus import (
    EXIT_DEPLOYMENT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    GUEST_HALT,
    GUEST_LIMIT,
    GUEST_REFUSED,
    GUEST_SHUTDOWN,
    guest_status,
)
from ringlab.cli.options import define, int_in, number_in
from ringlab.errors import AssemblyError, DeploymentFailed, ImageError, RinglabError, UsageError
from ringlab.guestos import NO_KERNEL
from ringlab.vmm import TECHNIQUES, TechniqueName, default_kernel

__all__ = ["IN_PROCESS_COMMANDS", "MAX_MEMORY", "build_parser", "main"]

MAX_MEMORY = 1 << 30
"""The most guest RAM ``--memory`` may ask for: 1 GiB (RL-32 addresses 4 GiB, but the machine
keeps guest RAM in host memory, and no workload needs more than a few MiB)."""
MAX_BENCH_VMS = 128
DEFAULT_MEMORY = 4 << 20
"""Guest RAM when ``--memory`` is not given."""
"""The most VMs ``bench --suite contention`` starts on its one pCPU."""
MAX_WEIGHT = 65535
"""Scheduler weights run from 1 to 65535, as in Xen's credit scheduler (256 is the default)."""
IN_PROCESS_COMMANDS = ("demo", "run", "boot", "asm", "disasm", "bench", "isa", "completion")
"""The commands defined in this module (the service commands live in ``cli.deployment``)."""

DEBUG_ENV = "RINGLAB_DEBUG"
INTERNAL_ERROR = (
    "ringlab: internal error: {kind}: {message} -- this is a bug; please report it with the output "
    "of 'ringlab --debug ...'"
)


# -- option types -------------------------------------------------------------------------------------
def _parse_size(text: str) -> int:
    """A byte count: ``4194304``, ``0x400000``, ``4M``, ``512K``, ``1G``; at most ``MAX_MEMORY``."""
    from ringlab.rpc.config import byte_count

    try:
        value = byte_count(text)
    except ValueError:
        if text.strip().lstrip("-").isdigit():
            raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}") from None
        raise argparse.ArgumentTypeError(
            f"expected a size in bytes such as 4194304 or 4M, got {text!r}"
        ) from None
    if value > MAX_MEMORY:
        raise argparse.ArgumentTypeError(
            f"{text} bytes is more than the most guest RAM Ringlab gives a machine (1G = {MAX_MEMORY} bytes)"
        )
    return value


def _parse_count(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _parse_input(text: str) -> str:
    """``--input TEXT``: the console's bytes are the text's characters, so each must be one byte."""
    try:
        text.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise argparse.ArgumentTypeError(
            f"the console takes bytes: {text[exc.start]!r} (U+{ord(text[exc.start]):04X}) is not one byte; "
            "use characters U+0000-U+00FF (ASCII and Latin-1)"
        ) from None
    return text


def _parse_weights(text: str) -> list[int]:
    """``--weights 1,2,4``: one scheduler weight (1-65535) per VM."""
    weights = []
    for part in text.split(","):
        try:
            weight = int(part.strip(), 0)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected weights as whole numbers separated by commas, such as 256,512; "
                f"{part.strip()!r} is not a whole number"
            ) from None
        if not 1 <= weight <= MAX_WEIGHT:
            raise argparse.ArgumentTypeError(f"each weight must be from 1 to {MAX_WEIGHT}, got {weight}")
        weights.append(weight)
    if len(weights) > MAX_BENCH_VMS:
        raise argparse.ArgumentTypeError(f"{len(weights)} weights: at most {MAX_BENCH_VMS} VMs")
    return weights


# -- reading programs and images ---------------------------------------------------------------------------
_WHAT_RUN_TAKES = "RL-32 assembly source (PROGRAM.s) or an image written by 'ringlab asm'"


_MAX_INPUT_BYTES = MAX_MEMORY + 4096
"""The most ``run`` reads of an image (all of the largest RAM, and its header)."""


def _read_input(path: str, limit: int) -> bytes:
    """The bytes of the file ``path`` names, read as the assembler reads an ``.include``: a
    regular file of at most ``limit`` bytes (a symlink to /dev/zero or a FIFO is refused at
    once, never read until memory runs out or a writer comes), or a UsageError saying why not."""
    from ringlab.asm.sources import SourceRefused, read_source_bytes

    try:
        return read_source_bytes(Path(path), limit)
    except SourceRefused as exc:
        raise UsageError(f"{path}: {exc.reason}") from None


def _read_source(path: str) -> str:
    """The text of an assembly source file, or an error saying what the file is instead: a
    byte that is not UTF-8 is an AssemblyError at its line and column."""
    from ringlab.asm.sources import decode_source
    from ringlab.image import MAGIC

    blob = _read_input(path, MAX_SOURCE_BYTES)
    if blob.startswith(MAGIC):
        raise UsageError(f"{path}: is an RL-32 image already (it starts with {MAGIC!r}), not assembly source")
    if not blob.strip():
        raise UsageError(f"{path}: the file is empty: expected RL-32 assembly source")
    return decode_source(blob, path)


def _decode_source(path: str, blob: bytes, expected: str = _WHAT_RUN_TAKES) -> str:
    if not blob.strip():
        raise UsageError(f"{path}: the file is empty: expected {expected}")
    neither = "not an RL-32 image (it does not start with b'RL32') and not assembly source"
    if b"\0" in blob:
        raise UsageError(f"{path}: a binary file, {neither} (it holds NUL bytes); expected {expected}")
    try:
        return blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{path}: {neither} (not UTF-8 text: byte {blob[exc.start]:#04x} at offset {exc.start}); "
            f"expected {expected}"
        ) from None


def _load_program(path: str, defines: dict[str, int]) -> Any:
    """An image from ``path``: told apart by content, an image file as it is, else the source
    assembled."""
    from ringlab.asm import assemble
    from ringlab.image import MAGIC, Image

    blob = _read_input(path, _MAX_INPUT_BYTES)
    if blob.startswith(MAGIC):
        if defines:
            raise UsageError(
                f"{path}: -D defines assembler symbols, but this file is an image assembled already"
            )
        try:
            return Image.from_bytes(blob)
        except ImageError as exc:
            raise ImageError(f"{path}: {exc}") from None
    if len(blob) > MAX_SOURCE_BYTES:
        raise UsageError(
            f"{path}: not an RL-32 image (it does not start with b'RL32'), and at {len(blob):,} bytes "
            f"over the {size_text(MAX_SOURCE_BYTES)} an assembly source file may hold"
        )
    return assemble(_decode_source(path, blob), filename=path, defines=defines)


def _build_user_program(path: str, kernel: str, defines: dict[str, int]) -> Any:
    """``boot --program FILE.s``: the guest kernel with FILE.s as program 0 (init)."""
    from ringlab.guestos.build import build_custom_image, source_dir

    text = _read_source(path)
    stand_in = str(source_dir() / "workloads" / "<test>.s")  # where build_custom_image assembles it
    try:
        return build_custom_image([text], kernel, defines)
    except AssemblyError as exc:
        if exc.file != stand_in:
            raise
        raise AssemblyError(path, exc.line, exc.column, exc.message) from None
    except UsageError as exc:
        raise UsageError(str(exc).replace(stand_in, path)) from None


# -- running ---------------------------------------------------------------------------------------------
def _run(image: Any, args: argparse.Namespace, input: bytes = b"") -> Any:
    """Run ``image`` in-process under the technique the options name."""
    from ringlab.cli.termout import spinner
    from ringlab.vmm import InstructionTracer, run_vm

    trace = getattr(args, "trace", None)
    checkpoint = _checkpoint(args)
    try:
        with (
            _trace_file(trace) as out,
            spinner(f"running under {args.technique}", enabled=not args.json and trace != "-"),
        ):
            return run_vm(
                image,
                technique=args.technique,
                nested_paging=args.nested_paging,
                memory_size=args.memory,
                max_instructions=args.max_instructions,
                input=input,
                tracer=None if out is None else InstructionTracer(out, limit=args.trace_limit),
                checkpoint=checkpoint,
            )
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("ringlab.vmm."):
            raise
        raise UsageError(f"technique {args.technique!r} is not available in this build of Ringlab") from None


@contextlib.contextmanager
def _trace_file(path: str | None) -> Iterator[TextIO | None]:
    """Where ``--trace`` writes: nowhere (None), standard error (``-``) or a file."""
    if path is None:
        yield None
    elif path == "-":
        yield sys.stderr
    else:
        with open(path, "w", encoding="utf-8", buffering=1 << 20) as out:
            yield out


def _print_result(result: Any, as_json: bool) -> None:
    """Console output to stdout (or the JSON object); how it ended to stderr."""
    if as_json:
        print(json.dumps(result.to_json()))
        return
    sys.stdout.write(result.console.decode("latin-1"))
    sys.stdout.flush()
    doc = result.to_json()
    ex = doc["exit"]
    code = "" if ex["code"] is None else f" code {ex['code']}"
    detail = f": {ex['detail']}" if ex["detail"] else ""
    diagnostics = doc.get("diagnostics")
    if diagnostics:
        from ringlab.vmm.diagnostics import summary

        print(summary(diagnostics), file=sys.stderr)
    retired = doc["stats"]["guest"].get("retired", "?")
    print(f"[ringlab] exit {ex['reason']}{code}{detail} after {retired} instructions", file=sys.stderr)


def _finish(result: Any, args: argparse.Namespace) -> int:
    """Print the result; the status is 0, or with ``--guest-status`` how the guest ended."""
    _print_result(result, args.json)
    if not args.guest_status:
        return EXIT_OK
    ex = result.to_json()["exit"]
    return guest_status(ex["reason"], ex["code"])


def cmd_asm(args: argparse.Namespace) -> int:
    from ringlab.asm import assemble

    image = assemble(_read_source(args.file), filename=args.file, defines=dict(args.defines))
    out = args.output or str(Path(args.file).with_suffix(".img"))
    try:
        image.save(out)
    except OSError as exc:
        exc.filename = exc.filename or out  # a failed write (not open) names no file
        raise
    print(f"{out}: {len(image.data)} bytes at {image.base:#x}, entry {image.entry:#x}", file=sys.stderr)
    return EXIT_OK


def cmd_disasm(args: argparse.Namespace) -> int:
    from ringlab.asm import disassemble
    from ringlab.image import Image

    try:
        image = Image.from_bytes(_read_input(args.image, _MAX_INPUT_BYTES))
    except ImageError as exc:
        raise ImageError(f"{args.image}: {exc}") from None
    sys.stdout.write(disassemble(image))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    if args.restore is not None:
        return _restore(args)
    if args.program is None:
        raise UsageError("give the PROGRAM to run, or --restore FILE to go on from a snapshot")
    image = _load_program(args.program, dict(args.defines))
    if args.via:
        return _via(image, args, kernel=NO_KERNEL, workload=Path(args.program).stem)
    result = _run(image, args, args.input.encode("latin-1"))
    return _finish(result, args)


def _checkpoint(args: argparse.Namespace) -> tuple[int, Callable[[Any], None]] | None:
    """``--snapshot FILE --snapshot-at N``: when and how to take the snapshot (None: not asked)."""
    if (args.snapshot is None) != (args.snapshot_at is None):
        raise UsageError("--snapshot FILE and --snapshot-at N go together: give both")
    if args.snapshot is None:
        return None
    path = str(args.snapshot)

    def take(vm: Any) -> None:
        from ringlab.vmm.snapshot import snapshot, write_snapshot

        size = write_snapshot(snapshot(vm), path)
        print(
            f"[ringlab] snapshot at {vm.cpu.stats.retired} instructions written to {path} ({size:,} bytes)",
            file=sys.stderr,
        )

    return int(args.snapshot_at), take


def _restore(args: argparse.Namespace) -> int:
    """``ringlab run --restore FILE``: the VM a snapshot holds, run on to its end."""
    from ringlab.cli.termout import spinner
    from ringlab.vmm import run_from
    from ringlab.vmm.snapshot import read_snapshot, restore

    given = [
        flag
        for flag, used in (
            ("PROGRAM", args.program is not None),
            ("-D", bool(args.defines)),
            ("--technique", args.technique != TechniqueName.NATIVE.value),
            ("--nested-paging", args.nested_paging),
            ("--memory", args.memory != DEFAULT_MEMORY),
            ("--input", bool(args.input)),
            ("--via", args.via is not None),
            ("--trace", args.trace is not None),
        )
        if used
    ]
    if given:
        raise UsageError(
            f"--restore goes on with the VM the snapshot holds (its program, technique, memory and "
            f"input): leave out {', '.join(given)}"
        )
    checkpoint = _checkpoint(args)
    vm = restore(read_snapshot(args.restore))
    with spinner(f"running the restored VM ({vm.technique.name})", enabled=not args.json):
        result = run_from(vm, args.max_instructions, checkpoint)
    return _finish(result, args)


def cmd_boot(args: argparse.Namespace) -> int:
    from ringlab.guestos.build import build_image

    kernel = args.kernel or default_kernel(args.technique)
    defines = dict(args.defines)
    if args.program and args.workload:
        raise UsageError(
            "--program and --workload both name what init runs: give one (--program FILE.s runs your "
            "own user program on the guest kernel, --workload NAME one of the built-in workloads)"
        )
    if args.program:
        image = _build_user_program(args.program, kernel, defines)
        workload = Path(args.program).stem
    else:
        workload = args.workload or "hello"
        image = build_image(workload, kernel, defines)
    if args.via:
        return _via(image, args, kernel=kernel, workload=workload)
    return _finish(_run(image, args), args)


def _via(image: Any, args: argparse.Namespace, *, kernel: str, workload: str) -> int:
    """The same run through a deployment: same output, or exit status 3 saying why not."""
    from ringlab.cli.deployment import run_via

    if getattr(args, "trace", None) is not None:
        raise UsageError(
            "--trace traces an in-process run: leave out --via (for a deployment: 'ringlab trace vm')"
        )

    result = run_via(args, image, kernel=kernel, workload=workload)
    if isinstance(result, int):
        return result
    return _finish(result, args)


def cmd_bench(args: argparse.Namespace) -> int:
    from ringlab.cli.bench import run_suite

    _check_bench_options(args)
    return run_suite(args)


_BENCH_OPTIONS: dict[str, tuple[str, ...]] = {
    "vms": ("--vms", "contention"),
    "weights": ("--weights", "contention"),
    "plot": ("--plot", "micro"),
    "only": ("--only", "micro"),
    "techniques": ("--techniques", "micro"),
    "rounds": ("--rounds", "speed", "efficiency"),
    "repeats": ("--repeats", "efficiency", "micro", "recorder"),
    "profile": ("--profile", "micro"),
    "paper": ("--paper", "micro"),
    "tlb": ("--tlb", "micro"),
    "bandwidth": ("--bandwidth", "migration"),
}


def _check_bench_options(args: argparse.Namespace) -> None:
    """Refuse an option the chosen suite would silently ignore."""
    for dest, (flag, *suites) in _BENCH_OPTIONS.items():
        if getattr(args, dest) is not None and args.suite not in suites:
            which = ", ".join(f"--suite {s}" for s in suites[:-1])
            which = f"{which} and --suite {suites[-1]}" if which else f"--suite {suites[-1]}"
            raise UsageError(f"{flag} applies to {which} only, not to --suite {args.suite}")
    if args.suite == "efficiency" and args.rounds is not None:
        from ringlab.cli.bench.efficiency import ROUNDS

        if args.rounds <= ROUNDS[0]:
            raise UsageError(
                f"--rounds {args.rounds}: the efficiency suite times the rounds beyond its short run of "
                f"{ROUNDS[0]}, so give more than {ROUNDS[0]}"
            )
    if args.weights is not None and args.vms is not None and len(args.weights) != args.vms:
        raise UsageError(
            f"--vms {args.vms} but --weights gives {len(args.weights)} weights: give one weight per VM "
            "(or leave out --vms: the number of weights is the number of VMs)"
        )


def _parse_tlb(text: str) -> Any:
    from ringlab.machine.tlb import TlbGeometry

    try:
        return TlbGeometry.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_demo(args: argparse.Namespace) -> int:
    from ringlab.cli.demo import run_demo

    return run_demo(args)


def cmd_isa(args: argparse.Namespace) -> int:
    from ringlab.cli.isa_doc import isa_markdown, isa_table

    if args.markdown:
        sys.stdout.write(isa_markdown())
    else:
        from ringlab.cli.termout import stdout_console

        isa_table(stdout_console())
    return EXIT_OK


def cmd_completion(args: argparse.Namespace) -> int:
    import shtab

    sys.stdout.write(shtab.complete(build_parser(), shell=args.shell))
    return EXIT_OK


# -- the parser ------------------------------------------------------------------------------------
def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--technique",
        choices=TECHNIQUES,
        default=TechniqueName.NATIVE.value,
        help="how the guest is virtualized (default: %(default)s, no hypervisor)",
    )
    p.add_argument(
        "--nested-paging", action="store_true", help="with --technique hw: nested paging (default: off)"
    )
    p.add_argument(
        "--memory",
        type=_parse_size,
        default=DEFAULT_MEMORY,
        metavar="BYTES",
        help="guest RAM, such as 4194304, 0x400000, 512K or 4M, at most 1G (default: 4M)",
    )
    p.add_argument(
        "--max-instructions",
        type=_parse_count,
        default=None,
        metavar="N",
        help="stop after N retired instructions (exit reason 'limit'; default: no limit)",
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON object: console, exit, registers, stats"
    )
    p.add_argument(
        "--guest-status",
        action="store_true",
        help=(
            "exit with how the guest ended instead of 0: its power-off code (0-255), "
            f"{GUEST_HALT} halt, {GUEST_SHUTDOWN} shutdown (triple fault), {GUEST_LIMIT} limit, "
            f"{GUEST_REFUSED} refused; 1, 2, 3 keep their meaning (default: off, exit 0 when the run worked)"
        ),
    )
    p.add_argument(
        "--trace",
        metavar="FILE",
        default=None,
        help=(
            "write an instruction trace to FILE ('-': standard error): every retired instruction "
            "with its count, virtual time, address, guest ring and disassembly, every event "
            "delivered and every world switch; the guest runs on the interpreter (default: off)"
        ),
    )
    p.add_argument(
        "--snapshot-at",
        type=_parse_count,
        default=None,
        metavar="N",
        help="with --snapshot: take the snapshot once N instructions have retired, then go on (default: none)",
    )
    p.add_argument(
        "--snapshot",
        metavar="FILE",
        default=None,
        help="write a snapshot of the whole VM to FILE at --snapshot-at N; 'ringlab run --restore FILE' "
        "goes on from it (default: none)",
    )
    p.add_argument(
        "--trace-limit",
        type=_parse_count,
        default=None,
        metavar="N",
        help="with --trace: write the first N instructions only, the run goes on (default: no limit)",
    )
    p.add_argument(
        "--via",
        metavar="HOST:PORT",
        default=None,
        help="run on the hypervisor of a deployment ('ringlab up') instead of in-process (default: in-process)",
    )


def _add_defines(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-D",
        dest="defines",
        action="append",
        type=define,
        default=[],
        metavar="NAME[=VALUE]",
        help="define an assembler symbol, NAME alone means 1; may repeat (default: none)",
    )


_FILES = {"bash": "_shtab_compgen_files", "zsh": "_files"}
"""shtab's file completion (``shtab.FILE``), set on the arguments that name a file."""


def _file(action: argparse.Action) -> None:
    action.complete = _FILES  # type: ignore[attr-defined]  # read by shtab


def _command(sub: Any, name: str, summary: str, func: Callable[[argparse.Namespace], int]) -> Any:
    p = sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    from ringlab.cli.bench.efficiency import REPEATS as EFFICIENCY_REPEATS
    from ringlab.cli.bench.efficiency import ROUNDS as EFFICIENCY_ROUNDS
    from ringlab.cli.bench.micro import BENCHMARKS, COLUMNS
    from ringlab.cli.bench.micro import REPEATS as MICRO_REPEATS
    from ringlab.cli.bench.migration import DEFAULT_BANDWIDTH_MBIT as MIGRATION_MBIT
    from ringlab.cli.bench.recorder import DEFAULT_REPEATS as RECORDER_REPEATS
    from ringlab.cli.bench.speed import DEFAULT_ROUNDS
    from ringlab.cli.demo import CHART as DEMO_CHART
    from ringlab.guestos.build import FLAVOURS, WORKLOADS
    from ringlab.vmm.costs import DEFAULT_PROFILE, PROFILES

    parser = argparse.ArgumentParser(
        prog="ringlab",
        description="Ringlab: see and measure why a CPU with protection rings is hard to virtualize.",
        epilog=(
            "Start with 'ringlab demo'. Every command takes --help. Exit statuses: 0 worked, 1 internal "
            "error (a bug), 2 bad usage, 3 deployment unreachable or refusing, 4 a chaos check failed, "
            "130 interrupted."
        ),
    )
    parser.add_argument("--version", action="version", version=f"ringlab {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        default=_debug_env(),
        help=f"on an internal error, print the whole traceback (default: off, or on when {DEBUG_ENV}=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(
        sub,
        "demo",
        "start a local deployment, watch VMs under every technique share one pCPU, and chart it",
        cmd_demo,
    )
    p.add_argument(
        "--chart",
        metavar="FILE.png",
        default=DEMO_CHART,
        help="where to draw which VM held the pCPU over time (default: %(default)s)",
    )

    p = _command(
        sub, "run", "run PROGRAM (assembly source or an image from 'ringlab asm') as the whole guest", cmd_run
    )
    _file(
        p.add_argument(
            "program",
            metavar="PROGRAM",
            nargs="?",
            help="RL-32 assembly source (PROGRAM.s) or an image written by 'ringlab asm', told apart by content",
        )
    )
    _file(
        p.add_argument(
            "--restore",
            metavar="FILE",
            default=None,
            help="go on from a snapshot ('--snapshot') instead of running a PROGRAM (default: none)",
        )
    )
    _add_defines(p)
    _add_run_options(p)
    p.add_argument(
        "--input",
        type=_parse_input,
        default="",
        metavar="TEXT",
        help="what the console offers to 'in' from the start (default: nothing)",
    )

    workloads = ", ".join(WORKLOADS)
    p = _command(sub, "boot", "boot the Ringlab guest OS with a workload or your own user program", cmd_boot)
    p.add_argument(
        "--kernel",
        choices=FLAVOURS,
        default=None,
        help="kernel flavour (default: paravirt under --technique pv, stock otherwise)",
    )
    p.add_argument(
        "--workload",
        default=None,
        metavar="NAME",
        help=f"built-in workload init runs, one of: {workloads} (default: hello)",
    )
    _file(
        p.add_argument(
            "--program",
            default=None,
            metavar="FILE.s",
            help=(
                'your own user program as init instead of a workload: it starts with .include "lib.s" '
                "(the guest OS's user runtime; see docs/guest-os.md) (default: none)"
            ),
        )
    )
    _add_defines(p)
    _add_run_options(p)

    p = _command(sub, "asm", "assemble FILE.s into an image", cmd_asm)
    _file(p.add_argument("file", metavar="FILE.s", help="RL-32 assembly source"))
    _file(p.add_argument("-o", "--output", metavar="IMAGE", help="output image (default: FILE.img)"))
    _add_defines(p)

    p = _command(sub, "disasm", "disassemble an image into assembly that assembles back to it", cmd_disasm)
    _file(p.add_argument("image", metavar="IMAGE", help="an image written by 'ringlab asm'"))

    p = _command(
        sub, "bench", "run a benchmark suite (default: the microbenchmarks under every technique)", cmd_bench
    )
    p.add_argument(
        "--suite",
        choices=("micro", "speed", "efficiency", "contention", "services", "recorder", "migration"),
        default="micro",
        help="which suite; contention, services, recorder and migration run local deployments "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--bandwidth",
        type=number_in(0, 8_000_000, "megabits per second"),
        default=None,
        metavar="MBIT/S",
        help=f"migration: the modelled link between the two deployments (default: {MIGRATION_MBIT:g})",
    )
    p.add_argument(
        "--vms",
        type=int_in(1, MAX_BENCH_VMS),
        default=None,
        metavar="N",
        help=f"contention: VMs sharing one pCPU, 1-{MAX_BENCH_VMS} (default: 16, or one per --weights)",
    )
    p.add_argument(
        "--weights",
        type=_parse_weights,
        metavar="W,W,...",
        default=None,
        help=f"contention: one scheduler weight per VM, each 1-{MAX_WEIGHT} (default: 256 for every VM)",
    )
    p.add_argument(
        "--json", action="store_true", help="print the figures as one JSON object (default: a table)"
    )
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        help="micro: also draw a chart of cycles per iteration (default: no chart)",
    )
    p.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        choices=[b.name for b in BENCHMARKS],
        help=f"micro: run only these benchmarks, of {', '.join(b.name for b in BENCHMARKS)} (default: all)",
    )
    p.add_argument(
        "--techniques",
        nargs="+",
        metavar="T",
        choices=[c.label for c in COLUMNS],
        help=f"micro: only these columns, of {', '.join(c.label for c in COLUMNS)} (default: all)",
    )
    p.add_argument(
        "--rounds",
        type=int_in(1, 1 << 20),
        default=None,
        metavar="N",
        help=f"speed: FNV-1a rounds the guest and Python compute (default: {DEFAULT_ROUNDS}); "
        f"efficiency: rounds of the long run, whose extra rounds are the work timed (default: {EFFICIENCY_ROUNDS[1]})",
    )
    p.add_argument(
        "--repeats",
        type=int_in(1, 100),
        default=None,
        metavar="N",
        help=f"efficiency: best of N runs of each technique (default: {EFFICIENCY_REPEATS}); micro: the "
        f"CPU time per iteration from the fastest of N runs of each count (default: {MICRO_REPEATS}); "
        f"recorder: best of N runs each way (default: {RECORDER_REPEATS})",
    )
    p.add_argument(
        "--profile",
        choices=list(PROFILES),
        default=None,
        help=f"micro: the cost model's era, {'; '.join(f'{k}: {v.about}' for k, v in PROFILES.items())} "
        f"(default: {DEFAULT_PROFILE})",
    )
    p.add_argument(
        "--paper",
        action="store_true",
        default=None,
        help="micro: print the published cycles beside Ringlab's (Adams & Agesen 2006; Bhargava et al. "
        "2008 for tlbmiss) and each benchmark's software/hardware ratio in both (default: off)",
    )
    p.add_argument(
        "--tlb",
        type=_parse_tlb,
        default=None,
        metavar="ENTRIES[xWAYS]",
        help="micro: the core's TLB, e.g. 64x4 (entries x ways; ways = entries is fully associative); "
        "it changes the page walks' cycles, never a result (default: 64x4)",
    )

    # The service commands (up, vm, top, ...) live beside their gRPC clients.
    from ringlab.cli.deployment import add_service_commands

    add_service_commands(sub)
    from ringlab.cli.chaos import add_chaos_command

    add_chaos_command(sub)  # ringlab chaos run | check
    from ringlab.cli.trace import add_trace_command

    add_trace_command(sub)  # ringlab trace run

    p = _command(sub, "isa", "print the RL-32 instruction table", cmd_isa)
    p.add_argument(
        "--markdown",
        action="store_true",
        help="as the Markdown table of docs/isa.md (default: a terminal table)",
    )

    p = _command(sub, "completion", "print a shell completion script for bash or zsh", cmd_completion)
    p.epilog = (
        'bash: eval "$(ringlab completion bash)" in ~/.bashrc; zsh: ringlab completion zsh > '
        '"${fpath[1]}/_ringlab", then restart zsh'
    )
    p.add_argument("shell", choices=("bash", "zsh"), help="the shell to complete for")
    return parser


# -- main ----------------------------------------------------------------------------------------------
def _oserror(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        reason = "no such file"
    elif isinstance(exc, IsADirectoryError):
        reason = "is a directory, not a file"
    elif isinstance(exc, PermissionError):
        reason = "permission denied"
    else:
        reason = (exc.strerror or str(exc) or type(exc).__name__).lower()
    return f"{exc.filename}: {reason}" if exc.filename else reason


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Known before parsing, so that an error while building the parser honours it too.
    debug = _debug_env() or "--debug" in (argv[: argv.index("--")] if "--" in argv else argv)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        debug = debug or args.debug
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except DeploymentFailed as exc:
        _traceback(debug)
        print(f"ringlab: {exc}", file=sys.stderr)
        return EXIT_DEPLOYMENT
    except RinglabError as exc:
        # Bad usage, assembly errors (file:line:column: reason) and malformed images.
        _traceback(debug)
        print(f"ringlab: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):  # `ringlab isa | head`: the reader has what it wanted
            _silence_stdout()
            return EXIT_OK
        _traceback(debug)
        print(f"ringlab: {_oserror(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError:
        _traceback(debug)
        print("ringlab: this machine ran out of memory (ask for less: --memory)", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("ringlab: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        _traceback(debug)
        deployment = _deployment_failure(exc)
        if deployment is not None:
            print(f"ringlab: {deployment}", file=sys.stderr)
            return EXIT_DEPLOYMENT
        print(INTERNAL_ERROR.format(kind=type(exc).__name__, message=exc), file=sys.stderr)
        return EXIT_INTERNAL


def _deployment_failure(exc: Exception) -> str | None:
    """What to print for a gRPC error that escaped a command (demo, bench through a deployment),
    or None for any other exception: the client commands raise DeploymentFailed themselves."""
    grpc = sys.modules.get("grpc")
    rpc_error = getattr(grpc, "RpcError", None)
    if isinstance(rpc_error, type) and isinstance(exc, rpc_error):
        code, details = getattr(exc, "code", None), getattr(exc, "details", None)
        status = code().name if callable(code) else type(exc).__name__
        return f"a call to the deployment failed: {status}: {details() if callable(details) else exc}"
    return None


def _debug_env() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")


def _traceback(debug: bool) -> None:
    if debug:
        import traceback

        traceback.print_exc()


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so the interpreter's final flush is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
