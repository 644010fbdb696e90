"""The RL-32 conformance programs of tests/isa, each run natively and under bt, hw and hw with
nested paging, must agree (console, exit, registers, virtual time; cpuid leaf 1 bit 31 aside).

The programs are the ones tests/isa runs (each of its tests shows its own); the plugin
``tests/vmm/equivalence_plugin.py`` runs every one of them under the techniques as well and
records any difference.  A few paging programs that depend on cr0.WP = 0 are known to differ
under bt (docs/techniques.md, "Limits"); they are listed here, not hidden.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FILES = ["arith", "control", "cpuid", "cr_reset", "devices", "faults", "time", "privilege", "paging"]
KNOWN_BT_LIMITS = {
    # bt keeps the real cr0.WP = 1 to write-protect translated code; with the guest's WP = 0
    # the shadow cannot give user pages one permission and the kernel another.
    "test_supervisor_write_to_read_only_page_succeeds_when_wp_clear",
    "test_user_read_of_read_only_user_page_succeeds",
    "test_supervisor_write_needs_w_in_pde_only_when_wp_set",
    "test_setting_wp_applies_to_an_already_cached_read_only_page",
}


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
    unexpected = [
        (row["test"], row["technique"], row["differs"])
        for row in rows
        if not (row["technique"] == "bt" and row["test"].split("::")[-1].split("[")[0] in KNOWN_BT_LIMITS)
    ]
    assert unexpected == []
