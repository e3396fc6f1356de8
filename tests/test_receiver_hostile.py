"""Hostile bytes: whatever the stream says, the receiver answers with a result, never a
traceback, and a failed restore leaves no directory behind."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_receiver_streams import build, remus_checkpoints

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
