"""inspect on every sender profile's stream, with nothing but the bytes to go on.

Detection (framing, width W, guest type) must find what the sender wrote, and
the per-checkpoint summary must match the profile's rules (§5, §9): Remus
checkpoints, format B after -13, -9 only from 4.1+ plain senders, the
toolstack's QEMU record, the foreign trailer.
"""

from __future__ import annotations

import io
import itertools

import pytest

from xlpy.errors import UsageError
from xlpy.guest import MIN_PAGES, GuestSpec
from xlpy.stream.legacy import format as F
from xlpy.stream.legacy.inspect import inspect_stream
from xlpy.stream.legacy.reader import LegacyReader
from xlpy.stream.legacy.records import CompressedData
from xlpy.stream.legacy.senders import (
    FOREIGN_TRAILER,
    SENDERS,
    TOOLSTACKS,
    SenderProfile,
    generate,
)
from xlpy.stream.source import ByteSource

QEMU_SIG = {
    ("xl", False): F.QEMU_SIG_0002,
    ("xl", True): F.QEMU_SIG_0002,
    ("xend", False): F.QEMU_SIG_TO_EOF,
    ("xend", True): F.QEMU_SIG_REMUS,
    ("xenserver-classic", False): F.XENSERVER_QEMU_SIG,
}


def profiles() -> list[tuple[SenderProfile, GuestSpec]]:
    out = []
    for sender, toolstack, mode, guest, width, guest_width, compress, trailer in itertools.product(
        SENDERS, TOOLSTACKS, ("plain", "remus"), ("pv", "hvm"), (4, 8), (4, 8), (False, True),
        ("eof", "foreign"),
    ):  # fmt: skip
        if guest == "hvm" and guest_width == 4:
            continue
        prof = SenderProfile(
            sender=sender,
            toolstack=toolstack,
            mode=mode,
            checkpoints=3 if mode == "remus" else 1,
            compress=compress,
            trailer=trailer,
            width=width,
        )
        spec = GuestSpec(kind=guest, pages=max(MIN_PAGES[guest], 300), seed=7,
                         guest_width=guest_width)  # fmt: skip
        try:
            prof.check(spec)
        except UsageError:
            continue
        out.append((prof, spec))
    return out


PROFILES = profiles()


def test_profiles_cover_every_sender_and_toolstack() -> None:
    assert {p.sender for p, _ in PROFILES} == set(SENDERS)
    assert {p.toolstack for p, _ in PROFILES} == set(TOOLSTACKS)
    assert any(p.compress for p, _ in PROFILES)


@pytest.mark.parametrize(
    "prof,spec",
    PROFILES,
    ids=[
        f"{p.sender}-{p.toolstack}-{p.mode}{'-z' if p.compress else ''}-{s.kind}"
        f"{s.guest_width * 8}-w{p.width * 8}-{p.trailer}"
        for p, s in PROFILES
    ],
)
def test_inspect_detects_what_the_sender_wrote(prof: SenderProfile, spec: GuestSpec) -> None:
    buf = io.BytesIO()
    generate(prof, spec, buf)
    s = inspect_stream(ByteSource(io.BytesIO(buf.getvalue())))
    assert s.error is None and s.complete
    assert (s.width, s.guest) == (prof.width, spec.kind)
    framing = prof.toolstack
    if framing == "xenserver-classic" and spec.kind == "pv":
        framing = "bare"  # only its (HVM) QEMU trailer tells it apart
    assert s.framing == framing
    if spec.kind == "pv":
        assert s.guest_width == spec.guest_width
    assert len(s.checkpoints) == prof.checkpoints
    for k, cp in enumerate(s.checkpoints):
        assert cp.compressed == (prof.compress and k > 0)
        assert cp.last_checkpoint == prof.has_last_checkpoint
        assert cp.pages <= cp.entries and (cp.compressed or cp.pages > 0 or k > 0)
        want = QEMU_SIG.get((prof.toolstack, prof.remus)) if spec.kind == "hvm" else None
        assert (cp.qemu.signature if cp.qemu else None) == want
    to_eof = s.checkpoints[-1].qemu is not None and s.checkpoints[-1].qemu.signature == (
        F.QEMU_SIG_TO_EOF
    )
    if prof.trailer == "foreign" and not to_eof:
        assert s.trailer is not None and s.trailer.skipped == len(FOREIGN_TRAILER)  # not kept
    else:
        assert s.trailer is None


def test_corrupt_compressed_payload_is_malformed() -> None:
    """A -12 payload overwritten with 0x89 (SKIP 9 words, over and over) overshoots a page."""
    buf = io.BytesIO()
    generate(
        SenderProfile(sender="xen-4.3", mode="remus", checkpoints=2, compress=True),
        GuestSpec(kind="pv", pages=256, seed=3),
        buf,
    )
    data = bytearray(buf.getvalue())
    assert inspect_stream(ByteSource(io.BytesIO(bytes(data)))).complete
    recs = list(LegacyReader(ByteSource(io.BytesIO(bytes(data)))).records())
    chunk = next(r for r in recs if isinstance(r, CompressedData))
    start = chunk.offset + 4 + 8
    data[start : start + len(chunk.data)] = b"\x89" * len(chunk.data)
    s = inspect_stream(ByteSource(io.BytesIO(bytes(data))))
    assert not s.complete and s.error is not None
    assert (s.error.kind, s.error.field) == ("malformed", "compressed_data.page")
    assert s.error.offset == start + 114  # the marker that takes the page past 4096 bytes
    assert s.error.record == chunk.index
    assert "Invalid data in compression buffer" in str(s.error)
