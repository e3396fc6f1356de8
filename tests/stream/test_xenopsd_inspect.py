"""``xlpy inspect`` of xenopsd images: the record table, the libxc summary inside, --json."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers.xenopsd_images import SPECS, image
from xlpy.guest import Guest
from xlpy.stream import xenopsd as X


def run_inspect(data: bytes, *args: str) -> tuple[int, str]:
    """``xlpy inspect -`` with the image on a pipe."""
    p = subprocess.run(
        [sys.executable, "-m", "xlpy", "inspect", "-", *args],
        input=data,
        capture_output=True,
        check=False,
    )
    return p.returncode, p.stdout.decode()


@pytest.mark.parametrize("guest", ["pv", "hvm"])
@pytest.mark.parametrize(
    ("kind", "libxc"), [("xenopsd", "legacy"), ("xenopsd", "v2"), ("xenopsd-legacy", "legacy")]
)
def test_json_table_and_inner_summary(guest: str, kind: str, libxc: str) -> None:
    data = image(guest, kind=kind, libxc=libxc)
    rc, out = run_inspect(data, "--json")
    assert rc == 0
    doc = json.loads(out)
    assert (doc["format"], doc["complete"], doc["error"]) == ("xenopsd", True, None)
    assert doc["end_offset"] == len(data)
    names = [r["name"] for r in doc["records"]]
    inner = next(r["stream"] for r in doc["records"] if r["name"] in ("Libxc", "Libxc_legacy"))
    pages = sum(Guest(SPECS[guest]).populated)
    if libxc == "v2":
        assert inner["format"] == "libxc" and inner["valid"] and inner["guest"] == guest
        assert inner["pages"] == pages
    else:
        assert inner["format"] == "legacy" and inner["complete"] and inner["guest"] == guest
        assert inner["checkpoints"][0]["pages"] == pages
        has_qemu = guest == "hvm" and kind == "xenopsd"
        assert (inner["checkpoints"][0]["qemu"] is not None) == has_qemu
    if kind == "xenopsd":
        assert names[0] == "Xenops" and names[-1] == "End_of_image"
        assert doc["records"][0]["xenops"]["word_size"] == "64"
    else:
        assert names == (["Libxc_legacy", "Qemu_trad"] if guest == "hvm" else ["Libxc_legacy"])
    offsets = [r["offset"] for r in doc["records"]]
    assert offsets == sorted(offsets) and offsets[0] == X.SIGNATURE_SIZE


def test_text_table() -> None:
    rc, out = run_inspect(image("hvm", libxc="v2", extras={X.SWTPM: 9}))
    assert rc == 0
    assert "xenopsd image, structured" in out
    assert "0x0f13             9  Swtpm" in out
    assert "valid v2 libxc stream: guest hvm" in out


def test_damaged_embedded_image_keeps_the_table_up_to_the_fault() -> None:
    data = image("hvm", extras={X.VARSTORED: 10})
    cut = data[: len(data) // 2]
    rc, out = run_inspect(cut, "--json")
    assert rc == 1
    doc = json.loads(out)
    assert [r["name"] for r in doc["records"]] == ["Xenops", "Libxc_legacy"]
    assert doc["error"]["kind"] == "truncated"
    assert doc["records"][1]["stream"]["error"]["offset"] == doc["error"]["offset"]


def test_hostile_header_error_and_offset() -> None:
    data = image("pv")
    end = next(r["offset"] for r in json.loads(run_inspect(data, "--json")[1])["records"][-1:])
    bad = data[:end] + X.HEADER.pack(X.QEMU_XEN, 0)
    rc, out = run_inspect(bad, "--json")
    assert rc == 1
    doc = json.loads(out)
    assert (doc["error"]["offset"], doc["error"]["field"]) == (end, "header.type")
    assert not doc["complete"]
