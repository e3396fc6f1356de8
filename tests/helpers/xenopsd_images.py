"""xenopsd suspend images for the tests: generated ones, their records, and their conversion."""

from __future__ import annotations

import io
import subprocess
import sys

from xlpy.guest import GuestSpec
from xlpy.stream import xenopsd as X
from xlpy.stream.legacy.senders import SenderProfile
from xlpy.stream.source import ByteSource
from xlpy.stream.xenopsd_gen import generate_image

#: The guests the xenopsd images are generated from.
SPECS = {
    "pv": GuestSpec(kind="pv", pages=40, seed=5, vcpus=2),
    "hvm": GuestSpec(kind="hvm", pages=40, seed=6, vcpus=2),
}


def image(guest: str, kind: str = "xenopsd", libxc: str = "legacy", **kw: object) -> bytes:
    """A generated ``kind`` image of :data:`SPECS`' ``guest`` (``libxc``: its libxc part)."""
    out = io.BytesIO()
    width = 4 if kind == "xenopsd-legacy" else 8
    profile = SenderProfile(sender="xen-4.0", width=width)
    generate_image(profile, SPECS[guest], out, kind=kind, libxc=libxc, **kw)  # type: ignore[arg-type]
    return out.getvalue()


def records(data: bytes) -> list[X.XenopsdRecord]:
    """The image's top-level records."""
    return list(X.XenopsdReader(ByteSource(io.BytesIO(data))).records())


def convert_on_pipes(data: bytes) -> bytes:
    """``xlpy convert`` reading stdin, writing stdout (pipes both ways)."""
    p = subprocess.run(
        [sys.executable, "-m", "xlpy", "convert"], input=data, capture_output=True, check=False
    )
    assert p.returncode == 0, p.stderr.decode()
    return p.stdout


def spans(data: bytes) -> dict[str, bytes]:
    """Each record's body bytes by name (an embedded image: up to the next header)."""
    recs = records(data)
    out = {}
    for rec, nxt in zip(recs, [*recs[1:], None], strict=True):
        end = len(data) if nxt is None else nxt.offset
        out[rec.name] = data[rec.body_offset : end]
    return out
