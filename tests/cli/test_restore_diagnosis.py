"""``xlpy restore`` shows xlpy's diagnosis apart from libxc's lines: a ``diagnosis`` key
in ``--json``, an ``xlpy restore: diagnosis:`` paragraph on stderr after them."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers.cli import xlpy
from tests.helpers.legacy_streams import XENSERVER_QEMU, build, page
from tests.helpers.paths import REPO

PLAIN = [{2: page(0, 2)}]
OLD_XENSERVER = build("hvm", PLAIN, qemu=None, trailer=XENSERVER_QEMU)
EAT = ("--release", "xen-4.3.1", "--toolstack", "xenserver-classic")
PREFIX = "xlpy restore: diagnosis: "


def _restore(tmp_path: Path, name: str, data: bytes, *args: str) -> tuple[int, str, str]:
    src = tmp_path / f"{name}.img"
    src.write_bytes(data)
    p = xlpy("restore", str(src), "--out", str(tmp_path / name), *args)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def _paragraphs(stderr: str) -> list[str]:
    """The diagnosis paragraphs on stderr, unwrapped."""
    out: list[str] = []
    for line in stderr.splitlines():
        if line.startswith(PREFIX):
            out.append(line.removeprefix(PREFIX))
        elif line.startswith("  ") and out:
            out[-1] += " " + line.strip()
    return out


def test_json_carries_the_diagnosis(tmp_path: Path) -> None:
    code, out, _ = _restore(tmp_path, "eat", OLD_XENSERVER, *EAT, "--json")
    doc = json.loads(out)
    assert code == 1 and doc["bytes_past_image"] == 4
    assert "1970103633" in doc["messages"][0]  # libxc's line, as it was
    image_end = len(OLD_XENSERVER) - len(XENSERVER_QEMU)
    assert f"at offset {image_end} (0x{image_end:x})" in doc["diagnosis"]
    assert "'Qemu' (51 65 6d 75)" in doc["diagnosis"]


def test_json_diagnosis_is_null_when_nothing_needs_explaining(tmp_path: Path) -> None:
    data = build("pv", PLAIN, last=True)
    code, out, _ = _restore(tmp_path, "ok", data, "--release", "xen-4.5", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["messages"] == [] and doc["diagnosis"] is None


def test_text_output_puts_the_diagnosis_after_libxcs_lines(tmp_path: Path) -> None:
    code, _, err = _restore(tmp_path, "eat", OLD_XENSERVER, *EAT)
    _, out, _ = _restore(tmp_path, "eat-json", OLD_XENSERVER, *EAT, "--json")
    lines = err.splitlines()
    assert code == 1
    assert lines[0] == "xc: error: Max batch size exceeded (1970103633). Giving up.: Internal error"
    first = next(i for i, line in enumerate(lines) if line.startswith(PREFIX))
    assert lines[first - 1].startswith("xlpy restore: failed (")
    assert all(len(line) <= 88 for line in lines[first:])
    assert _paragraphs(err) == [json.loads(out)["diagnosis"]]


def test_a_failure_is_diagnosed_even_when_quiet(tmp_path: Path) -> None:
    _, _, err = _restore(tmp_path, "q", OLD_XENSERVER, "--release", "xen-4.3.1", "-q")
    (text,) = _paragraphs(err)
    assert text.startswith("the stream's framing is xenserver-classic")
    assert text.endswith("pass --toolstack xenserver-classic")


def test_a_framed_restore_says_its_four_lines_are_normal(tmp_path: Path) -> None:
    args = (*EAT, "--operation", "migrate-receive")
    code, _, err = _restore(tmp_path, "framed", OLD_XENSERVER, *args)
    assert code == 0
    assert sum(line.startswith("xc: error: ") for line in err.splitlines()) == 4
    (text,) = _paragraphs(err)
    assert text.startswith("the restore succeeded: the 4 error lines above are what libxc")
    assert "xlpy's pipe, which held only the image, ended" in text
    _, _, quiet = _restore(tmp_path, "framed-q", OLD_XENSERVER, *args, "-q")
    assert quiet == ""


def test_the_readme_shows_the_pipe_examples_real_diagnosis(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    block = readme.split("then says why:\n\n```text\n", 1)[1].split("```", 1)[0]
    img = tmp_path / "old.img"
    gen = ("gen", "--guest", "hvm", "--sender", "xen-4.0", "--toolstack", "xenserver-classic")
    assert xlpy(*gen, "--memory", "16M", "--seed", "1", "-o", str(img)).returncode == 0
    code, _, err = _restore(tmp_path, "dom", img.read_bytes(), *EAT)
    assert code == 1 and _paragraphs(err) == _paragraphs(block)
