"""The hand-built legacy streams of :mod:`tests.helpers.legacy_streams` are what they claim."""

from __future__ import annotations

from tests.helpers.legacy_streams import PAGE, build, expected_memory, remus_checkpoints
from xlpy.stream.legacy.records import HvmTail, PvTail


def test_built_streams_read_back() -> None:
    """The helpers produce streams the legacy reader accepts whole."""
    import io

    from xlpy.stream.legacy.reader import LegacyReader
    from xlpy.stream.source import ByteSource

    for guest in ("pv", "hvm"):
        for compress in (False, True):
            data = build(guest, remus_checkpoints(3), compress=compress)
            recs = list(LegacyReader(ByteSource(io.BytesIO(data))).records())
            assert sum(isinstance(r, (PvTail, HvmTail)) for r in recs) == 3


def test_expected_memory_folds_checkpoints() -> None:
    cps = remus_checkpoints(3)
    mem = expected_memory(cps, 2)
    assert mem[2 * PAGE : 3 * PAGE] == cps[1][2]
    assert mem[3 * PAGE : 4 * PAGE] == cps[2][3]
    assert mem[:PAGE] == bytes(PAGE)
