"""``ringlab run`` takes an image written by ``ringlab asm`` as well as assembly source, told
apart by content (the image's magic), not by the file's name."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import HELLO, ringlab

ECHO = """\
.entry start
start:  in eax, 0x3F8
        cmp eax, 0xFFFFFFFF
        je done
        out 0x3F8, eax
        jmp start
done:   mov eax, 5
        out 0xF4, eax
"""


def _asm(tmp_path: Path, source: str, name: str = "prog") -> tuple[Path, Path]:
    src = tmp_path / f"{name}.s"
    src.write_text(source)
    img = tmp_path / f"{name}.img"
    p = ringlab("asm", str(src), "-o", str(img))
    assert p.returncode == 0, p.stderr
    return src, img


def test_asm_then_run_the_image_prints_what_running_the_source_prints(tmp_path: Path) -> None:
    src, img = _asm(tmp_path, HELLO)
    from_source = ringlab("run", str(src))
    from_image = ringlab("run", str(img))
    assert from_source.returncode == from_image.returncode == 0
    assert from_image.stdout == from_source.stdout == "hi\n"
    assert from_image.stderr == from_source.stderr


def test_asm_then_run_the_image_json_is_the_same_object(tmp_path: Path) -> None:
    src, img = _asm(tmp_path, ECHO)
    a = json.loads(ringlab("run", str(src), "--json", "--input", "xyz").stdout)
    b = json.loads(ringlab("run", str(img), "--json", "--input", "xyz").stdout)
    assert a["console"] == b["console"] == "xyz"
    assert a["exit"] == b["exit"] and b["exit"]["code"] == 5
    assert a["registers"] == b["registers"]
    assert a["stats"]["guest"] == b["stats"]["guest"]


def test_an_image_is_told_by_content_not_by_its_name(tmp_path: Path) -> None:
    _src, img = _asm(tmp_path, HELLO)
    disguised = tmp_path / "looks_like_source.s"
    disguised.write_bytes(img.read_bytes())
    p = ringlab("run", str(disguised))
    assert p.returncode == 0, p.stderr
    assert p.stdout == "hi\n"


def test_source_named_like_an_image_runs_as_source(tmp_path: Path) -> None:
    src = tmp_path / "program.img"
    src.write_text(HELLO)
    p = ringlab("run", str(src))
    assert p.returncode == 0, p.stderr
    assert p.stdout == "hi\n"
