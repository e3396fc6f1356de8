"""``ByteSource.transfer`` to an output's own position, ``read_append``, and the
converter's forwarded page data (legacy → v2 with the page bytes moved in the kernel).

The forwarded output must be the output of the buffered path byte for byte, for
every kind of input and output; ``read_append`` must deliver exact bytes and fail
like ``readinto_exact`` (kind, offset), leaving the caller's buffer as it was.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from tests.helpers.fd_streams import fd_output as _sink
from tests.helpers.fd_streams import source_of as _source
from xlpy.errors import StreamTruncated
from xlpy.guest import GuestSpec
from xlpy.stream.convert import legacy_to_v2
from xlpy.stream.legacy.reader import PayloadBuffer
from xlpy.stream.legacy.senders import SenderProfile, generate
from xlpy.stream.source import ByteSource


def _data(n: int) -> bytes:
    return bytes((i * 7 + i // 251) & 0xFF for i in range(n))


@pytest.mark.parametrize("out_kind", ["pipe", "file"])
@pytest.mark.parametrize("in_kind", ["pipe", "file", "bytesio"])
def test_transfer_at_position_follows_earlier_writes(
    in_kind: str, out_kind: str, tmp_path: Path
) -> None:
    data = _data(3 << 20)
    with _source(in_kind, data, tmp_path) as src, _sink(out_kind, tmp_path) as (fd, got):
        head = src.read_exact(100)
        src.peek(5000)  # look-ahead bytes go out first, with write()
        os.write(fd, b"HEAD")
        src.transfer(fd, [(None, 2 << 20), (None, 1000)], field="batch.pages")
        os.write(fd, b"TAIL")
        assert src.offset == 100 + (2 << 20) + 1000
        rest = src.read_exact(10)
    assert head == data[:100]
    assert rest == data[100 + (2 << 20) + 1000 :][:10]
    assert got[0] == b"HEAD" + data[100 : 100 + (2 << 20) + 1000] + b"TAIL"


@pytest.mark.parametrize("in_kind", ["pipe", "file", "bytesio"])
def test_transfer_at_position_truncated(in_kind: str, tmp_path: Path) -> None:
    data = _data(5000)
    with _source(in_kind, data, tmp_path) as src, _sink("pipe", tmp_path) as (fd, got):
        src.read_exact(10)
        with pytest.raises(StreamTruncated) as e:
            src.transfer(fd, [(None, 8192)], field="batch.pages")
    assert e.value.offset == 10
    assert e.value.field == "batch.pages"
    assert got[0] == data[10:]


@pytest.mark.parametrize("in_kind", ["pipe", "file", "bytesio"])
@pytest.mark.parametrize("n", [0, 1, 70000, (16 << 20) + 5])
def test_read_append(in_kind: str, n: int, tmp_path: Path) -> None:
    data = _data(n + 3)
    with _source(in_kind, data, tmp_path) as src:
        src.peek(2)
        buf = bytearray(b"xy")
        src.read_append(buf, n, field="compressed_data.data")
        assert buf == b"xy" + data[:n]
        assert src.offset == n
        assert src.read_exact(3) == data[n:]


@pytest.mark.parametrize("in_kind", ["pipe", "file", "bytesio"])
def test_read_append_truncated_leaves_buffer(in_kind: str, tmp_path: Path) -> None:
    data = _data(100_000)
    with _source(in_kind, data, tmp_path) as src:
        src.read_exact(7)
        buf = bytearray(b"kept")
        with pytest.raises(StreamTruncated) as e:
            src.read_append(buf, 200_000, field="compressed_data.data")
        assert buf == b"kept"
        assert e.value.offset == 7
        assert e.value.field == "compressed_data.data"
        assert src.end_offset == 100_000


@pytest.mark.parametrize("guest", ["pv", "hvm"])
@pytest.mark.parametrize("out_kind", ["pipe", "file"])
@pytest.mark.parametrize("in_kind", ["pipe", "file"])
def test_convert_forwarded_equals_buffered(
    guest: str, in_kind: str, out_kind: str, tmp_path: Path
) -> None:
    """Page data moved in the kernel (pipe/file input, descriptor output) give the
    bytes the buffered path gives (BytesIO in and out), plain and Remus streams."""
    spec = GuestSpec(kind=guest, pages=2048, seed=3)
    for profile in (
        SenderProfile(sender="xen-4.3", toolstack="xl"),
        SenderProfile(sender="xen-4.3", toolstack="xl", mode="remus", checkpoints=3),
        SenderProfile(sender="xen-4.3", toolstack="xl", mode="remus", checkpoints=3, compress=True),
    ):
        raw = io.BytesIO()
        generate(profile, spec, raw)
        stream = raw.getvalue()
        want = io.BytesIO()
        legacy_to_v2(ByteSource(io.BytesIO(stream)), want, fmt="libxl")
        with (
            _source(in_kind, stream, tmp_path) as src,
            _sink(out_kind, tmp_path) as (fd, got),
            open(fd, "wb", closefd=False) as out,
        ):
            report = legacy_to_v2(src, out, fmt="libxl")
        assert got[0] == want.getvalue(), profile
        assert report.bytes_out == len(want.getvalue())
        assert report.checkpoints == profile.checkpoints


@pytest.mark.parametrize("in_kind", ["pipe", "file", "bytesio"])
def test_payload_buffer_reuses_and_grows(in_kind: str, tmp_path: Path) -> None:
    """Payloads back to back; after ``clear`` a refill overwrites the kept memory and
    grows past it; a truncated payload raises with the source's end known."""
    data = _data(300_000)
    with _source(in_kind, data, tmp_path) as src:
        pb = PayloadBuffer()
        pb.read(src, 1000, "compressed_data.data")
        pb.read(src, 50_000, "compressed_data.data")
        assert pb.view() == data[:51_000]
        pb.clear()
        pb.read(src, 20_000, "compressed_data.data")
        pb.read(src, 100_000, "compressed_data.data")  # partly into kept memory, partly grown
        assert pb.view() == data[51_000:171_000]
        assert src.offset == 171_000
        with pytest.raises(StreamTruncated):
            pb.read(src, 200_000, "compressed_data.data")
        assert pb.used == 120_000
        assert src.end_offset == 300_000
