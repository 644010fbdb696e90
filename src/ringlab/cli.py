"""The ``ringlab`` command.

Exit status (ISA.md, "Running a program"): 0 when the command itself worked, whatever the guest
did; 2 for bad usage (unknown option or technique, a program that does not assemble); 3 when a
deployment named with ``--via`` cannot be reached or refuses the caller.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ringlab import __version__
from ringlab.errors import RinglabError, UsageError

__all__ = ["main"]

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

TECHNIQUES = ("native", "trap-emulate", "bt", "pv", "hw")
"""Every technique ``--technique`` names (DESIGN.md)."""


def _run(image: Any, args: argparse.Namespace, input: bytes = b"") -> Any:
    """Run ``image`` in-process under the technique the options name."""
    from ringlab.vmm import run_vm

    try:
        return run_vm(
            image,
            technique=args.technique,
            nested_paging=args.nested_paging,
            memory_size=args.memory,
            max_instructions=args.max_instructions,
            input=input,
        )
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("ringlab.vmm."):
            raise
        raise UsageError(f"technique {args.technique!r} is not available in this build of Ringlab") from None


def _parse_define(text: str) -> tuple[str, int]:
    """``-D NAME=VALUE`` or ``-D NAME`` (= 1)."""
    name, sep, value = text.partition("=")
    if not name.isidentifier():
        raise argparse.ArgumentTypeError(f"-D wants NAME or NAME=VALUE with NAME an identifier, got {text!r}")
    if not sep:
        return name, 1
    try:
        return name, int(value, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"-D {name}: value {value!r} is not an integer") from None


def _parse_size(text: str) -> int:
    """A byte count: ``4194304``, ``0x400000``, ``4M``, ``512K``."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    scale = units.get(text[-1:].upper(), 1)
    digits = text[:-1] if scale != 1 else text
    try:
        value = int(digits, 0) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a size in bytes such as 4194304 or 4M, got {text!r}"
        ) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return value


def _parse_count(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--technique",
        choices=TECHNIQUES,
        default="native",
        help="how the guest is virtualized (default: native, no hypervisor)",
    )
    p.add_argument("--nested-paging", action="store_true", help="with --technique hw: nested paging")
    p.add_argument(
        "--memory", type=_parse_size, default=4 << 20, metavar="BYTES", help="guest RAM (default 4M)"
    )
    p.add_argument(
        "--max-instructions",
        type=_parse_count,
        default=None,
        metavar="N",
        help="stop after N retired instructions (exit reason 'limit'; default: no limit)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object (ISA.md contract)")
    p.add_argument(
        "--via",
        metavar="HOST:PORT",
        default=None,
        help="run on the hypervisor of a deployment ('ringlab up') instead of in-process",
    )


def _add_defines(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-D",
        dest="defines",
        action="append",
        type=_parse_define,
        default=[],
        metavar="NAME[=VALUE]",
        help="define an assembler symbol (NAME alone means 1)",
    )


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


def cmd_asm(args: argparse.Namespace) -> int:
    from ringlab.asm import assemble_file

    image = assemble_file(args.file, defines=dict(args.defines))
    out = args.output or str(Path(args.file).with_suffix(".img"))
    image.save(out)
    print(f"{out}: {len(image.data)} bytes at {image.base:#x}, entry {image.entry:#x}", file=sys.stderr)
    return EXIT_OK


def cmd_disasm(args: argparse.Namespace) -> int:
    from ringlab.asm import disassemble
    from ringlab.image import Image

    sys.stdout.write(disassemble(Image.load(args.image)))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from ringlab.asm import assemble_file

    image = assemble_file(args.program, defines=dict(args.defines))
    if args.via:
        return _via(image, args, kernel="none", workload=Path(args.program).stem)
    result = _run(image, args, args.input.encode("latin-1"))
    _print_result(result, args.json)
    return EXIT_OK


def cmd_boot(args: argparse.Namespace) -> int:
    from ringlab.guestos.build import build_image

    image = build_image(args.workload, args.kernel, dict(args.defines))
    if args.via:
        return _via(image, args, kernel=args.kernel, workload=args.workload)
    result = _run(image, args)
    _print_result(result, args.json)
    return EXIT_OK


def _via(image: Any, args: argparse.Namespace, *, kernel: str, workload: str) -> int:
    """The same run through a deployment: same output, or exit status 3 saying why not."""
    from ringlab.cli_services import run_via

    result = run_via(args, image, kernel=kernel, workload=workload)
    if isinstance(result, int):
        return result
    _print_result(result, args.json)
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from ringlab.bench import run_suite

    return run_suite(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from ringlab.demo import run_demo

    return run_demo(args)


def cmd_isa(args: argparse.Namespace) -> int:
    from ringlab.isa_doc import isa_markdown, isa_table

    if args.markdown:
        sys.stdout.write(isa_markdown())
    else:
        isa_table()
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ringlab",
        description="Ringlab: see and measure why a CPU with protection rings is hard to virtualize.",
        epilog="Start with 'ringlab demo'. Every command takes --help.",
    )
    parser.add_argument("--version", action="version", version=f"ringlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="boot the guest OS with several workloads and show what happened")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="assemble PROGRAM.s and run it as the whole guest OS")
    p.add_argument("program", metavar="PROGRAM.s")
    _add_defines(p)
    _add_run_options(p)
    p.add_argument(
        "--input", default="", metavar="TEXT", help="what the console offers to 'in' from the start"
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("boot", help="boot the Ringlab guest OS with a workload")
    p.add_argument("--kernel", choices=("stock", "paravirt"), default="stock", help="kernel flavour")
    p.add_argument("--workload", default="hello", help="workload to run (see docs/guest-os.md)")
    _add_defines(p)
    _add_run_options(p)
    p.set_defaults(func=cmd_boot)

    p = sub.add_parser("asm", help="assemble FILE.s into an image")
    p.add_argument("file", metavar="FILE.s")
    p.add_argument("-o", "--output", metavar="IMAGE", help="output image (default FILE.img)")
    _add_defines(p)
    p.set_defaults(func=cmd_asm)

    p = sub.add_parser("disasm", help="disassemble an image into assembly that assembles back to it")
    p.add_argument("image", metavar="IMAGE")
    p.set_defaults(func=cmd_disasm)

    p = sub.add_parser(
        "bench", help="run a benchmark suite (default: the microbenchmarks under every technique)"
    )
    p.add_argument(
        "--suite",
        choices=("micro", "speed", "efficiency", "contention", "services"),
        default="micro",
        help="which suite (default micro; contention and services run a local deployment)",
    )
    p.add_argument(
        "--vms", type=_parse_count, default=16, help="contention: VMs sharing one pCPU (default 16)"
    )
    p.add_argument(
        "--weights", metavar="W,W,...", default=None, help="contention: scheduler weights (default all equal)"
    )
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.add_argument("--plot", metavar="FILE.png", help="micro: also draw a chart of cycles per iteration")
    p.add_argument("--only", nargs="+", metavar="NAME", help="micro: run only these benchmarks")
    p.add_argument(
        "--techniques", nargs="+", metavar="T", help="micro: only these columns (e.g. native hw+np)"
    )
    p.add_argument("--rounds", type=_parse_count, default=None, help="speed: FNV-1a rounds (default 64)")
    p.set_defaults(func=cmd_bench)

    # The service commands (up, vm, top, ...) live beside their gRPC clients.
    from ringlab.cli_services import add_service_commands

    add_service_commands(sub)

    p = sub.add_parser("isa", help="print the RL-32 instruction table")
    p.add_argument("--markdown", action="store_true", help="as the Markdown table of docs/isa.md")
    p.set_defaults(func=cmd_isa)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except RinglabError as exc:
        # Bad usage, assembly errors (file:line:column: reason) and malformed images.
        print(f"ringlab: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FileNotFoundError as exc:
        print(f"ringlab: {exc.filename}: no such file", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("ringlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
