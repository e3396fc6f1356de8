"""``xlpy convert`` of xenopsd images: legacy and Libxc_legacy → structured with Libxc.

The libxc part of the output is byte-identical to Debian's Xen 4.17
``convert-legacy-stream --skip-qemu`` run on the same legacy libxc bytes (as xenopsd
runs it, ``--width 32`` and the guest type), ``verify-stream-v2`` accepts it, and every
other record comes out byte-equal.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.xen_tools import XenTools
from tests.helpers.xenopsd_images import SPECS, convert_on_pipes, records, spans
from xlpy.guest import Guest, GuestSpec
from xlpy.stream import xenopsd as X
from xlpy.stream.legacy.senders import SenderProfile
from xlpy.stream.source import ByteSource
from xlpy.stream.xenopsd_convert import upgrade
from xlpy.stream.xenopsd_gen import generate_image

EXTRAS = {X.DEMU: 33, X.VARSTORED: 2000, X.SWTPM: 77}


def gen(guest: str, kind: str, sender: str, width: int, spec: GuestSpec | None = None) -> bytes:
    out = io.BytesIO()
    extras = EXTRAS if kind == "xenopsd" else {}
    generate_image(
        SenderProfile(sender=sender, width=width),
        spec or SPECS[guest],
        out,
        kind=kind,
        extras=extras,
    )
    return out.getvalue()


CASES = [
    (guest, kind, sender, width)
    for guest in ("pv", "hvm")
    for kind, width in (("xenopsd-legacy", 4), ("xenopsd", 8), ("xenopsd-legacy", 8))
    for sender in ("xen-4.0", "xen-4.3")
]


@pytest.mark.xen_tools
@pytest.mark.parametrize(("guest", "kind", "sender", "width"), CASES, ids=str)
def test_libxc_part_identical_to_xens_converter(
    xen_tools: XenTools, tmp_path: Path, guest: str, kind: str, sender: str, width: int
) -> None:
    data = gen(guest, kind, sender, width)
    out = convert_on_pipes(data)
    before, after = spans(data), spans(out)
    assert out.startswith(X.SIGNATURE)
    legacy = tmp_path / "legacy"
    legacy.write_bytes(before["Libxc_legacy"])
    xen = tmp_path / "xen"
    args = ("--skip-qemu", "-w", str(width * 8), "-g", guest, "-f", "libxc")
    conv = xen_tools.convert_legacy_stream(legacy, xen, *args)
    assert conv.returncode == 0, conv.stderr.decode()[-2000:]
    assert after["Libxc"] == xen.read_bytes()
    ours = tmp_path / "ours"
    ours.write_bytes(after["Libxc"])
    v = xen_tools.verify_stream_v2(ours, "libxc")
    assert v.returncode == 0, v.stderr.decode()[-2000:]
    qemu = Guest(SPECS[guest]).qemu_data(0)
    if guest == "hvm":
        assert after["Qemu_trad"] == qemu
    else:
        assert "Qemu_trad" not in after
    for name in ("Demu", "Varstored", "Swtpm", "Xenops"):
        if name in before:
            assert after[name] == before[name]
    want = ["Xenops", "Libxc", *(["Qemu_trad"] if guest == "hvm" else [])]
    if kind == "xenopsd":
        want += ["Demu", "Varstored", "Swtpm"]
    assert [r.name for r in records(out)] == [*want, "End_of_image"]


def test_structured_with_libxc_is_copied_byte_for_byte() -> None:
    out = io.BytesIO()
    generate_image(SenderProfile(sender="xen-4.1"), SPECS["hvm"], out, libxc="v2", extras=EXTRAS)
    data = out.getvalue()
    assert convert_on_pipes(data) == data


def test_legacy_xenops_record_is_xenopsds() -> None:
    out = io.BytesIO()
    upgrade(ByteSource(io.BytesIO(gen("pv", "xenopsd-legacy", "xen-4.0", 4))), out, time="T")
    rec = records(out.getvalue())[0]
    assert rec.body == X.xenops_record(time="T", word_size=64)


def test_bad_input_leaves_no_output(tmp_path: Path) -> None:
    data = gen("hvm", "xenopsd", "xen-4.0", 8)
    dst = tmp_path / "out"
    p = subprocess.run(
        [sys.executable, "-m", "xlpy", "convert", "-o", str(dst)],
        input=data[: len(data) - 40],
        capture_output=True,
        check=False,
    )
    assert p.returncode == 1 and not dst.exists()
    assert b"offset" in p.stderr
