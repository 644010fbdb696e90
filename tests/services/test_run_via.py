"""``ringlab run PROGRAM.s --via`` prints exactly what the in-process run prints, for bare
programs (no guest OS) that end every way a run can end, under every technique."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ringlab.cli import main
from tests.services.conftest import Deployment

PROGRAMS = {
    "poweroff": """
        mov eax, 'o'
        out 0x3F8, eax
        mov eax, 'k'
        out 0x3F8, eax
        mov eax, 0x103
        out 0xF4, eax
    """,
    "halt": """
        hlt
    """,
    "echo_input": """
    again:
        in eax, 0x3F8
        cmp eax, 0xFFFFFFFF
        je done
        out 0x3F8, eax
        jmp again
    done:
        out 0xF4, eax
    """,
    "triple_fault": """
        mov eax, 0
        div eax
    """,
    "loop_forever": """
    top:
        add ebx, 1
        jmp top
    """,
}
OPTIONS = {"echo_input": ["--input", "hi there"], "loop_forever": ["--max-instructions", "12345"]}
SLICE_DEPENDENT = ("translations", "translated_instructions", "cycles")


def _doc(out: str, technique: str) -> dict[str, object]:
    """The JSON object less host figures; under bt also less what depends on slice boundaries
    (translations start where a slice starts; see test_equivalence.SLICE_DEPENDENT)."""
    doc: dict[str, object] = json.loads(out)
    stats = doc.pop("stats")
    assert isinstance(stats, dict)
    skip = SLICE_DEPENDENT if technique == "bt" else ()
    doc["guest"] = {k: v for k, v in stats["guest"].items() if k not in skip}
    return doc


@pytest.mark.parametrize("technique", ["native", "trap-emulate", "bt", "hw"])
@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_run_via_equals_in_process(
    deployment: Deployment, tmp_path: Path, capsys: pytest.CaptureFixture[str], program: str, technique: str
) -> None:
    path = tmp_path / f"{program}.s"
    path.write_text(PROGRAMS[program])
    args = ["run", str(path), "--technique", technique, *OPTIONS.get(program, [])]
    assert main([*args, "--json"]) == 0
    local = capsys.readouterr().out
    assert main([*args, "--json", "--via", deployment.hypervisor_target]) == 0
    remote = capsys.readouterr().out
    assert _doc(remote, technique) == _doc(local, technique)
    assert main(args) == 0
    plain_local = capsys.readouterr()
    assert main([*args, "--via", deployment.hypervisor_target]) == 0
    plain_remote = capsys.readouterr()
    assert plain_remote.out == plain_local.out
    assert plain_remote.err == plain_local.err
