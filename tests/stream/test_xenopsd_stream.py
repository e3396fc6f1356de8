"""xenopsd suspend images in the stream layer: reader, writer, generator, hostile input."""

from __future__ import annotations

import io
import os
import resource
import threading

import pytest

from tests.helpers.xenopsd_images import SPECS, image, records
from xlpy.cli import main as xlpy_main
from xlpy.errors import StreamMalformed, StreamTruncated, UsageError
from xlpy.guest import Guest
from xlpy.stream import xenopsd as X
from xlpy.stream.legacy import format as LF
from xlpy.stream.legacy.records import HvmTail, PvTail, QemuRecord
from xlpy.stream.source import ByteSource
from xlpy.stream.v2 import format as V2F
from xlpy.stream.v2.records import V2Record
from xlpy.stream.xenopsd_gen import GEN_TIME, extra_body


def summary(data: bytes) -> list[tuple[str, int]]:
    return [(r.name, r.length) for r in records(data)]


def header(rtype: int, length: int) -> bytes:
    return X.HEADER.pack(rtype, length)


def xenops() -> bytes:
    body = X.xenops_record(time=GEN_TIME, word_size=64)
    return header(X.XENOPS, len(body)) + body


@pytest.mark.parametrize("guest", ["pv", "hvm"])
def test_structured_legacy_libxc_layout(guest: str) -> None:
    extras = {X.VARSTORED: 300, X.SWTPM: 70, X.DEMU: 10}
    data = image(guest, extras=extras)
    assert data.startswith(X.SIGNATURE)
    assert summary(data) == [
        ("Xenops", 57),
        ("Libxc_legacy", 0),
        ("Demu", 10),
        ("Varstored", 300),
        ("Swtpm", 70),
        ("End_of_image", 0),
    ]


@pytest.mark.parametrize("guest", ["pv", "hvm"])
def test_structured_v2_layout_and_bodies(guest: str) -> None:
    data = image(guest, libxc="v2", extras={X.VARSTORED: 5000})
    want = [("Xenops", 57), ("Libxc", 0), ("Varstored", 5000)]
    if guest == "hvm":
        want.append(("Qemu_trad", len(Guest(SPECS[guest]).qemu_data(0))))
    assert summary(data) == [*want, ("End_of_image", 0)]
    reader = X.XenopsdReader(ByteSource(io.BytesIO(data)))
    for rec in reader.records():
        if rec.type == X.LIBXC:
            els = list(reader.v2_image(rec))
            last = els[-1]
            assert isinstance(last, V2Record) and last.type == V2F.REC_TYPE_END
        elif rec.type == X.VARSTORED:
            assert reader.read_body(rec) == b"".join(
                extra_body(X.VARSTORED, 5000, SPECS[guest].seed)
            )
        elif rec.type == X.QEMU_TRAD:
            assert reader.read_body(rec) == Guest(SPECS[guest]).qemu_data(0)
        elif rec.type == X.XENOPS:
            assert X.parse_xenops(reader.read_body(rec))["word_size"] == b"64"


@pytest.mark.parametrize("guest", ["pv", "hvm"])
def test_legacy_image_parts(guest: str) -> None:
    data = image(guest, kind="xenopsd-legacy")
    assert data.startswith(X.LEGACY_SIGNATURE)
    reader = X.XenopsdReader(ByteSource(io.BytesIO(data)))
    seen = []
    for rec in reader.records():
        seen.append(rec.name)
        if rec.type == X.LIBXC_LEGACY:
            recs = list(reader.legacy_image(rec))
            # the libxc part ends with its tail: no QEMU record inside (XenServer's libxc)
            assert isinstance(recs[-1], HvmTail if guest == "hvm" else PvTail)
        else:
            assert reader.read_body(rec) == Guest(SPECS[guest]).qemu_data(0)
    assert seen == (["Libxc_legacy", "Qemu_trad"] if guest == "hvm" else ["Libxc_legacy"])
    assert reader.kind == X.LEGACY


def test_embedded_legacy_image_carries_libxcs_qemu_record() -> None:
    data = image("hvm")
    reader = X.XenopsdReader(ByteSource(io.BytesIO(data)))
    for rec in reader.records():
        if rec.type == X.LIBXC_LEGACY:
            last = list(reader.legacy_image(rec, keep_blobs=True))[-1]
            assert isinstance(last, QemuRecord) and last.signature == LF.QEMU_SIG_0002
            assert last.data == Guest(SPECS["hvm"]).qemu_data(0)


def test_embedded_image_does_not_wait_past_the_next_header() -> None:
    """A sender that keeps the socket open after End_of_image: reading ends all the same
    (the embedded image's end is found from the 16 header bytes, no more)."""
    data = image("hvm")
    r, w = os.pipe()
    t = threading.Thread(target=os.write, args=(w, data), daemon=True)
    t.start()
    try:
        names = [rec.name for rec in X.XenopsdReader(ByteSource(r)).records()]
    finally:
        t.join()
        os.close(w)
        os.close(r)
    assert names[-1] == "End_of_image"


def test_xenops_record_round_trip_with_quoting() -> None:
    body = X.xenops_record(time=GEN_TIME, word_size=32, vm_str='(vm "a b\\c")')
    fields = X.parse_xenops(body)
    assert fields["vm_str"] == b'(vm "a b\\c")'
    assert fields["time"] == GEN_TIME.encode()


# --- hostile input: typed errors with offsets -------------------------------------------------


def _expect(data: bytes, exc: type[Exception], offset: int, field: str) -> None:
    with pytest.raises(exc) as info:
        records(data)
    e = info.value
    assert isinstance(e, StreamMalformed | StreamTruncated)
    assert (e.offset, e.field) == (offset, field), str(e)


def test_unknown_type() -> None:
    data = X.SIGNATURE + xenops() + header(0x1234, 0)
    _expect(data, StreamMalformed, len(X.SIGNATURE) + 73, "header.type")


@pytest.mark.parametrize("rtype", [X.LIBXL, X.QEMU_XEN])
def test_records_xenopsd_refuses(rtype: int) -> None:
    _expect(X.SIGNATURE + header(rtype, 0), StreamMalformed, 15, "header.type")


def test_qemu_trad_over_one_mib() -> None:
    data = X.SIGNATURE + header(X.QEMU_TRAD, X.QEMU_TRAD_MAX + 1) + bytes(X.QEMU_TRAD_MAX + 1)
    _expect(data, StreamMalformed, 15, "Qemu_trad.length")
    ok = X.SIGNATURE + header(X.QEMU_TRAD, X.QEMU_TRAD_MAX) + bytes(X.QEMU_TRAD_MAX)
    assert summary(ok + header(X.END_OF_IMAGE, 0))[0] == ("Qemu_trad", X.QEMU_TRAD_MAX)


def test_legacy_qemu_record_over_one_mib() -> None:
    data = image("hvm", kind="xenopsd-legacy")
    at = data.index(X.LEGACY_QEMU_SIGNATURE)
    big = data[: at + 22] + (X.QEMU_TRAD_MAX + 1).to_bytes(4, "big") + data[at + 26 :]
    _expect(big, StreamMalformed, at, "qemu.length")


@pytest.mark.parametrize("length", [(1 << 63) - 1, -(1 << 63), 1 << 62])
def test_huge_lengths_bounded_memory(length: int) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for rtype in (X.VARSTORED, X.XENOPS, X.SWTPM):
        data = X.SIGNATURE + header(rtype, length) + b"x" * 100
        exc = StreamMalformed if length < 0 else StreamTruncated
        field = f"{X.NAMES[rtype]}.length" if length < 0 else f"{X.NAMES[rtype]}.body"
        _expect(data, exc, 15, field)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024  # KiB


def test_body_cut_short() -> None:
    data = image("pv", extras={X.VARSTORED: 1000})
    at = next(r.offset for r in records(data) if r.type == X.VARSTORED)
    _expect(data[: at + 16 + 999], StreamTruncated, at, "Varstored.body")


def test_embedded_image_cut_short_names_the_libxc_field() -> None:
    data = image("pv")
    with pytest.raises(StreamTruncated) as info:
        records(data[: len(data) // 2])
    assert info.value.offset is not None and 88 < info.value.offset < len(data) // 2


def test_end_of_image_missing() -> None:
    data = image("pv")
    _expect(data[:-16], StreamTruncated, len(data) - 16, "header")


def test_header_cut_short() -> None:
    data = image("pv")
    _expect(data[:-5], StreamTruncated, len(data) - 16, "header")


def test_bad_signature_and_bad_xenops() -> None:
    _expect(b"XenSavedDomv3-\n", StreamMalformed, 0, "signature")
    body = b"((time x)(word_size sixty-four))"
    _expect(X.SIGNATURE + header(X.XENOPS, len(body)) + body, StreamMalformed, 31, "Xenops.body")


def test_demu_without_length_is_refused() -> None:
    _expect(X.SIGNATURE + header(X.DEMU, 0), StreamMalformed, 15, "Demu.length")


def test_legacy_image_with_garbage_after_libxc() -> None:
    data = image("hvm", kind="xenopsd-legacy")
    at = data.index(X.LEGACY_QEMU_SIGNATURE)
    _expect(
        data[:at] + b"QemuDeviceModelRecorX" + data[at + 21 :],
        StreamMalformed,
        at,
        "qemu.signature",
    )


def test_writer_refuses_what_xenopsd_refuses() -> None:
    w = X.XenopsdWriter(io.BytesIO())
    with pytest.raises(UsageError):
        w.record(X.QEMU_TRAD, bytes(X.QEMU_TRAD_MAX + 1))
    with pytest.raises(UsageError):
        w.record(X.LIBXC, b"")
    with pytest.raises(UsageError):
        w.header(0x1234)


# --- xlpy gen ---------------------------------------------------------------------------------


def test_gen_cli_matches_the_generator(tmp_path: object) -> None:
    from pathlib import Path

    out = Path(str(tmp_path)) / "img"
    args = ["gen", "--guest", "hvm", "--sender", "xen-4.0", "--memory", "160K", "--seed", "6"]
    assert xlpy_main([*args, "--toolstack", "xenopsd", "--varstored", "300", "-o", str(out)]) == 0
    assert out.read_bytes() == image("hvm", extras={X.VARSTORED: 300})
    assert xlpy_main([*args, "--varstored", "3", "-o", str(out)]) == 2
    assert xlpy_main([*args, "--toolstack", "xenopsd-legacy", "--demu", "3", "-o", str(out)]) == 2


def test_embedded_qemu_signature_broken_after_16_bytes() -> None:
    """Found by the fuzzer: a QEMU signature that starts right and ends wrong."""
    data = image("hvm")
    at = data.index(LF.QEMU_SIG_0002)
    bad = data[: at + 16] + b"XXXXX" + data[at + 21 :]
    _expect(bad, StreamMalformed, at, "qemu.signature")
    _expect(data[: at + 18], StreamTruncated, at, "qemu.signature")
