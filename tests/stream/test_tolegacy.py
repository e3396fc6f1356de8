"""v2 → legacy (`xlpy.stream.tolegacy`): what each sender profile gets, round trips, refusals.

v2 inputs are built here with the v2 writer in the record order a Xen 4.17 sender
uses (info/p2m frames, CPU policies, STATIC_DATA_END, pages, then TSC, shared
info / vcpus or HVM context / params), page contents from the deterministic
guest model, so the legacy stream read back can be checked byte for byte.
"""

from __future__ import annotations

import io
import itertools
import struct
import tracemalloc
from pathlib import Path
from typing import BinaryIO, cast

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers.fd_streams import fd_output, source_of
from tests.helpers.v2_streams import STORE, XCR0_FP_SSE, V2Guest, cpu_records, make_v2, to_legacy
from xlpy.errors import NotRepresentable, StreamMalformed, StreamTruncated, UsageError
from xlpy.guest import Guest, GuestSpec
from xlpy.stream.convert import legacy_to_v2
from xlpy.stream.legacy import format as LF
from xlpy.stream.legacy.reader import LegacyReader
from xlpy.stream.legacy.records import (
    HvmParamChunk,
    HvmTail,
    LastCheckpoint,
    PageBatch,
    PvExtInfo,
    PvTail,
    QemuRecord,
    Record,
    Toolstack,
    Trailer,
    TscInfo,
    VcpuInfo,
    XendHeader,
    XlHeader,
)
from xlpy.stream.legacy.senders import SENDERS, TOOLSTACKS, SenderProfile, generate
from xlpy.stream.source import ByteSource
from xlpy.stream.tolegacy import v2_to_legacy
from xlpy.stream.v2 import format as F
from xlpy.stream.v2.writer import V2Writer


def read_legacy(data: bytes, width: int = 8) -> list[Record]:
    return list(LegacyReader(ByteSource(io.BytesIO(data)), width=width).records())


def memory(records: list[Record]) -> dict[int, bytes]:
    """pfn → last page content sent, over every batch."""
    mem: dict[int, bytes] = {}
    for r in records:
        if isinstance(r, PageBatch):
            ent = r.entry_array()
            nib = (ent >> np.uint64(28)) & np.uint64(0xF)
            data_pfns = (ent & np.uint64(LF.PFN_MASK))[nib < 0xD]
            assert r.data is not None
            pages = bytes(r.data)
            for i, pfn in enumerate(data_pfns.tolist()):
                mem[pfn] = pages[i * 4096 : (i + 1) * 4096]
    return mem


def check_conversion(v: V2Guest, legacy: bytes, profile: SenderProfile) -> None:
    recs = read_legacy(legacy, profile.width)
    g = v.guest
    # pages, byte for byte
    mem = memory(recs)
    populated = np.flatnonzero(g.populated)
    assert sorted(mem) == populated.tolist()
    want = g.pages(populated.astype(np.uint64), v.final_epoch)
    got = np.frombuffer(b"".join(mem[p] for p in populated.tolist()), np.uint8).reshape(-1, 4096)
    assert np.array_equal(got, want)
    assert all(r.count <= LF.MAX_BATCH_SIZE for r in recs if isinstance(r, PageBatch))
    # framing
    if profile.toolstack == "xl":
        hdr = recs[0]
        assert isinstance(hdr, XlHeader)
        assert not hdr.mandatory_flags & LF.XL_MANDATORY_FLAG_STREAMv2
        assert hdr.config == v.config
    elif profile.toolstack == "xend":
        assert isinstance(recs[0], XendHeader)
        # HVM: vcpus from the context's CPU records (the model has none: vcpu0 alone)
        nv = v.vcpus if v.kind == "pv" or v.config else 1
        assert b"(vcpus %d)" % nv in recs[0].config
        if v.config:
            assert recs[0].config.startswith(b"(domain (name guest-A) (memory 8)")
    else:
        assert not isinstance(recs[0], XlHeader | XendHeader)
    # end-of-checkpoint lists
    ckpts = max(1, v.final_epoch + 1) if profile.remus else 1
    assert sum(isinstance(r, LastCheckpoint) for r in recs) == (
        1 if profile.version >= (4, 1) and not profile.remus else 0
    )
    blobs = [r.blob for r in recs if isinstance(r, Toolstack)]
    assert len(blobs) == (ckpts if profile.has_toolstack_chunk else 0)
    for blob in blobs:
        if v.physmap:
            assert blob[:8] == struct.pack("<II", 1, 1)
            assert blob[36:45] == b"vga.vram\0"
            assert len(blob) == 8 + 28 + 9 + (4 if profile.width == 8 else 0)
        else:
            assert blob == struct.pack("<II", 1, 0)
    assert sum(isinstance(r, TscInfo) for r in recs) == 1
    vinfo = [r for r in recs if isinstance(r, VcpuInfo)]
    assert len(vinfo) == ckpts
    # tails
    if v.kind == "pv":
        tails = [r for r in recs if isinstance(r, PvTail)]
        assert len(tails) == ckpts
        tail = tails[-1]
        assert vinfo[-1].online_vcpus() == list(range(v.vcpus))
        ext = next(r for r in recs if isinstance(r, PvExtInfo))
        assert ext.vcpu_context == g.vcpu_context(0, 0)
        assert ext.extv
        assert ext.xcnt == (len(v.xsave_areas[0]) + 16 if profile.has_xsave else None)
        for vs in tail.vcpus:
            assert vs.context == g.vcpu_context(vs.vcpu_id, v.final_epoch)
            assert vs.ext == g.ext_vcpu_context(vs.vcpu_id)[:72] + bytes(56)
            if profile.has_xsave:
                assert vs.xsave is not None
                assert vs.xsave.data == v.xsave_areas[vs.vcpu_id]
                assert vs.xsave.xfeature_mask == XCR0_FP_SSE
            else:
                assert vs.xsave is None
        assert tail.shared_info == g.shared_info(v.final_epoch)
    else:
        htails = [r for r in recs if isinstance(r, HvmTail)]
        assert len(htails) == ckpts
        assert htails[-1].context == g.hvm_context(v.final_epoch)
        top = g.p2m_size
        assert (htails[-1].ioreq_pfn, htails[-1].bufioreq_pfn, htails[-1].store_pfn) == (
            top - 1,
            top - 2,
            top - 3,
        )
        chunks = {r.chunk_id: r.value for r in recs if isinstance(r, HvmParamChunk)}
        assert chunks[LF.XC_SAVE_ID_HVM_IDENT_PT] == 0xFEFFC000
        assert chunks[LF.XC_SAVE_ID_HVM_VM86_TSS] == 0xFEFFD000
        assert (LF.XC_SAVE_ID_HVM_CONSOLE_PFN in chunks) == (profile.version >= (4, 1))
        assert (LF.XC_SAVE_ID_HVM_IOREQ_SERVER_PFN in chunks) == (profile.version >= (4, 5))
        qemu = [r for r in recs if isinstance(r, QemuRecord)]
        if profile.toolstack == "bare":
            assert not qemu
        else:
            assert len(qemu) == ckpts and qemu[-1].data == v.qemu


def _profiles(kind: str, remus: bool) -> list[SenderProfile]:
    out = []
    for sender, toolstack in itertools.product(SENDERS, TOOLSTACKS):
        p = SenderProfile(sender=sender, toolstack=toolstack, mode="remus" if remus else "plain")
        try:
            p.check(GuestSpec(kind=kind, pages=300))  # type: ignore[arg-type]
        except UsageError:
            continue
        out.append(p)
    return out


INPUTS = [
    ("pv64", "pv", 8, "libxc"),
    ("pv64", "pv", 8, "xl"),
    ("pv32", "pv", 4, "libxl"),
    ("hvm", "hvm", 8, "libxc"),
    ("hvm", "hvm", 8, "libxl"),
    ("hvm", "hvm", 8, "xl"),
]


@pytest.mark.parametrize(("name", "kind", "gw", "framing"), INPUTS, ids=lambda x: str(x))
@pytest.mark.parametrize("width", [8, 4])
def test_every_profile_reads_back_the_same_guest(
    name: str, kind: str, gw: int, framing: str, width: int
) -> None:
    v = make_v2(kind, guest_width=gw, framing=framing, batch=1500)
    for p in _profiles(kind, remus=False):
        p = SenderProfile(sender=p.sender, toolstack=p.toolstack, width=width)
        legacy, warned = to_legacy(v.data, sender=p.sender, toolstack=p.toolstack, width=width)
        check_conversion(v, legacy, p)
        assert any("CPUID policy" in w for w in warned)
        if kind == "pv" and p.version < (4, 1):
            assert any("xsave" in w for w in warned)


@pytest.mark.parametrize(("kind", "framing"), [("pv", "libxl"), ("hvm", "libxl"), ("pv", "libxc")])
def test_checkpointed_v2_becomes_remus(kind: str, framing: str) -> None:
    v = make_v2(kind, framing=framing, checkpoints=3, qemu=framing == "libxl")
    for p in _profiles(kind, remus=True):
        if kind == "hvm" and framing == "libxc" and p.toolstack != "bare":
            continue
        legacy, warned = to_legacy(v.data, sender=p.sender, toolstack=p.toolstack)
        check_conversion(v, legacy, p)
        assert any("TSC_INFO" in w for w in warned)


def test_hvm_without_emulator_context_cannot_be_framed_with_qemu() -> None:
    v = make_v2("hvm", framing="libxc", qemu=False)
    with pytest.raises(NotRepresentable, match="emulator context"):
        to_legacy(v.data, sender="xen-4.3", toolstack="xl")
    legacy, _ = to_legacy(v.data, sender="xen-4.3", toolstack="bare")
    check_conversion(v, legacy, SenderProfile(sender="xen-4.3"))


def test_foreign_trailer() -> None:
    v = make_v2("pv", framing="libxc")
    legacy, _ = to_legacy(v.data, sender="xen-4.3", toolstack="xl", trailer="foreign")
    recs = read_legacy(legacy)
    assert isinstance(recs[-1], Trailer)
    assert recs[-1].data.startswith(b"domain is yours")


# -- round trip through the legacy → v2 converter ------------------------------------


def _round_trip_cases() -> list[tuple[str, SenderProfile, GuestSpec, str]]:
    out = []
    for kind, gw in (("pv", 8), ("pv", 4), ("hvm", 8)):
        spec = GuestSpec(kind=kind, pages=300, seed=gw, guest_width=gw, vcpus=2)  # type: ignore[arg-type]
        for mode, fmt in itertools.product(("plain", "remus"), ("libxc", "libxl")):
            for p in _profiles(kind, remus=mode == "remus"):
                if kind == "hvm" and mode == "remus" and fmt == "libxc" and p.toolstack != "bare":
                    continue  # libxc v2 has no per-checkpoint QEMU data: see the test below
                p = SenderProfile(
                    sender=p.sender,
                    toolstack=p.toolstack,
                    mode=mode,
                    checkpoints=3 if mode == "remus" else 1,
                )
                name = f"{kind}{gw * 8}-{p.sender}-{p.toolstack}-{mode}-{fmt}"
                out.append((name, p, spec, fmt))
    return out


def _legacy_to_v2(data: bytes, fmt: str) -> bytes:
    out = io.BytesIO()
    legacy_to_v2(ByteSource(io.BytesIO(data)), out, fmt=fmt)
    return out.getvalue()


@pytest.mark.parametrize(
    ("name", "profile", "spec", "fmt"), _round_trip_cases(), ids=[c[0] for c in _round_trip_cases()]
)
def test_legacy_v2_legacy_v2_is_identical(
    name: str, profile: SenderProfile, spec: GuestSpec, fmt: str
) -> None:
    src = io.BytesIO()
    generate(profile, spec, src)
    v2a = _legacy_to_v2(src.getvalue(), fmt)
    legacy, _ = to_legacy(v2a, sender=profile.sender, toolstack=profile.toolstack)
    v2b = _legacy_to_v2(legacy, fmt)
    assert v2b == v2a


def test_libxc_remus_hvm_has_no_per_checkpoint_qemu() -> None:
    profile = SenderProfile(sender="xen-4.3", toolstack="xl", mode="remus", checkpoints=2)
    src = io.BytesIO()
    generate(profile, GuestSpec(kind="hvm", pages=300), src)
    with pytest.raises(NotRepresentable, match="emulator context"):
        to_legacy(_legacy_to_v2(src.getvalue(), "libxc"), sender="xen-4.3", toolstack="xl")


# -- refusals and drops --------------------------------------------------------------


def _stream(kind: str = "pv", **kw: object) -> bytes:
    return make_v2(kind, framing="libxc", pages=64 if kind == "pv" else 300, **kw).data  # type: ignore[arg-type]


def _patch_record(data: bytes, rec_type: int, body: bytes) -> bytes:
    """``data`` with one more libxc record inserted just before the END record."""
    end = F.RHDR_FORMAT.pack(F.REC_TYPE_END, 0)
    cut = data.rindex(end)
    rec = F.RHDR_FORMAT.pack(rec_type, len(body)) + body + bytes(F.padding_for(len(body)))
    return data[:cut] + rec + data[cut:]


def test_too_many_vcpus_for_a_4_1_sender() -> None:
    data = _stream(vcpus=65)
    with pytest.raises(NotRepresentable, match="at most 64 vcpus"):
        to_legacy(data, sender="xen-4.1", toolstack="bare")
    legacy, _ = to_legacy(data, sender="xen-4.2", toolstack="bare")
    vi = next(r for r in read_legacy(legacy) if isinstance(r, VcpuInfo))
    assert vi.max_vcpu_id == 64 and len(vi.online_map) == 2


def test_xsave_state_beyond_sse_needs_a_sender_with_xsave() -> None:
    data = _stream(xcr0=0x7)
    with pytest.raises(NotRepresentable, match="xsave") as e:
        to_legacy(data, sender="xen-4.0", toolstack="bare")
    assert e.value.field == "x86_pv_vcpu_xsave"
    legacy, _ = to_legacy(data, sender="xen-4.1", toolstack="bare")
    tail = next(r for r in read_legacy(legacy) if isinstance(r, PvTail))
    assert all(v.xsave is not None and v.xsave.xfeature_mask == 7 for v in tail.vcpus)


def test_non_zero_pv_msr_is_refused() -> None:
    body = struct.pack("<II", 1, 0) + struct.pack("<IIQ", 0xC0000103, 0, 1)
    data = _patch_record(_stream(), F.REC_TYPE_X86_PV_VCPU_MSRS, body)
    with pytest.raises(NotRepresentable, match="MSR 0xc0000103") as e:
        to_legacy(data, sender="xen-4.5", toolstack="bare")
    assert e.value.offset is not None and e.value.record is not None


@pytest.mark.parametrize(
    ("rec_type", "match"),
    [(F.REC_TYPE_CHECKPOINT_DIRTY_PFN_LIST, "Checkpoint dirty pfn list"), (0x7F, "reserved")],
)
def test_records_without_legacy_form_are_refused(rec_type: int, match: str) -> None:
    with pytest.raises(NotRepresentable, match=match):
        to_legacy(_patch_record(_stream(), rec_type, bytes(8)), sender="xen-4.5", toolstack="bare")


def test_optional_records_are_dropped_with_a_warning() -> None:
    data = _patch_record(_stream(), F.REC_TYPE_OPTIONAL | 0x42, b"x")
    legacy, warned = to_legacy(data, sender="xen-4.5", toolstack="bare")
    assert any("optional" in w for w in warned)
    assert legacy == to_legacy(_stream(), sender="xen-4.5", toolstack="bare")[0]


def test_page_types_newer_than_the_sender_are_refused() -> None:
    data = _stream()
    w = io.BytesIO()
    V2Writer(w).page_data_pfns([3], b"", [F.XEN_DOMCTL_PFINFO_BROKEN])
    end = F.RHDR_FORMAT.pack(F.REC_TYPE_END, 0)
    cut = data.rindex(end)
    broken = data[:cut] + w.getvalue() + data[cut:]
    with pytest.raises(NotRepresentable, match="page type 0xd"):
        to_legacy(broken, sender="xen-4.2", toolstack="bare")
    legacy, _ = to_legacy(broken, sender="xen-4.3", toolstack="bare")
    batches = [r for r in read_legacy(legacy) if isinstance(r, PageBatch)]
    assert batches[-1].entries == struct.pack("<Q", 0xD0000003)


def test_pvh_and_legacy_input_are_refused() -> None:
    w = io.BytesIO()
    v2 = V2Writer(w)
    v2.image_header()
    v2.domain_header(F.DHDR_TYPE_X86_PVH)
    v2.end()
    with pytest.raises(NotRepresentable, match="PVH"):
        to_legacy(w.getvalue(), sender="xen-4.5", toolstack="bare")
    src = io.BytesIO()
    generate(SenderProfile(), GuestSpec(kind="pv", pages=16), src)
    with pytest.raises(StreamMalformed):
        to_legacy(src.getvalue(), sender="xen-4.5", toolstack="bare")


def test_bad_profile_is_a_usage_error_before_reading() -> None:
    with pytest.raises(UsageError):
        to_legacy(b"", sender="xen-3.4", toolstack="bare")
    with pytest.raises(UsageError, match="xl framing"):
        to_legacy(b"", sender="xen-4.0", toolstack="xl")


def test_memory_stays_bounded_by_a_batch() -> None:
    v = make_v2("pv", framing="libxc", pages=4096, batch=256, vcpus=1)
    tracemalloc.start()
    try:
        out = io.BytesIO()
        v2_to_legacy(
            ByteSource(io.BytesIO(v.data)),
            cast(BinaryIO, _Sink()),
            sender="xen-4.3",
            toolstack="bare",
            warn=lambda _: None,
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.getvalue() == b""
    # input 16 MiB of pages, records of 1 MiB: a few records' worth at most
    assert peak < 6 << 20, peak
    assert len(v.data) > 16 << 20


def test_hvm_vcpus_come_from_the_contexts_cpu_records() -> None:
    v = make_v2("hvm", framing="libxc", hvm_cpus=(0, 1, 3))
    legacy, _ = to_legacy(v.data, sender="xen-4.3", toolstack="bare")
    recs = read_legacy(legacy)
    vi = next(r for r in recs if isinstance(r, VcpuInfo))
    assert vi.max_vcpu_id == 3 and vi.online_vcpus() == [0, 1, 3]
    tail = next(r for r in recs if isinstance(r, HvmTail))
    assert tail.context == cpu_records((0, 1, 3)) + v.guest.hvm_context(0)


class _Sink(io.RawIOBase):
    """An output that keeps nothing (so only the converter's memory is measured)."""

    def writable(self) -> bool:
        return True

    def write(self, b: object) -> int:
        return memoryview(b).nbytes  # type: ignore[arg-type]


# -- command line --------------------------------------------------------------------


def test_cli_to_legacy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from xlpy.cli import main as xlpy_main

    v = make_v2("hvm", framing="xl")
    src = tmp_path / "image.save"
    src.write_bytes(v.data)
    dst = tmp_path / "legacy"
    args = ["convert", "--to", "legacy", "-i", str(src), "-o", str(dst), "--sender", "xen-4.3"]
    assert xlpy_main([*args, "--toolstack", "xl", "--trailer", "foreign", "-w", "64"]) == 0
    want, _ = to_legacy(v.data, sender="xen-4.3", toolstack="xl", trailer="foreign")
    assert dst.read_bytes() == want
    assert "xlpy convert: warning: x86 CPUID policy record dropped" in capsys.readouterr().err
    # not representable: exit 1, the old output is left alone, no temporary file remains
    bad = make_v2("hvm", framing="libxc", qemu=False)
    src.write_bytes(bad.data)
    assert xlpy_main([*args, "--toolstack", "xl"]) == 1
    assert "emulator context" in capsys.readouterr().err
    assert dst.read_bytes() == want
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.save", "legacy"]


def test_progress_events() -> None:
    v = make_v2("pv", framing="libxl", checkpoints=2)
    events: list[dict[str, object]] = []
    v2_to_legacy(
        ByteSource(io.BytesIO(v.data)),
        io.BytesIO(),
        sender="xen-4.5",
        toolstack="xl",
        progress=events.append,
        warn=lambda _: None,
    )
    assert events[-1]["phase"] == "done"
    assert events[-1]["checkpoint"] == 2
    assert events[-1]["bytes"] == len(v.data)
    assert events[-1]["pages"] == 300 + len(v.guest.dirty(1))


def test_cut_remus_input_gives_a_cut_remus_stream() -> None:
    from xlpy.stream.v2.reader import V2Reader
    from xlpy.stream.v2.records import V2Record

    v = make_v2("pv", framing="libxl", checkpoints=3)
    marks = [
        e.offset
        for e in V2Reader(ByteSource(io.BytesIO(v.data))).elements()
        if isinstance(e, V2Record) and e.layer == "libxc" and e.type == F.REC_TYPE_CHECKPOINT
    ]
    cut = v.data[: marks[2] - 5000]  # inside the third checkpoint's vcpu records
    legacy, warned = to_legacy(cut, sender="xen-4.3", toolstack="xl")
    assert any("ends inside checkpoint 3" in w for w in warned)
    full, _ = to_legacy(v.data, sender="xen-4.3", toolstack="xl")
    assert full.startswith(legacy) and len(legacy) < len(full)
    out = io.BytesIO()
    report = legacy_to_v2(ByteSource(io.BytesIO(legacy)), out, fmt="libxl")
    assert report.checkpoints == 2 and report.abandoned is not None
    with pytest.raises(StreamTruncated):
        to_legacy(v.data[: marks[0] - 5000], sender="xen-4.3", toolstack="xl")


# -- property: arbitrary batches keep their pages -------------------------------------

_DATA_TYPES = [0x0, 0x1, 0x2, 0x3, 0x4, 0x9, 0xA, 0xB, 0xC]


def _batches_stream(batches: list[list[tuple[int, int]]]) -> tuple[io.BytesIO, dict[int, bytes]]:
    """An HVM libxc image with one PAGE_DATA record per list of ``(pfn, type nibble)``,
    and the pages each pfn ends with."""
    g = Guest(GuestSpec(kind="hvm", pages=2048, seed=5))
    buf = io.BytesIO()
    w = V2Writer(buf)
    w.image_header()
    w.domain_header(F.DHDR_TYPE_X86_HVM)
    want: dict[int, bytes] = {}
    for b in batches:
        pfns = np.array([p for p, _ in b], dtype=np.uint64)
        types = np.array([t << 28 for _, t in b], dtype=np.uint64)
        data = np.isin(types >> np.uint64(28), _DATA_TYPES)
        pages = g.pages(pfns[data], 0)
        w.page_data_pfns(pfns, pages.reshape(-1).data, types)
        for pfn, page in zip(pfns[data].tolist(), pages, strict=True):
            want[pfn] = page.tobytes()
    w.hvm_context(g.hvm_context(0))
    w.hvm_params([(STORE, 2047)])
    w.end()
    return buf, want


@settings(max_examples=40, deadline=None)
@given(
    batches=st.lists(
        st.lists(
            st.tuples(st.integers(0, 2047), st.sampled_from([*_DATA_TYPES, 0xE, 0xF])),
            min_size=1,
            max_size=2500,
        ),
        min_size=1,
        max_size=3,
    ),
    sender=st.sampled_from(SENDERS),
    width=st.sampled_from([4, 8]),
)
def test_arbitrary_batches_keep_their_pages(
    batches: list[list[tuple[int, int]]], sender: str, width: int
) -> None:
    buf, want = _batches_stream(batches)
    has_xalloc = any(t == 0xE for b in batches for _, t in b)
    if has_xalloc and sender in ("xen-4.0", "xen-4.1"):
        with pytest.raises(NotRepresentable, match="page type 0xe"):
            to_legacy(buf.getvalue(), sender=sender, toolstack="bare", width=width)
        return
    legacy, _ = to_legacy(buf.getvalue(), sender=sender, toolstack="bare", width=width)
    recs = read_legacy(legacy, width)
    assert memory(recs) == want
    top = max(p for b in batches for p, _ in b)
    header = LegacyReader(ByteSource(io.BytesIO(legacy)), width=width, guest="hvm").read_header()
    assert header.p2m_size == top + 1
    v2 = io.BytesIO()
    legacy_to_v2(ByteSource(io.BytesIO(legacy)), v2, fmt="libxc", width=width)
    again, _ = to_legacy(v2.getvalue(), sender=sender, toolstack="bare", width=width)
    assert memory(read_legacy(again, width)) == want


def test_checkpoint_without_vcpu_state_is_not_representable() -> None:
    """v2 may leave a checkpoint's vcpu records out; every legacy tail needs them."""
    buf = io.BytesIO()
    w = V2Writer(buf)
    w.image_header()
    w.domain_header(F.DHDR_TYPE_X86_PV)
    w.x86_pv_info(8, 4)
    w.x86_pv_p2m_frames(0, 15, [1])
    w.page_data_pfns([0], bytes(4096))
    w.checkpoint()
    w.end()
    with pytest.raises(NotRepresentable, match="X86_PV_VCPU_BASIC") as e:
        to_legacy(buf.getvalue(), sender="xen-4.3", toolstack="bare")
    assert e.value.field == "vcpus"


# -- the kernel path of the first checkpoint's pages --------------------------------------

#: Records of more than one legacy batch, an XTAB-only stretch, pages of every kind.
_KERNEL_BATCHES = [
    [(p, _DATA_TYPES[p % 9]) for p in range(1500)] + [(p, 0xF) for p in range(1500, 2600)],
    [(p, 0xF if p % 3 else 0x0) for p in range(0, 2048, 2)],
]


def _convert_through(data: bytes, kind_in: str, kind_out: str, tmp_path: Path) -> bytes:
    """``v2_to_legacy`` from a BytesIO, file or pipe to a BytesIO, file or pipe."""
    with source_of(kind_in, data, tmp_path) as src:
        if kind_out == "bytesio":
            out = io.BytesIO()
            v2_to_legacy(src, out, sender="xen-4.3", toolstack="bare", warn=lambda m: None)
            return out.getvalue()
        with fd_output(kind_out, tmp_path) as (fd, got), open(fd, "wb", closefd=False) as f:
            v2_to_legacy(src, f, sender="xen-4.3", toolstack="bare", warn=lambda m: None)
        return got[0]


@pytest.mark.parametrize("kind_in", ["file", "pipe"])
@pytest.mark.parametrize("kind_out", ["bytesio", "file", "pipe"])
def test_kernel_moves_write_the_same_stream(kind_in: str, kind_out: str, tmp_path: Path) -> None:
    """Pages spliced into the spool and the spool sent to the output in the kernel give
    the bytes that reading and writing them in Python gives."""
    data = _batches_stream(_KERNEL_BATCHES)[0].getvalue()
    want = _convert_through(data, "bytesio", "bytesio", tmp_path)
    assert _convert_through(data, kind_in, kind_out, tmp_path) == want
    assert memory(read_legacy(want)) == _batches_stream(_KERNEL_BATCHES)[1]


@pytest.mark.parametrize("kind_in", ["bytesio", "file", "pipe"])
def test_cut_inside_spooled_pages_is_the_record_body_truncation(
    kind_in: str, tmp_path: Path
) -> None:
    """A stream cut inside a PAGE_DATA record's pages fails as reading the whole body
    would: the body's length, what was left of it, where it starts, the record."""
    from xlpy.stream.v2.reader import V2Reader

    data = _batches_stream(_KERNEL_BATCHES)[0].getvalue()
    cut = data[: len(data) // 2]
    with pytest.raises(StreamTruncated) as plain:
        for _ in V2Reader(ByteSource(io.BytesIO(cut))).elements():
            pass
    with pytest.raises(StreamTruncated) as ei:
        _convert_through(cut, kind_in, "bytesio", tmp_path)
    got, want = ei.value, plain.value
    assert (got.message, got.offset, got.field, got.record) == (
        want.message,
        want.offset,
        want.field,
        want.record,
    )
    assert "record.body needs" in got.message


def test_v2_reader_page_sink_places_the_pages(tmp_path: Path) -> None:
    """A page sink takes PAGE_DATA page bytes where its placement says; the record keeps
    the header and entries, and ``placed`` and ``length`` count the bytes moved."""
    from xlpy.stream.legacy.reader import PagePlacement
    from xlpy.stream.v2.reader import V2Reader
    from xlpy.stream.v2.records import PageData, V2Record

    data = _batches_stream([[(7, 0x0), (8, 0xF), (9, 0x1)]])[0].getvalue()
    path = tmp_path / "pages.bin"
    seen: list[tuple[int, int]] = []
    with open(path, "wb+") as f:

        class Sink:
            def place(self, entries: bytes, width: int, nbytes: int) -> PagePlacement:
                seen.append((len(entries) // width, nbytes))
                return PagePlacement(f.fileno(), ((100, 4096), (9000, 4096)), "pages")

        recs = [
            e
            for e in V2Reader(ByteSource(io.BytesIO(data)), page_sink=Sink()).elements()
            if isinstance(e, V2Record) and e.type == F.REC_TYPE_PAGE_DATA
        ]
    assert seen == [(3, 8192)]
    (rec,) = recs
    assert rec.placed == 8192 and rec.length == 8 + 3 * 8 + 8192
    body = rec.decode()
    assert isinstance(body, PageData) and len(body.pages) == 0 and body.entries.size == 3
    g = Guest(GuestSpec(kind="hvm", pages=2048, seed=5))
    raw = path.read_bytes()
    assert raw[100:4196] == g.pages(np.array([7], np.uint64), 0).tobytes()
    assert raw[9000:13096] == g.pages(np.array([9], np.uint64), 0).tobytes()
