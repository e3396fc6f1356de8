"""inspect on damaged sender-profile streams: never a non-xlpy exception, and a
truncated stream is reported as truncated at or before the cut (Hypothesis)."""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st

from xlpy.errors import UsageError
from xlpy.guest import MIN_PAGES, GuestSpec
from xlpy.stream.legacy.inspect import inspect_stream
from xlpy.stream.legacy.senders import SenderProfile, generate
from xlpy.stream.source import ByteSource


def _stream(prof: SenderProfile, kind: str) -> bytes:
    buf = io.BytesIO()
    generate(prof, GuestSpec(kind=kind, pages=MIN_PAGES[kind] + 5, seed=11), buf)  # type: ignore[arg-type]
    return buf.getvalue()


STREAMS = [
    _stream(SenderProfile(sender="xen-4.3", toolstack="xl"), "hvm"),
    _stream(SenderProfile(sender="xen-4.5", toolstack="xenserver-classic"), "hvm"),
    _stream(SenderProfile(sender="xen-4.1", toolstack="xend", width=4), "pv"),
    _stream(
        SenderProfile(sender="xen-4.3", toolstack="xl", mode="remus", checkpoints=3, compress=True),
        "pv",
    ),
]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(range(len(STREAMS))), st.floats(0, 1, exclude_max=True))
def test_truncation_is_reported_at_or_before_the_cut(which: int, where: float) -> None:
    data = STREAMS[which]
    cut = int(len(data) * where)
    s = inspect_stream(ByteSource(io.BytesIO(data[:cut])))
    if s.error is None:
        # Only where the grammar may legitimately end: after a tail (the
        # remainder then reads as a trailer) or inside a trailer.
        assert s.complete
    else:
        assert s.error.kind == "truncated"
        assert s.error.offset is not None and s.error.offset <= cut
        assert not s.complete


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(range(len(STREAMS))),
    st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=4),
)
def test_corruption_never_escapes_as_a_python_error(
    which: int, flips: list[tuple[float, int]]
) -> None:
    data = bytearray(STREAMS[which])
    for where, byte in flips:
        data[int(len(data) * where)] = byte
    try:
        s = inspect_stream(ByteSource(io.BytesIO(bytes(data))))
    except UsageError:
        return  # guest type no longer decidable from the bytes
    assert s.error is None or s.error.kind in ("truncated", "malformed")
