"""What an installed Ringlab (a wheel, the compose image) holds: every package of the source tree
(setuptools installs only those pyproject.toml lists: a package left out is a ModuleNotFoundError
in the image, never in an editable install) and the dashboard's page, script and style sheet."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _config() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]


def test_every_package_of_the_source_tree_is_installed() -> None:
    config = _config()
    listed = set(config["packages"])
    found = set()
    for name, folder in config["package-dir"].items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            parts = init.parent.relative_to(base).parts
            found.add(".".join((name, *parts)) if name else ".".join(parts))
    missing = sorted(p for p in found if p and p not in listed)
    assert not missing, f"pyproject.toml [tool.setuptools] packages lacks {missing}"


def test_the_dashboard_assets_are_package_data() -> None:
    patterns = _config()["package-data"]["ringlab.dashboard"]
    static = ROOT / "src" / "ringlab" / "dashboard"
    files = {p.relative_to(static).as_posix() for p in (static / "static").iterdir()}
    covered = {p.relative_to(static).as_posix() for pattern in patterns for p in static.glob(pattern)}
    assert files and files <= covered, files - covered
