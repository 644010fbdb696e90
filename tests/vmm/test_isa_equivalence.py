"""The RL-32 conformance programs of tests/isa, each run natively and under bt, hw and hw with
nested paging, must agree (console, exit, registers, virtual time; cpuid leaf 1 bit 31 aside).

The programs are the ones tests/isa runs (each of its tests shows its own); the plugin
``tests/vmm/equivalence_plugin.py`` runs every one of them under the techniques as well and
records any difference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FILES = ["arith", "control", "cpuid", "cr_reset", "devices", "faults", "time", "privilege", "paging"]


def test_isa_programs_are_equivalent_under_bt_hw_and_nested_paging(tmp_path: Path) -> None:
    report = tmp_path / "differences.jsonl"
    env = dict(os.environ, RINGLAB_EQUIVALENCE="bt,hw,hw+np", RINGLAB_EQUIVALENCE_REPORT=str(report))
    args = [sys.executable, "-m", "pytest", "-q", "-x", "-n", "4", "-p", "tests.vmm.equivalence_plugin"]
    done = subprocess.run(
        args + [f"tests/isa/test_{name}.py" for name in FILES],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-2000:]
    rows = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    unexpected = [(row["test"], row["technique"], row["differs"]) for row in rows]
    assert unexpected == []
