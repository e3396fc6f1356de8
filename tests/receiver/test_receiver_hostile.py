"""Hostile bytes: whatever the stream says, the receiver answers with a result, never a
traceback, and a failed restore leaves no directory behind."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.legacy_streams import build, remus_checkpoints
from xlpy.errors import StreamError
from xlpy.receiver import restore
from xlpy.stream.legacy import format as F

STREAMS = {
    (guest, compress): build(guest, remus_checkpoints(2), compress=compress, qemu=F.QEMU_SIG_REMUS)
    for guest in ("pv", "hvm")
    for compress in (False, True)
}


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    which=st.sampled_from(sorted(STREAMS)),
    gen=st.sampled_from(["xen-4.0", "xen-4.3.1", "xen-4.4", "xen-4.5"]),
    edits=st.lists(
        st.tuples(st.floats(0, 1), st.binary(min_size=1, max_size=8)), min_size=1, max_size=4
    ),
)
def test_mutated_streams_never_raise(
    tmp_path_factory: pytest.TempPathFactory,
    which: tuple[str, bool],
    gen: str,
    edits: list[tuple[float, bytes]],
) -> None:
    data = bytearray(STREAMS[which])
    for frac, blob in edits:
        at = int(frac * (len(data) - 1))
        data[at : at + len(blob)] = blob
    out = tmp_path_factory.mktemp("hostile") / "d"
    kw = {"checkpointed": 1} if gen in ("xen-4.4", "xen-4.5") else {}
    r = restore(io.BytesIO(bytes(data)), generation=gen, out=out, guest=which[0], **kw)  # type: ignore[arg-type]
    if r.ok:
        assert (out / "memory").exists() and (out / "domain.json").exists()
        shutil.rmtree(out)
    else:
        assert not out.exists()
        assert list(out.parent.iterdir()) == []
        assert r.error is None or isinstance(r.error, StreamError)
        assert r.messages


@pytest.mark.parametrize("guest", ["pv", "hvm"])
def test_compressed_garbage_fails_with_libxc_decoder_message(tmp_path: Path, guest: str) -> None:
    cps = remus_checkpoints(3)
    data = bytearray(build(guest, cps, compress=True, qemu=F.QEMU_SIG_REMUS))
    # Checkpoint 2's -12 payload starts right after its first batch; make its first
    # page a zero-length run.
    marker = (F.XC_SAVE_ID_COMPRESSED_DATA & 0xFFFFFFFF).to_bytes(4, "little")
    at = data.index(marker) + 4 + 8
    data[at] = 0x00 if data[at] == 0x80 else 0x80  # EMPTY <-> FULL desyncs the stream
    r = restore(io.BytesIO(bytes(data)), generation="xen-4.3.1", out=tmp_path / "d")
    assert not r.ok and r.rc == 1
    assert any("compression buffer" in m for m in r.messages), r.messages
    assert r.messages[-1].startswith("xc: error: Failed to uncompress page (pfn=")
    assert not (tmp_path / "d").exists()


def _pv_tail_offset(data: bytes) -> int:
    """Offset of the (only) PV tail of a one-checkpoint stream built with ``last``."""
    import struct as _s

    return data.rindex(_s.pack("<i", F.XC_SAVE_ID_LAST_CHECKPOINT) + bytes(4)) + 8


def test_pv_tail_that_lies_about_its_pfn_count(tmp_path: Path) -> None:
    import struct as _s

    data = bytearray(build("pv", [{1: bytes(4096)}], last=True))
    at = _pv_tail_offset(bytes(data))
    data[at : at + 4] = _s.pack("<I", (1 << 28) + 1)
    r = restore(io.BytesIO(bytes(data)), generation="xen-4.3.1", out=tmp_path / "d")
    assert not r.ok
    assert r.messages == [
        "xc: error: Error when reading pfn count (0 = Success): Internal error",
        "xc: error: error buffering image tail: Internal error",
    ]
    assert isinstance(r.error, StreamError) and r.error.field == "pv_tail.pfn_count"


def test_huge_lengths_cost_only_what_the_stream_backs(tmp_path: Path) -> None:
    """A later checkpoint announcing a 1 TiB -12 payload: commit, without allocating it."""
    import struct as _s
    import tracemalloc

    cps = remus_checkpoints(2)
    good = build("pv", cps, compress=True)
    one = len(build("pv", cps[:1], compress=True))
    # Checkpoint 2: one batch header + entries, then a -12 chunk claiming 1 TiB.
    body = good[one:]
    cut = body.index(_s.pack("<i", F.XC_SAVE_ID_COMPRESSED_DATA))
    hostile = good[:one] + body[:cut] + _s.pack("<iQ", F.XC_SAVE_ID_COMPRESSED_DATA, 1 << 40)
    hostile += bytes(3 << 20)
    tracemalloc.start()
    try:
        r = restore(io.BytesIO(hostile), generation="xen-4.3.1", out=tmp_path / "d")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.ok and r.committed_checkpoint == 0
    # refused up front (beyond the sender's 16 MiB buffer): libxc's realloc of 1 TiB fails
    assert r.messages[-2:] == [
        "xc: error: Could not (re)allocate compression buffer: Internal error",
        "xc: error: error when buffering batch, finishing (12 = Cannot allocate memory): "
        "Internal error",
    ]
    assert peak < 64 << 20
