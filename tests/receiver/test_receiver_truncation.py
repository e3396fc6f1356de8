"""Truncation: a Remus stream cut anywhere either fails inside checkpoint 1 (nothing left)
or restores exactly the last checkpoint whose body *and* tail were complete (§10.5a).

Every byte offset of a small 3-checkpoint stream is tried, restoring into an in-memory
domain (:class:`~xlpy.receiver.domains.mem.MemDomain`) so one cut costs a state-machine
run, not a directory; random cuts of a larger generated stream go through directories.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.legacy_streams import build, expected_memory, page
from xlpy.guest import Guest, GuestSpec
from xlpy.receiver import restore
from xlpy.receiver.domains import ReceiveRequest
from xlpy.receiver.domains.mem import MemDomain
from xlpy.receiver.legacy import Restore
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


#: Three checkpoints of one or two pages each: small enough to cut at every byte.
SMALL_CHECKPOINTS = [
    {1: page(0, 1), 2: page(0, 2)},
    {2: page(1, 2)},
    {3: page(2, 3)},
]


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("guest", ["pv", "hvm"])
def test_cut_at_every_offset(guest: str, compress: bool) -> None:
    cps = SMALL_CHECKPOINTS
    data = build(guest, cps, compress=compress, qemu=F.QEMU_SIG_REMUS)
    ends = checkpoint_ends(data)
    assert len(ends) == 3 and ends[-1] == len(data)
    request = ReceiveRequest(generation=GEN, out=Path("unused"), guest=guest)
    memory = [expected_memory(cps, k) for k in range(3)]
    for cut in range(len(data) + 1):
        dom = MemDomain()
        r = Restore(ByteSource(io.BytesIO(data[:cut])), request, dom).run()
        complete = sum(e <= cut for e in ends)
        if complete == 0:
            assert not r.ok and r.rc == 1 and r.domain_destroyed, cut
            assert r.error is not None and r.messages, cut
            assert dom.destroyed and not dom.restored, cut
            continue
        assert r.ok and r.committed_checkpoint == complete - 1, (cut, r.messages)
        assert dom.restored and dom.memory() == memory[complete - 1], cut


def test_cut_inside_checkpoint_1_leaves_no_directory(tmp_path: Path) -> None:
    data = build("pv", SMALL_CHECKPOINTS, qemu=F.QEMU_SIG_REMUS)
    for cut in (0, 8, checkpoint_ends(data)[0] - 1):
        r = restore(io.BytesIO(data[:cut]), generation=GEN, out=tmp_path / "d", guest="pv")
        assert not r.ok and list(tmp_path.iterdir()) == [], cut


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
