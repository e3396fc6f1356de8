"""Kernel paths for page data: ``ByteSource.skip`` / ``transfer`` and the readers on them.

Pipes go through ``splice``, regular files through ``sendfile`` / ``copy_file_range``,
sockets and file objects through ``readinto`` + ``pwrite``.  Whatever the path, the bytes
written, the logical offset, truncation errors (kind, offset, message) and heartbeat
timeouts are those of the buffered path (``readinto_exact``), and inspect / restore give
identical results (memory image byte for byte).
"""

from __future__ import annotations

import errno
import io
import json
import os
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.fd_streams import source_of
from tests.helpers.legacy_streams import build, expected_memory, page, remus_checkpoints
from xlpy.backends.sim import from_outcome
from xlpy.errors import OutputError, StreamTimeout, StreamTruncated
from xlpy.guest import GuestSpec
from xlpy.receiver import restore
from xlpy.stream.legacy import format as F
from xlpy.stream.legacy.inspect import inspect_stream
from xlpy.stream.legacy.records import EnableVerifyMode, PageBatch
from xlpy.stream.legacy.senders import SenderProfile, generate
from xlpy.stream.source import ByteSource

KINDS = ("pipe", "file", "socket", "bytesio")
#: The kernel calls each kind of input may use (the others must not be called).
KERNEL_CALLS = {
    "pipe": {"splice"},
    "file": {"sendfile", "copy_file_range"},
    "socket": set(),
    "bytesio": set(),
}


@pytest.fixture
def kernel_calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts ``os.splice`` / ``os.sendfile`` / ``os.copy_file_range`` calls (still made)."""
    calls: Counter[str] = Counter()
    for name in ("splice", "sendfile", "copy_file_range"):
        real = getattr(os, name)

        def spy(*a: Any, _real: Callable[..., int] = real, _name: str = name, **k: Any) -> int:
            calls[_name] += 1
            return _real(*a, **k)

        monkeypatch.setattr(os, name, spy)
    return calls


def payload(n: int) -> bytes:
    return bytes((i * 7 + i // 4096) % 251 for i in range(n))


def out_file(tmp: Path) -> int:
    return os.open(tmp / "out.bin", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)


# -- ByteSource ------------------------------------------------------------------------


@pytest.mark.parametrize("lookahead", [False, True])
@pytest.mark.parametrize("at", [None, 0])
@pytest.mark.parametrize("kind", KINDS)
def test_a_failed_write_names_the_output(
    kind: str, at: int | None, lookahead: bool, tmp_path: Path
) -> None:
    """ENOSPC from the kernel's move (splice, sendfile, copy_file_range), from a write of
    look-ahead bytes or from a write of bytes read is an OutputError naming the output,
    whatever the input (issue 12)."""
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        with source_of(kind, b"\xa5" * (3 << 20), tmp_path) as src:
            if lookahead:
                src.peek(100)
            with pytest.raises(OutputError) as ei:
                src.transfer(full, [(at, 2 << 20)], out_name="the memory file")
    finally:
        os.close(full)
    assert ei.value.errno == errno.ENOSPC and ei.value.filename == "the memory file"
    assert str(ei.value) == (
        "cannot write the memory file: No space left on device (errno 28, ENOSPC)"
    )


@pytest.mark.parametrize("kind", KINDS)
def test_transfer_and_skip_move_exact_bytes(
    kind: str, tmp_path: Path, kernel_calls: Counter[str]
) -> None:
    data = payload(3 << 20)
    pieces = [(7 * 4096, 100_000), (0, 5000), (2 << 20, 1 << 20)]
    out = out_file(tmp_path)
    try:
        with source_of(kind, data, tmp_path) as src:
            assert src.read_exact(100) == data[:100]  # leaves look-ahead in the buffer
            src.transfer(out, pieces, field="batch.pages")
            pos = 100 + sum(n for _, n in pieces)
            assert src.offset == pos
            assert src.read_exact(10) == data[pos : pos + 10]
            src.skip(300_000)
            pos += 10 + 300_000
            assert src.offset == pos
            # Nothing was seeked: the rest of the input follows on exactly.
            assert src.read_to_eof() == data[pos:]
        at = 100
        for off, n in pieces:
            assert os.pread(out, n, off) == data[at : at + n]
            at += n
    finally:
        os.close(out)
    used = {name for name, n in kernel_calls.items() if n}
    assert used <= KERNEL_CALLS[kind]
    if kind == "pipe":
        assert used == {"splice"}
    elif kind == "file":
        assert used == {"sendfile", "copy_file_range"}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op", ["transfer", "skip"])
@pytest.mark.parametrize("cut", [100 + 65536 - 1, 100 + 65536 + 12345, 1 << 20])
def test_truncation_as_readinto_exact(kind: str, op: str, cut: int, tmp_path: Path) -> None:
    """Cut inside a spliced / copied run: same error, offset and position as a buffered read."""
    data = payload(cut)
    want = 2 << 20
    ref = ByteSource(io.BytesIO(data))
    ref.read_exact(100)
    with pytest.raises(StreamTruncated) as expected:
        ref.readinto_exact(memoryview(bytearray(want)), field="batch.pages")
    out = out_file(tmp_path)
    try:
        with source_of(kind, data, tmp_path) as src:
            src.read_exact(100)
            with pytest.raises(StreamTruncated) as got:
                if op == "skip":
                    src.skip(want, field="batch.pages")
                else:
                    src.transfer(out, [(0, 4096), (1 << 21, want - 4096)], field="batch.pages")
            assert (str(got.value), got.value.offset, got.value.field) == (
                str(expected.value),
                expected.value.offset,
                expected.value.field,
            )
            assert src.offset == ref.offset
            assert src.at_eof()
        if op == "transfer":  # what arrived was written
            assert os.pread(out, 4096, 0) == data[100 : 100 + 4096]
    finally:
        os.close(out)


@pytest.mark.parametrize("kind", ["pipe", "socket"])
@pytest.mark.parametrize("op", ["transfer", "skip"])
def test_heartbeat_during_a_run(kind: str, op: str, tmp_path: Path) -> None:
    """The sender goes silent inside a run: StreamTimeout at the run's start, as a read."""
    data = payload(300_000)
    out = out_file(tmp_path)
    try:
        with source_of(kind, data, tmp_path, hold=threading.Event()) as src:
            src.read_exact(10)
            src.timeout = 0.2
            with pytest.raises(StreamTimeout) as e:
                if op == "skip":
                    src.skip(1 << 20, field="batch.pages")
                else:
                    src.transfer(out, [(0, 1 << 20)], field="batch.pages")
            assert (e.value.offset, e.value.field) == (10, "batch.pages")
    finally:
        os.close(out)


def test_nonblocking_pipe(tmp_path: Path, kernel_calls: Counter[str]) -> None:
    """O_NONBLOCK input: EAGAIN waits for data instead of failing."""
    data = payload(2 << 20)
    out = out_file(tmp_path)
    try:
        with source_of("pipe", data, tmp_path) as src:
            assert src.fileno is not None
            os.set_blocking(src.fileno, False)
            src.transfer(out, [(0, 1 << 20)])
            src.skip(1 << 20)
            assert src.offset == 2 << 20 and src.at_eof()
        assert os.pread(out, 1 << 20, 0) == data[: 1 << 20]
    finally:
        os.close(out)
    assert kernel_calls["splice"] > 0


def test_buffered_file_object_is_read_through(tmp_path: Path, kernel_calls: Counter[str]) -> None:
    """A BufferedReader may hold read-ahead: its descriptor is never used to move bytes."""
    data = payload(1 << 20)
    (tmp_path / "in.bin").write_bytes(data)
    with open(tmp_path / "in.bin", "rb") as f:
        f.peek(1)
        src = ByteSource(f)
        src.skip(1000)
        assert src.read_exact(10) == data[1000:1010]
    assert not any(kernel_calls.values())


def test_placement_must_cover_the_batch() -> None:
    from xlpy.stream.legacy.reader import LegacyReader, PagePlacement

    data = build("hvm", [{1: bytes(F.PAGE_SIZE)}])
    r = LegacyReader(ByteSource(io.BytesIO(data)), width=8, guest="hvm")
    r.read_header()

    class Short:
        def place(self, entries: bytes, width: int, nbytes: int) -> PagePlacement:
            return PagePlacement(0, [(0, nbytes - 1)])

    with pytest.raises(ValueError, match="does not cover"):
        r.read_chunk(page_sink=Short())


# -- inspect and restore over every kind of input --------------------------------------


def gen_stream(guest: str, mode: str, pages: int = 2100) -> bytes:
    buf = io.BytesIO()
    profile = SenderProfile(
        sender="xen-4.3", toolstack="xl", mode=mode, checkpoints=3 if mode == "remus" else 1
    )
    generate(profile, GuestSpec(kind=guest, pages=pages, seed=5), buf)  # type: ignore[arg-type]
    return buf.getvalue()


def batch_offsets(data: bytes) -> list[int]:
    """Offsets of the first checkpoint's page batches."""
    from xlpy.stream.legacy.reader import LegacyReader
    from xlpy.stream.legacy.records import CheckpointBegin

    out = []
    for rec in LegacyReader(ByteSource(io.BytesIO(data))).records():
        if isinstance(rec, CheckpointBegin) and rec.number > 0:
            break
        if isinstance(rec, PageBatch):
            out.append(rec.offset)
    return out


@pytest.mark.parametrize("guest", ["pv", "hvm"])
def test_inspect_same_on_every_input(guest: str, tmp_path: Path) -> None:
    data = gen_stream(guest, "plain")
    batches = batch_offsets(data)
    assert len(batches) >= 2
    # Whole, cut inside a batch's page data (in and past the look-ahead), cut in entries.
    cuts = [len(data), batches[1] + 4 + 8 * 1024 + 50_000, batches[1] + 4 + 8 * 1024 + 4096 * 600]
    cuts += [batches[1] + 100]
    for cut in cuts:
        results = {}
        for kind in KINDS:
            with source_of(kind, data[:cut], tmp_path) as src:
                results[kind] = json.dumps(inspect_stream(src).to_json())
        assert len(set(results.values())) == 1, (cut, results)
        doc = json.loads(results["pipe"])
        assert doc["complete"] == (cut == len(data))
        if cut != len(data):
            assert doc["error"]["kind"] == "truncated"


def restored(
    kind: str, data: bytes, tmp: Path, name: str, **kw: Any
) -> tuple[dict[str, Any], bytes | None, dict[str, Any] | None]:
    out = tmp / name
    with source_of(kind, data, tmp) as src:
        res = restore(src, out=out, **kw)
    if not res.ok:
        assert not out.exists()
        return from_outcome(res, None).to_json() | {"out": None}, None, None
    state = json.loads((out / "domain.json").read_text())
    return from_outcome(res, None).to_json() | {"out": None}, (out / "memory").read_bytes(), state


@pytest.mark.parametrize(
    ("guest", "mode"), [("hvm", "plain"), ("pv", "plain"), ("hvm", "remus"), ("pv", "remus")]
)
def test_restore_same_on_every_input(
    guest: str, mode: str, tmp_path: Path, kernel_calls: Counter[str]
) -> None:
    data = gen_stream(guest, mode)
    kw: dict[str, Any] = {"generation": "xen-4.5", "toolstack": "xl-4.4"}
    if mode == "remus":
        kw["checkpointed"] = 1
    batches = batch_offsets(data)
    # Whole; cut inside checkpoint 1's page data; cut at 3/4 (a later Remus checkpoint).
    for cut in (len(data), batches[1] + 4 + 8 * 1024 + 50_000, len(data) * 3 // 4):
        results = {}
        for kind in KINDS:
            kernel_calls.clear()
            results[kind] = restored(kind, data[:cut], tmp_path, f"{kind}-{cut}", **kw)
            if kind == "pipe":  # checkpoint 1's pages were spliced into the memory file
                assert kernel_calls["splice"] > 0
        ref = results["bytesio"]
        for kind, got in results.items():
            assert got == ref, (kind, cut)
        assert (ref[1] is not None) == (cut == len(data) or (mode == "remus" and cut > batches[-1]))


def test_restore_memory_matches_the_checkpoints(tmp_path: Path, kernel_calls: Counter[str]) -> None:
    """Pages straight from a pipe: the memory image is the last checkpoint's, byte for byte."""
    cps = remus_checkpoints(3)
    cps[0].update({p: page(0, p) for p in range(16, 120)})  # more than the look-ahead
    data = build("hvm", cps, p2m_size=128)
    _, memory, state = restored(
        "pipe", data, tmp_path, "d", generation="xen-4.3.1", toolstack="xl-4.4", heartbeat=0.5
    )
    assert state is not None and state["committed_checkpoint"] == 2
    assert memory == expected_memory(cps, 2, p2m_size=128)
    assert kernel_calls["splice"] > 0


def test_truncated_batch_with_a_bad_pfn_reports_the_truncation(tmp_path: Path) -> None:
    """A batch that would fail to apply is read first: EOF inside it wins, as in libxc."""
    cps = [{1: b"\1" * F.PAGE_SIZE, 40: b"\2" * F.PAGE_SIZE}]  # pfn 40 >= p2m_size 16
    data = build("hvm", cps)
    cut = batch_offsets(data)[0] + 4 + 16 + F.PAGE_SIZE + 10
    kw: dict[str, Any] = {"generation": "xen-4.5", "toolstack": "xl-4.4"}
    results = [restored(k, data[:cut], tmp_path, k, **kw)[0] for k in KINDS]
    assert all(r == results[-1] for r in results)
    assert not results[0]["ok"]
    assert any("Error when reading pages" in m for m in results[0]["messages"])
    whole = [restored(k, data, tmp_path, k + "-whole", **kw)[0] for k in ("pipe", "bytesio")]
    assert whole[0] == whole[1] and not whole[0]["ok"]


def test_verify_mode_keeps_reading_page_data(tmp_path: Path) -> None:
    """After -1 checkpoint 1's pages are read and compared, never spliced into memory."""
    from xlpy.stream.legacy.writer import encode

    cps = [{1: b"\1" * F.PAGE_SIZE, 2: b"\2" * F.PAGE_SIZE}]
    plain = build("hvm", cps)
    marker = encode([EnableVerifyMode()])
    first = batch_offsets(plain)[0]
    data = plain[:first] + marker + plain[first:]
    kw: dict[str, Any] = {"generation": "xen-4.5", "toolstack": "xl-4.4"}
    got = {k: restored(k, data, tmp_path, k, **kw) for k in ("pipe", "bytesio")}
    assert got["pipe"] == got["bytesio"]
    assert got["pipe"][2] is not None and got["pipe"][2]["verify_mode"]
