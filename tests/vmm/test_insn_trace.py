"""The instruction trace (``ringlab run --trace``, issue 15): one line per retired instruction,
each event delivered and each world switch, under every technique, without changing what the
guest sees."""

from __future__ import annotations

import io
import re
from collections import Counter
from typing import Any

import pytest

from ringlab.guestos.build import build_image
from ringlab.image import Image
from ringlab.vmm import InstructionTracer, run_vm

RUNS = [
    ("native", "stock"),
    ("trap-emulate", "stock"),
    ("bt", "stock"),
    ("hw", "stock"),
    ("hw+np", "stock"),
    ("pv", "paravirt"),
]
LINE = re.compile(
    r"^ +(?P<n>\d+)  tsc (?P<tsc>\d+) +(?P<eip>0x[0-9a-f]{8})  r(?P<ring>[0-3])  (?P<raw>[0-9a-f?]{2}(?: [0-9a-f?]{2})*)  +(?P<text>\S.*)$"
)
DEFINES = {"ITERATIONS": 20}


def run(technique: str, image: Image, tracer: InstructionTracer | None = None) -> dict[str, Any]:
    name, _, np = technique.partition("+")
    return run_vm(image, technique=name, nested_paging=bool(np), tracer=tracer).to_json()


def traced(technique: str, kernel: str, **kw: Any) -> tuple[dict[str, Any], list[str]]:
    out = io.StringIO()
    result = run(technique, build_image("syscall", kernel, DEFINES), InstructionTracer(out, **kw))
    return result, out.getvalue().splitlines()


@pytest.mark.parametrize(("technique", "kernel"), RUNS)
def test_a_traced_run_ends_as_an_untraced_one(technique: str, kernel: str) -> None:
    """Tracing changes nothing the guest sees: console, exit, registers and guest statistics."""
    plain = run(technique, build_image("syscall", kernel, DEFINES))
    result, _lines = traced(technique, kernel)
    for key in ("console", "exit", "registers"):
        assert result[key] == plain[key], key
    assert result["stats"]["guest"] == plain["stats"]["guest"]


@pytest.mark.parametrize(("technique", "kernel"), RUNS)
def test_every_retired_instruction_is_a_line_at_its_guest_ring(technique: str, kernel: str) -> None:
    result, lines = traced(technique, kernel)
    guest = result["stats"]["guest"]
    insns = [m for m in map(LINE.match, lines) if m]
    assert [int(m["n"]) for m in insns] == list(range(1, guest["retired"] + 1))
    rings = Counter(int(m["ring"]) for m in insns)
    assert {str(k): v for k, v in rings.items()} == {k: v for k, v in guest["retired_by_ring"].items() if v}
    assert all(m["text"] != "(undefined)" and "??" not in m["raw"] for m in insns)
    switches = Counter(line.split("world switch: ", 1)[1] for line in lines if "world switch: " in line)
    assert switches == Counter(guest.get("exits", {}))
    assert len(insns) + sum(switches.values()) + sum("-->" in line for line in lines) == len(lines)


def test_the_trace_shows_the_guests_own_code_and_its_system_calls() -> None:
    """The first instruction is the image's entry, disassembled as the disassembler would; the
    workload's system calls are delivered as ``int 0x80`` natively."""
    image = build_image("syscall", "stock", DEFINES)
    _result, lines = traced("native", "stock")
    first = LINE.match(lines[0])
    assert first is not None and int(first["eip"], 16) == image.entry
    assert sum("--> int 0x80 delivered" in line for line in lines) >= DEFINES["ITERATIONS"]


@pytest.mark.parametrize(("technique", "kernel"), RUNS)
def test_each_event_the_guest_took_is_a_delivery_line(technique: str, kernel: str) -> None:
    """The guest's exceptions and software interrupts (``stats.guest.exceptions``, by vector)
    are the trace's deliveries; a page fault says its error code and address."""
    result, lines = traced(technique, kernel)
    delivered = Counter(
        14 if " #PF " in line else int(line.split("--> int ", 1)[1].split()[0], 16)
        for line in lines
        if "--> " in line
    )
    assert {str(k): v for k, v in delivered.items()} == result["stats"]["guest"]["exceptions"]
    (fault,) = [line for line in lines if "--> #PF" in line]
    assert "error code 0x6, cr2 0x7ffffc" in fault


def test_the_limit_keeps_the_first_instructions_and_the_run_goes_on() -> None:
    result, lines = traced("bt", "stock", limit=50)
    insns = [m for m in map(LINE.match, lines) if m]
    assert [int(m["n"]) for m in insns] == list(range(1, 51))
    assert result["exit"]["reason"] == "poweroff"
    assert result["stats"]["guest"]["retired"] > 50


@pytest.mark.parametrize(("technique", "kernel"), RUNS)
def test_a_software_interrupt_is_its_own_int_line_then_its_delivery(technique: str, kernel: str) -> None:
    """``int 0x80`` shows as itself (its address and disassembly), and its delivery line comes
    after it: from the instruction after the ``int`` to the handler, whose first instruction is
    the next line.  (The core delivers before it retires; the trace once printed the handler's
    address and code on the ``int``'s line, after the delivery.)"""
    _result, lines = traced(technique, kernel)
    deliveries = [i for i, line in enumerate(lines) if "--> int 0x80 delivered" in line]
    assert len(deliveries) >= DEFINES["ITERATIONS"]
    for i in deliveries:
        before = LINE.match(lines[i - 1])
        assert before is not None, lines[i - 1]
        assert before["text"] == "int 128", lines[i - 1]
        source, handler = (int(x, 16) for x in re.findall(r"(?:from|to) (0x[0-9a-f]+)", lines[i]))
        assert source == int(before["eip"], 16) + 2
        after = next(m for m in map(LINE.match, lines[i + 1 :]) if m)
        assert int(after["eip"], 16) == handler
