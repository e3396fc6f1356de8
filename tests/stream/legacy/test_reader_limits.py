"""Hostile lengths: where a truncated stream ends is reported exactly, and inspect skips a
blob it does not keep instead of buffering it (bounded memory whatever the length says)."""

from __future__ import annotations

import io
import shlex
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.paths import REPO as ROOT
from xlpy.errors import StreamTruncated
from xlpy.guest import GuestSpec
from xlpy.stream.legacy import format as F
from xlpy.stream.legacy.inspect import inspect_stream
from xlpy.stream.legacy.reader import LegacyReader
from xlpy.stream.legacy.records import HvmTail, QemuRecord
from xlpy.stream.legacy.senders import SenderProfile, generate
from xlpy.stream.source import ByteSource

#: p2m_size 16, then XC_SAVE_ID_TOOLSTACK claiming 0xFFFFFFF0 bytes.
TOOLSTACK_HEAD = struct.pack("<Qii", 16, F.XC_SAVE_ID_TOOLSTACK, -16)


def test_truncation_names_the_real_end_beyond_4_mib(tmp_path: Path) -> None:
    zeros = 10 << 20
    path = tmp_path / "s.bin"
    path.write_bytes(TOOLSTACK_HEAD + bytes(zeros))
    end = len(TOOLSTACK_HEAD) + zeros
    # The reader that keeps blobs (convert, the receiver) buffers what there is ...
    with path.open("rb") as f, pytest.raises(StreamTruncated) as ei:
        list(LegacyReader(ByteSource(f.fileno()), guest="hvm").records())
    assert ei.value.field == "toolstack.data"
    assert f"{zeros} left; the stream ends at offset {end}" in str(ei.value)
    # ... inspect skips it: same report.
    with path.open("rb") as f:
        s = inspect_stream(ByteSource(f.fileno()), guest="hvm")
    assert s.error is not None and s.error.field == "toolstack.data"
    assert f"the stream ends at offset {end}" in str(s.error)


def _hvm_stream() -> bytes:
    buf = io.BytesIO()
    generate(SenderProfile(sender="xen-4.3", toolstack="xl"), GuestSpec(kind="hvm", pages=32), buf)
    return buf.getvalue()


def _hostile(kind: str) -> tuple[bytes, str]:
    """A stream cut after a length field set to all-ones, and that field's name."""
    if kind == "toolstack":
        return TOOLSTACK_HEAD, "toolstack.data"
    data = _hvm_stream()
    recs = list(LegacyReader(ByteSource(io.BytesIO(data))).records())
    if kind == "hvm_context":
        tail = next(r for r in recs if isinstance(r, HvmTail))
        at = tail.offset + 24  # after the three u64 magic pfns
        return data[:at] + b"\xff" * 4, "hvm_tail.context"
    qemu = next(r for r in recs if isinstance(r, QemuRecord))
    assert qemu.signature == F.QEMU_SIG_0002
    at = qemu.offset + len(qemu.signature)
    return data[:at] + b"\xff" * 4, "qemu.data"


@pytest.mark.parametrize("kind", ["hvm_context", "toolstack", "qemu"])
def test_inspect_skips_a_hostile_blob_in_bounded_memory(tmp_path: Path, kind: str) -> None:
    head, field = _hostile(kind)
    (tmp_path / "head").write_bytes(head)
    zeros = 256 << 20
    pipeline = (
        f"(cat head; head -c {zeros} /dev/zero) | "
        f"{shlex.quote(sys.executable)} -m xlpy inspect --guest hvm --json -"
    )
    # Run in a child that reports its children's peak RSS (the pipeline's largest process).
    probe = (
        "import resource, subprocess, sys\n"
        "r = subprocess.run(['sh', '-c', sys.argv[1]], cwd=sys.argv[2], capture_output=True,"
        " env={'PYTHONPATH': sys.argv[3], 'PATH': '/usr/bin:/bin'})\n"
        "sys.stderr.write(r.stdout.decode())\n"
        "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", probe, pipeline, str(tmp_path), str(ROOT)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    rc, peak_kib = map(int, res.stdout.split())
    report = res.stderr
    assert rc == 1, report
    assert '"kind": "truncated"' in report and field in report
    assert f"the stream ends at offset {len(head) + zeros}" in report
    assert peak_kib < 64 << 10, f"peak RSS {peak_kib} KiB"


@pytest.mark.parametrize("length", [(1 << 64) - 1, F.max_compressed_chunk(8) + 1])
def test_a_compressed_length_beyond_the_senders_buffer_is_refused_unread(
    tmp_path: Path, length: int
) -> None:
    """The reader that keeps -12 payloads refuses the length before reading or buffering
    any of it, from a pipe that backs it with 256 MiB of zeros."""
    chunk_at = 8
    (tmp_path / "head").write_bytes(struct.pack("<QiQ", 16, F.XC_SAVE_ID_COMPRESSED_DATA, length))
    probe = (
        "import resource, sys\n"
        "from xlpy.errors import StreamError\n"
        "from xlpy.stream.legacy.reader import LegacyReader\n"
        "from xlpy.stream.source import ByteSource\n"
        "r = LegacyReader(ByteSource(0), guest='hvm')\n"
        "try:\n"
        "    list(r.records())\n"
        "except StreamError as e:\n"
        "    print(e.kind, e.offset, e.record, e.field, e.value, r.source.offset)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    zeros = 256 << 20
    pipeline = (
        f"(cat head; head -c {zeros} /dev/zero) | "
        f"{shlex.quote(sys.executable)} -c {shlex.quote(probe)}"
    )
    res = subprocess.run(
        ["sh", "-c", pipeline], cwd=tmp_path, capture_output=True, text=True, check=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    error, peak = res.stdout.splitlines()
    assert int(peak) < 64 << 10, f"peak RSS {peak} KiB"
    # The chunk starts after p2m_size; only its id and length were consumed.
    kind, at, record, field, value, consumed = error.split()
    assert (kind, at, record, field) == ("malformed", str(chunk_at), "2", "compressed_data.length")
    assert (value, consumed) == (str(length), str(chunk_at + 4 + 8))
