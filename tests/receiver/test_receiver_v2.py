"""The migration-v2 receiver (xen-4.17): pages, stream types, failover, limits, messages.

v2 streams are made at test time: generated legacy streams (the repro matrix's S-post
sender) through the converter, or crafted record by record with V2Writer.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.paths import REPO as ROOT
from tests.helpers.v2_streams import v2_stream
from xlpy import repro
from xlpy.errors import StreamMalformed
from xlpy.guest import Guest
from xlpy.receiver import restore
from xlpy.receiver.domains import Outcome
from xlpy.stream.legacy import format as LF
from xlpy.stream.source import ByteSource
from xlpy.stream.v2 import format as F
from xlpy.stream.v2.reader import V2Reader
from xlpy.stream.v2.records import V2Record
from xlpy.stream.v2.writer import V2Writer

GEN = "xen-4.17"


def run(data: bytes, out: Path, cs: int = 0) -> Outcome:
    return restore(ByteSource(io.BytesIO(data)), generation=GEN, out=out, checkpointed=cs)


def memory_equals(guest: str, out: Path, epoch: int) -> bool:
    """The domain's memory is the generated guest's at ``epoch`` (magic pages cleared)."""
    g = Guest(repro._spec(guest))
    raw = np.fromfile(out / "memory", dtype=np.uint8)
    n = len(g.populated)
    mem = np.zeros(n * LF.PAGE_SIZE, dtype=np.uint8)
    mem[: min(len(raw), len(mem))] = raw[: len(mem)]
    mem = mem.reshape(n, LF.PAGE_SIZE)
    pop = np.flatnonzero(g.populated)
    want = g.pages(pop.astype(np.uint64), epoch)
    if guest == "hvm":
        cleared = [*g.hvm_magic_pfns, g.hvm_params()[LF.XC_SAVE_ID_HVM_CONSOLE_PFN]]
        want[np.isin(pop, cleared)] = 0
    holes = np.flatnonzero(~g.populated)
    return bool(np.array_equal(mem[pop], want) and not mem[holes].any())


def leftovers(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.iterdir())


# --- pages and stream types --------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["libxc", "libxl"])
@pytest.mark.parametrize("guest", ["pv", "hvm"])
def test_plain_stream_restores_its_pages(tmp_path: Path, guest: str, fmt: str) -> None:
    for cs in (0, 1):  # a plain stream into a REMUS receiver is a plain restore
        out = tmp_path / f"dom{cs}"
        r = run(v2_stream("plain", guest, fmt), out, cs)
        assert r.ok and r.rc == 0 and r.messages == [], r.messages
        assert r.committed_checkpoint == 0 and r.bytes_past_image == 0
        assert memory_equals(guest, out, 0)
        state = json.loads((out / "domain.json").read_text())
        assert state["receiver"] == GEN and state["stream_type"] == ("PLAIN", "REMUS")[cs]
        assert state["format"] == fmt and state["guest"] == guest
        if guest == "hvm":
            assert (out / "hvm_context").stat().st_size > 0
            assert (out / "qemu").exists() == (fmt == "libxl")
        else:
            assert (out / "vcpu0.ctx").stat().st_size == LF.VCPU_CONTEXT_SIZE_64
            assert (out / "shared_info").stat().st_size == 4096


@pytest.mark.parametrize("fmt", ["libxc", "libxl"])
@pytest.mark.parametrize("guest", ["pv", "hvm"])
def test_checkpointed_stream(tmp_path: Path, guest: str, fmt: str) -> None:
    """A converted Remus stream (PV or HVM) keeps its CHECKPOINT records, unlike Xen's
    converter's output (checkpoint 1 only): a PLAIN receiver rejects it as libxc does, a
    REMUS or COLO one commits the last checkpoint (the difference ``xlpy convert --help``
    and :mod:`xlpy.stream.convert` document)."""
    data = v2_stream("remus", guest, fmt)
    r = run(data, tmp_path / "plain", 0)
    assert not r.ok and r.rc == 1 and r.domain_destroyed
    assert r.messages == [
        "xc: error: Found checkpoint in non-checkpointed stream: Internal error",
        "xc: error: Restore failed (0 = Success): Internal error",
    ]
    assert r.error is not None and r.error.field == "Checkpoint.type"
    assert leftovers(tmp_path) == []
    for cs in (1, 2):  # REMUS, COLO
        out = tmp_path / f"remus{cs}"
        r = run(data, out, cs)
        assert r.ok and r.messages == []
        last = repro.REMUS_CHECKPOINTS - 1
        assert r.committed_checkpoint == last
        assert memory_equals(guest, out, last + 1)


def test_legacy_stream_needs_converting(tmp_path: Path) -> None:
    r = run(repro.cell_stream("xen-4.1", "plain", "pv", "eof"), tmp_path / "d")
    assert not r.ok and "convert" in r.messages[0] and r.messages[0].startswith("libxl:")
    assert leftovers(tmp_path) == []


def test_short_streams_fail_reading_the_headers(tmp_path: Path) -> None:
    data = v2_stream("plain", "pv", "libxc")
    image = "xc: error: Failed to read Image Header from stream (0 = Success): Internal error"
    domain = "xc: error: Failed to read Domain Header from stream (0 = Success): Internal error"
    for cut, want in ((0, image), (5, image), (10, image), (30, domain)):
        r = run(data[:cut], tmp_path / "d")
        assert r.messages == [want], cut  # read_headers() returns before "Restore failed"
        assert not r.ok and leftovers(tmp_path) == []


# --- Remus failover ---------------------------------------------------------------------


def _commit_points(data: bytes, fmt: str) -> tuple[list[int], int]:
    """Offsets after which a checkpoint is complete (CHECKPOINT, or CHECKPOINT_END in
    libxl), and where the receiver's reading ends (the libxc END, or libxl's END)."""
    marks = []
    kind = F.REC_TYPE_CHECKPOINT if fmt == "libxc" else F.REC_TYPE_CHECKPOINT_END
    end = 0
    for el in V2Reader(ByteSource(io.BytesIO(data))).elements():
        if isinstance(el, V2Record):
            end = el.offset + 8 + el.length + F.padding_for(el.length)
            if el.layer == fmt and el.type == kind:
                marks.append(end)
    assert len(marks) == repro.REMUS_CHECKPOINTS
    return marks, end


@pytest.mark.parametrize("fmt", ["libxc", "libxl"])
@pytest.mark.parametrize("guest", ["pv", "hvm"])
def test_failover_commits_last_complete_checkpoint(tmp_path: Path, guest: str, fmt: str) -> None:
    data = v2_stream("remus", guest, fmt)
    marks, end = _commit_points(data, fmt)
    rng = np.random.default_rng(5)
    cuts = {
        0,
        7,
        30,
        len(data) - 1,
        len(data),
        *marks,
        *(m - 1 for m in marks),
        *(m + 8 for m in marks),
    }
    cuts |= {int(c) for c in rng.integers(1, len(data), 12)}
    for i, cut in enumerate(sorted(cuts)):
        out = tmp_path / f"d{i}"
        r = run(data[:cut], out, 1)
        complete = sum(m <= cut for m in marks)
        if complete == 0:
            assert not r.ok and r.rc == 1, cut
            assert not out.exists()
            if cut >= 64:  # past every header: restore() itself failed
                assert r.messages[-1].startswith("xc: error: Restore failed"), cut
        else:
            assert r.ok, (cut, r.messages)
            assert r.committed_checkpoint == complete - 1, cut
            assert memory_equals(guest, out, complete), cut
            state = json.loads((out / "domain.json").read_text())
            assert state["failover"] is (cut < end)
    assert [p for p in leftovers(tmp_path) if p.startswith(".")] == []


# --- hostile streams ----------------------------------------------------------------------


def _pv_prefix(w: V2Writer, *, max_pfn: int = 15) -> None:
    w.image_header()
    w.domain_header(F.DHDR_TYPE_X86_PV, xen_major=4, xen_minor=17)
    w.x86_pv_info(8, 4)
    w.static_data_end()
    fpp = F.PAGE_SIZE // 8
    w.x86_pv_p2m_frames(0, max_pfn, np.arange(max_pfn // fpp + 1, dtype=np.uint64))


def _restore_bytes(tmp_path: Path, build: object, cs: int = 0) -> Outcome:
    buf = io.BytesIO()
    w = V2Writer(buf)
    build(w)  # type: ignore[operator]
    return run(buf.getvalue(), tmp_path / "d", cs)


def test_oversized_record(tmp_path: Path) -> None:
    def build(w: V2Writer) -> None:
        _pv_prefix(w)
        w._write(F.RHDR_FORMAT.pack(F.REC_TYPE_PAGE_DATA, F.REC_LENGTH_MAX + 1))

    r = _restore_bytes(tmp_path, build)
    assert r.messages == [
        "xc: error: Record (0x00000001, Page data) length 0x8000001 exceeds max (0x8000000)"
        ": Internal error",
        "xc: error: Restore failed (0 = Success): Internal error",
    ]
    assert r.error is not None and r.error.field == "record.length"
    assert leftovers(tmp_path) == []


def test_pfn_beyond_max_pfn(tmp_path: Path) -> None:
    def build(w: V2Writer) -> None:
        _pv_prefix(w, max_pfn=15)
        w.page_data_pfns([3, 16], bytes(2 * 4096))

    r = _restore_bytes(tmp_path, build)
    assert r.messages[0] == ("xc: error: pfn 0x10 (index 1) outside domain maximum: Internal error")
    assert r.error is not None and r.error.record is not None
    assert leftovers(tmp_path) == []


def test_unknown_page_type_and_wrong_size(tmp_path: Path) -> None:
    def bad_type(w: V2Writer) -> None:
        _pv_prefix(w)
        w.write_record(
            F.REC_TYPE_PAGE_DATA,
            F.PAGE_DATA_HDR_FORMAT.pack(1, 0),
            (2 | 5 << 60).to_bytes(8, "little"),
        )

    r = _restore_bytes(tmp_path, bad_type)
    assert r.messages[0] == (
        "xc: error: Unknown type 0x50000000 for pfn 0x2 (index 0): Internal error"
    )

    def short(w: V2Writer) -> None:
        _pv_prefix(w)
        w.write_record(F.REC_TYPE_PAGE_DATA, F.PAGE_DATA_HDR_FORMAT.pack(1, 0), bytes(8))

    r = _restore_bytes(tmp_path, short)
    assert r.messages[0] == (
        "xc: error: PAGE_DATA record wrong size: length 16, expected 8 + 8 + 4096: Internal error"
    )


def test_batch_size_is_bounded_by_the_record_limit_only(tmp_path: Path) -> None:
    """xg_sr_restore.c caps no batch (1024 is the saver's MAX_BATCH_SIZE): 2048 pages pass."""

    def build(w: V2Writer) -> None:
        _pv_prefix(w, max_pfn=4095)
        pfns = np.arange(2048, dtype=np.uint64)
        w.page_data_pfns(pfns, np.repeat(pfns.astype(np.uint8), 4096).tobytes())
        w.x86_pv_vcpu_basic(0, bytes(LF.VCPU_CONTEXT_SIZE_64))
        w.end()

    r = _restore_bytes(tmp_path, build)
    assert r.ok, r.messages
    mem = (tmp_path / "d" / "memory").read_bytes()
    assert mem[2047 * 4096] == 2047 % 256 and mem[5 * 4096 + 17] == 5


def test_unhandled_and_optional_records(tmp_path: Path) -> None:
    def build(w: V2Writer) -> None:
        _pv_prefix(w)
        w.write_record(0x80000042, b"skipped")
        w.write_record(F.REC_TYPE_HVM_CONTEXT, b"x")
        w.end()

    r = _restore_bytes(tmp_path, build)
    assert (
        r.messages[0] == "xc: error: Mandatory record 0x9 (HVM context) not handled: Internal error"
    )

    def missing_vcpu(w: V2Writer) -> None:
        _pv_prefix(w)
        w.end()

    r = _restore_bytes(tmp_path, missing_vcpu)
    assert r.messages[0] == "xc: error: Sender didn't send vcpu0's basic state: Internal error"


def test_truncated_record_body(tmp_path: Path) -> None:
    data = v2_stream("plain", "pv", "libxc")
    marks = [
        el
        for el in V2Reader(ByteSource(io.BytesIO(data))).elements()
        if isinstance(el, V2Record) and el.type == F.REC_TYPE_PAGE_DATA
    ]
    rec = marks[0]
    r = run(data[: rec.offset + 100], tmp_path / "d")
    datasz = rec.length + F.padding_for(rec.length)
    assert r.messages == [
        f"xc: error: Failed to read {datasz} bytes of data for record (0x00000001, Page data)"
        " (0 = Success): Internal error",
        "xc: error: Restore failed (0 = Success): Internal error",
    ]
    assert r.error is not None and r.error.kind == "truncated"


def test_buffered_bad_record_fails_at_its_checkpoint(tmp_path: Path) -> None:
    """A bad record after the first CHECKPOINT is only judged at the next one: then it kills."""

    def build(w: V2Writer, *, close: bool) -> None:
        _pv_prefix(w)
        w.page_data_pfns([1], b"\1" * 4096)
        w.x86_pv_vcpu_basic(0, bytes(LF.VCPU_CONTEXT_SIZE_64))
        w.checkpoint()
        w.page_data_pfns([99], b"\2" * 4096)
        if close:
            w.checkpoint()

    r = _restore_bytes(tmp_path, lambda w: build(w, close=True), cs=1)
    assert not r.ok and r.messages[0].startswith("xc: error: pfn 0x63 (index 0)")
    r = _restore_bytes(tmp_path, lambda w: build(w, close=False), cs=1)
    assert r.ok and r.committed_checkpoint == 0
    assert (tmp_path / "d" / "memory").read_bytes()[4096] == 1


# --- the command line -----------------------------------------------------------------------


def test_cli_restores_xl_save_file_from_a_pipe(tmp_path: Path) -> None:
    buf = io.BytesIO()
    V2Writer(buf).xl_header()
    buf.write(v2_stream("plain", "hvm", "libxl"))
    out = tmp_path / "dom"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "xlpy", "restore", "-", "--release", GEN, "--out", str(out)]
    p = subprocess.run(
        [*cmd, "--json"], input=buf.getvalue(), capture_output=True, env=env, timeout=60
    )
    assert p.returncode == 0, p.stderr.decode()
    doc = json.loads(p.stdout)
    assert doc["ok"] and doc["committed_checkpoint"] == 0 and doc["messages"] == []
    assert memory_equals("hvm", out, 0)
    assert json.loads((out / "domain.json").read_text())["framing"] == "xl"


def test_stream_must_match_the_domain(tmp_path: Path) -> None:
    data = v2_stream("plain", "pv", "libxc")
    r = restore(ByteSource(io.BytesIO(data)), generation=GEN, out=tmp_path / "d", guest="hvm")
    assert r.messages == [
        "xc: error: Unable to restore x86 PV domain into an x86 HVM domain: Internal error",
        "xc: error: Restore failed (0 = Success): Internal error",
    ]
    assert leftovers(tmp_path) == []


def test_pv_info_checks(tmp_path: Path) -> None:
    def build(w: V2Writer) -> None:
        w.image_header()
        w.domain_header(F.DHDR_TYPE_X86_PV)
        w.x86_pv_info(4, 4)

    r = _restore_bytes(tmp_path, build)
    assert r.messages[0] == (
        "xc: error: Invalid X86_PV_INFO combination: width 4, pt_levels 4: Internal error"
    )

    def twice(w: V2Writer) -> None:
        _pv_prefix(w)
        w.x86_pv_info(8, 4)

    r = _restore_bytes(tmp_path, twice)
    assert r.messages[0] == "xc: error: Already received X86_PV_INFO record: Internal error"


def test_libxl_records_cut_after_the_libxc_image(tmp_path: Path) -> None:
    """libxc succeeded; libxl then fails reading its own records: no domain (PLAIN)."""
    data = v2_stream("plain", "hvm", "libxl")
    r = run(data[:-12], tmp_path / "plain", 0)
    assert not r.ok and r.rc == 0 and r.toolstack_error is not None
    assert r.messages[-1].startswith("libxl: cannot read the libxl records after the libxc image")
    assert leftovers(tmp_path) == []
    # A REMUS receiver (xl migrate-receive -r) takes any end of the stream as failover.
    r = run(data[:-12], tmp_path / "remus", 1)
    assert r.ok and r.committed_checkpoint == 0


def test_verify_mode_compares_instead_of_writing(tmp_path: Path) -> None:
    def build(w: V2Writer) -> None:
        _pv_prefix(w)
        w.page_data_pfns([1, 2], b"\1" * 4096 + b"\2" * 4096)
        w.verify()
        w.page_data_pfns([1, 2], b"\1" * 4096 + b"\3" * 4096)
        w.x86_pv_vcpu_basic(0, bytes(LF.VCPU_CONTEXT_SIZE_64))
        w.end()

    r = _restore_bytes(tmp_path, build)
    assert r.ok and r.messages == ["xc: error: verify pfn 0x2 failed (type 0): Internal error"]
    assert (tmp_path / "d" / "memory").read_bytes()[2 * 4096] == 2


def test_hvm_pfn_beyond_the_domain(tmp_path: Path) -> None:
    from xlpy.receiver.domains.sim import MAX_SIM_P2M_SIZE

    def build(w: V2Writer) -> None:
        w.image_header()
        w.domain_header(F.DHDR_TYPE_X86_HVM)
        w.static_data_end()
        w.page_data_pfns([0, MAX_SIM_P2M_SIZE], bytes(2 * 4096))

    r = _restore_bytes(tmp_path, build)
    assert r.messages == [
        "xc: error: Failed to populate physmap (12 = Cannot allocate memory): Internal error",
        "xc: error: Failed to populate pfns for batch of 2 pages: Internal error",
        "xc: error: Restore failed (12 = Cannot allocate memory): Internal error",
    ]
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("gen", [GEN, "xen-4.3.1"])
def test_interrupted_restore_leaves_no_directory(tmp_path: Path, gen: str) -> None:
    """Not only libxc's failures: anything that stops a restore removes the domain."""
    data = (
        v2_stream("plain", "pv", "libxc")
        if gen == GEN
        else repro.cell_stream("xen-4.1", "plain", "pv", "eof")
    )
    seen: list[str] = []

    def interrupt(event: dict[str, object]) -> None:
        seen.append(str(event["phase"]))
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        restore(
            ByteSource(io.BytesIO(data)), generation=gen, out=tmp_path / "d", progress=interrupt
        )
    assert leftovers(tmp_path) == []


def test_libxl_end_before_the_libxc_image_is_a_stream_error(tmp_path: Path) -> None:
    """Found by tests/fuzz/fuzz_receiver_v2.py: the receiver ran off the reader's end."""
    out = io.BytesIO()
    w = V2Writer(out)
    w.libxl_header()
    w.write_record(F.REC_TYPE_LIBXL_END)
    for cs in (0, 1):
        r = run(out.getvalue(), tmp_path / f"d{cs}", cs)
        assert not r.ok and r.domain_destroyed
        assert isinstance(r.error, StreamMalformed) and r.error.offset == 16
        assert r.messages == [
            "libxl: the libxl stream ends before its LIBXC_CONTEXT record: no libxc image"
        ]
