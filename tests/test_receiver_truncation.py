"""Truncation: a Remus stream cut anywhere either fails inside checkpoint 1 (nothing left)
or restores exactly the last checkpoint whose body *and* tail were complete (§10.5a)."""

from __future__ import annotations

import io
import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_receiver_streams import build, expected_memory, remus_checkpoints

from xlpy.guest import Guest, GuestSpec
from xlpy.receiver import restore
from xlpy.stream.legacy import format as F
from xlpy.stream.legacy.reader import LegacyReader
from xlpy.stream.legacy.records import HvmTail, PvTail, QemuRecord
from xlpy.stream.legacy.senders import SenderProfile, generate
from xlpy.stream.source import ByteSource

GEN = "xen-4.3.1"  # R-bug: waits for checkpoints and commits on any read failure


def checkpoint_ends(data: bytes) -> list[int]:
    """Offsets just past each checkpoint's tail (and its QEMU record)."""
    recs = list(LegacyReader(ByteSource(io.BytesIO(data))).records())
    ends: list[int] = []
    for i, rec in enumerate(recs):
        nxt = recs[i + 1] if i + 1 < len(recs) else None
        end = nxt.offset if nxt is not None else len(data)
        if isinstance(rec, QemuRecord) or (
            isinstance(rec, (PvTail, HvmTail)) and not isinstance(nxt, QemuRecord)
        ):
            ends.append(end)
    return ends


def structural_offsets(data: bytes) -> list[int]:
    """Every offset in the first 48 and last 16 bytes of each element, plus its middle.

    Element boundaries, headers, counts and lengths are all covered byte by byte; only
    the interior of page data and context blobs is sampled.
    """
    recs = list(LegacyReader(ByteSource(io.BytesIO(data))).records())
    starts = [r.offset for r in recs] + [len(data)]
    cuts: set[int] = set()
    for a, b in itertools.pairwise(starts):
        cuts.update(range(a, min(b, a + 48)))
        cuts.update(range(max(a, b - 16), b))
        cuts.add((a + b) // 2)
    cuts.add(len(data))
    return sorted(cuts)


def check_cut(
    data: bytes, cut: int, ends: list[int], cps: list[dict[int, bytes]], guest: str, out: Path
) -> None:
    r = restore(io.BytesIO(data[:cut]), generation=GEN, out=out, guest=guest)
    complete = sum(e <= cut for e in ends)
    if complete == 0:
        assert not r.ok and r.rc == 1 and r.domain_destroyed, cut
        assert r.error is not None and r.messages, cut
        assert not out.exists(), cut
        assert list(out.parent.iterdir()) == [], cut
        return
    assert r.ok and r.committed_checkpoint == complete - 1, (cut, r.messages)
    assert (out / "memory").read_bytes() == expected_memory(cps, complete - 1), cut
    shutil.rmtree(out)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("guest", ["pv", "hvm"])
def test_cut_at_every_structural_offset(tmp_path: Path, guest: str, compress: bool) -> None:
    cps = remus_checkpoints(3)
    data = build(guest, cps, compress=compress, qemu=F.QEMU_SIG_REMUS)
    ends = checkpoint_ends(data)
    assert len(ends) == 3 and ends[-1] == len(data)
    cuts = structural_offsets(data)
    assert len(cuts) > 300
    for cut in cuts:
        check_cut(data, cut, ends, cps, guest, tmp_path / "d")


@pytest.fixture(scope="module")
def larger_stream() -> tuple[bytes, SenderProfile, GuestSpec]:
    prof = SenderProfile(sender="xen-4.3", mode="remus", checkpoints=3, compress=True)
    spec = GuestSpec(kind="pv", pages=1500, seed=3, vcpus=3)
    out = io.BytesIO()
    generate(prof, spec, out)
    return out.getvalue(), prof, spec


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(frac=st.floats(min_value=0.0, max_value=1.0))
def test_random_cuts_of_a_generated_stream(
    tmp_path_factory: pytest.TempPathFactory,
    larger_stream: tuple[bytes, SenderProfile, GuestSpec],
    frac: float,
) -> None:
    data, _prof, spec = larger_stream
    cut = int(frac * len(data))
    ends = checkpoint_ends(data)
    out = tmp_path_factory.mktemp("cut") / "d"
    r = restore(io.BytesIO(data[:cut]), generation=GEN, out=out, guest="pv")
    complete = sum(e <= cut for e in ends)
    if complete == 0:
        assert not r.ok and not out.exists()
        return
    assert r.ok and r.committed_checkpoint == complete - 1
    g = Guest(spec)
    mem = np.fromfile(out / "memory", dtype=np.uint8).reshape(-1, F.PAGE_SIZE)
    pop = np.flatnonzero(g.populated)
    # Checkpoint k (0-based) of a Remus stream leaves the guest at epoch k + 1.
    assert np.array_equal(mem[pop], g.pages(pop.astype(np.uint64), complete))
