"""The docs folder stands alone and its examples work.

- Every ```asm block of docs/*.md assembles. A block whose info string names a file
  (```asm file=hello.s) is written into a scratch folder under that name, so later blocks may
  ``.include`` it; every such block that is a whole program (not ``.inc``) also runs natively
  and must end by itself (poweroff, halt or shutdown). A block marked ``fragment`` only has to
  assemble.
- Every ```console block is a session: each ``$ command`` line runs through bash in that scratch
  folder, in order, and must exit 0; the lines after it, up to the next ``$``, are its exact
  standard output.
- docs/isa.md carries `ringlab isa --markdown` byte for byte between its markers.
- No page mentions files outside the repository, and every relative link resolves.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ringlab.asm import assemble_file
from ringlab.cli.isa_doc import isa_markdown
from ringlab.vmm import run_vm

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [*DOCS, ROOT / "README.md"]
FORBIDDEN = ("../shared", "ISA.md", "DESIGN.md", "ECOSYSTEM.md", "STYLE.md", "seed-virtualisasi")


@dataclass(frozen=True)
class Block:
    lang: str
    attrs: tuple[str, ...]
    text: str
    line: int

    def attr(self, key: str) -> str | None:
        for a in self.attrs:
            k, sep, v = a.partition("=")
            if sep and k == key:
                return v
        return None


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, in order."""
    out: list[Block] = []
    lines = path.read_text().splitlines(keepends=True)
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\S*)\s*(.*)$", lines[i].rstrip("\n"))
        if not m:
            i += 1
            continue
        start = i
        i += 1
        body: list[str] = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        out.append(Block(m.group(1), tuple(m.group(2).split()), "".join(body), start + 1))
        i += 1
    return out


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("page", DOCS, ids=_id)
def test_every_asm_block_assembles_and_every_program_runs(page: Path, tmp_path: Path) -> None:
    asm = [b for b in blocks(page) if b.lang == "asm"]
    for b in asm:  # first every named file, so that any block may include any other
        name = b.attr("file")
        if name:
            (tmp_path / name).write_text(b.text)
    for n, b in enumerate(asm):
        where = f"{page.name}:{b.line}"
        name = b.attr("file")
        if name and name.endswith(".inc"):
            continue
        path = tmp_path / (name or f"block{n}.s")
        if not name:
            path.write_text(b.text)
        image = assemble_file(path)
        if "fragment" in b.attrs:
            continue
        assert name, f"{where}: a whole program needs a file name (```asm file=NAME.s) or 'fragment'"
        result = run_vm(image, technique="native", max_instructions=10_000_000)
        reason = result.to_json()["exit"]["reason"]
        assert reason in ("poweroff", "halt", "shutdown"), f"{where}: {name} did not end by itself: {reason}"


def _sessions(page: Path) -> list[tuple[int, str, str]]:
    """(line, command, expected stdout) of every ``$`` line of the page's console blocks."""
    out: list[tuple[int, str, str]] = []
    for b in blocks(page):
        if b.lang != "console":
            continue
        lines = b.text.splitlines(keepends=True)
        for k, line in enumerate(lines):
            if line.startswith("$ "):
                expected = []
                for follow in lines[k + 1 :]:
                    if follow.startswith("$ "):
                        break
                    expected.append(follow)
                out.append((b.line + 1 + k, line[2:].strip(), "".join(expected)))
    return out


PAGES_WITH_SESSIONS = [p for p in DOCS if _sessions(p)]


@pytest.mark.parametrize("page", PAGES_WITH_SESSIONS, ids=_id)
def test_every_console_session_prints_what_the_page_shows(page: Path, tmp_path: Path) -> None:
    for b in blocks(page):
        name = b.attr("file")
        if b.lang == "asm" and name:
            (tmp_path / name).write_text(b.text)
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200", NO_COLOR="1")
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    for line, command, expected in _sessions(page):
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", command],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        where = f"{page.name}:{line}: {command}"
        assert done.returncode == 0, f"{where}: exit status {done.returncode}\n{done.stderr}"
        assert done.stdout == expected, f"{where}: printed\n{done.stdout}\nbut the page shows\n{expected}"


def test_docs_isa_md_carries_the_generated_table_byte_for_byte() -> None:
    text = (ROOT / "docs" / "isa.md").read_text()
    generated = isa_markdown()  # the table between its BEGIN and END marker lines
    begin, end = generated.splitlines(keepends=True)[0], generated.splitlines(keepends=True)[-1]
    assert text.count(begin) == 1 and text.count(end) == 1, "docs/isa.md lost its generated-table markers"
    section = text[text.index(begin) : text.index(end) + len(end)]
    assert section == generated, (
        "docs/isa.md drifted from isa.py: replace the table with 'ringlab isa --markdown'"
    )


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_no_page_refers_outside_the_repository(page: Path) -> None:
    text = page.read_text()
    for word in FORBIDDEN:
        assert word not in text, f"{page.name} mentions {word!r}: the docs must stand alone"


def test_no_source_file_refers_outside_the_repository() -> None:
    """Comments and messages in the code name the repository's own docs, never the team's notes
    beside it, which a clone does not have."""
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    offenders = []
    for name in tracked:
        path = ROOT / name
        if path == Path(__file__) or path.suffix in (".png", ".img") or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        offenders += [f"{name}: {word}" for word in FORBIDDEN if word in text]
    assert not offenders, offenders


_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_every_relative_link_resolves(page: Path) -> None:
    text = page.read_text()
    for target in _LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        assert (page.parent / path).exists(), f"{page.name}: the link {target} leads nowhere"


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors for the page's headings."""
    out = set()
    in_code = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        m = re.match(r"^#+\s+(.*)$", line)
        if m and not in_code:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            out.add(slug)
    return out


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_every_link_to_a_section_names_a_heading(page: Path) -> None:
    for target in _LINK.findall(page.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or "#" not in target:
            continue
        path, anchor = target.split("#", 1)
        dest = (page.parent / path) if path else page
        if dest.suffix == ".md" and dest.exists():
            assert anchor in _anchors(dest), f"{page.name}: {target}: no such heading in {dest.name}"


def test_every_page_of_the_docs_folder_is_linked_from_its_index() -> None:
    index = (ROOT / "docs" / "README.md").read_text()
    for page in DOCS:
        if page.name != "README.md":
            assert f"({page.name}" in index, f"docs/README.md does not link {page.name}"
