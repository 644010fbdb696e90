"""The generated gRPC code in src/ringlab/v1 is exactly what scripts/gen-proto makes from proto/."""

from __future__ import annotations

import filecmp
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_committed_generated_code_matches_the_protos(tmp_path: Path) -> None:
    gen = runpy.run_path(str(ROOT / "scripts" / "gen-proto"))
    produced = {p.name for p in gen["generate"](tmp_path)}
    committed_dir = ROOT / "src" / "ringlab" / "v1"
    committed = {p.name for p in committed_dir.iterdir() if p.is_file() and p.suffix in (".py", ".pyi")}
    assert produced == committed, "run scripts/gen-proto: the set of generated files differs"
    drifted = [
        name
        for name in sorted(produced)
        if not filecmp.cmp(tmp_path / "ringlab/v1" / name, committed_dir / name)
    ]
    assert not drifted, f"generated code drifted from proto/ (run scripts/gen-proto): {drifted}"


def test_generated_code_imports_under_the_installed_runtime() -> None:
    from ringlab.v1 import cpu_pb2, cpu_pb2_grpc, hypervisor_pb2_grpc

    assert cpu_pb2.RunVcpuRequest(vm="x", budget=5).budget == 5
    assert hasattr(cpu_pb2_grpc, "CpuStub") and hasattr(hypervisor_pb2_grpc, "HypervisorServicer")
