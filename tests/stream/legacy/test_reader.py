"""Legacy reader: spec §16 vectors, every element, detection, checkpoints, inputs."""

from __future__ import annotations

import io
import os
import socket
import struct
import threading

import pytest

from tests.streams import build as B
from xlpy.errors import StreamMalformed, StreamTruncated, UsageError
from xlpy.stream.legacy import format as F
from xlpy.stream.legacy.reader import LegacyReader, data_bearing_count
from xlpy.stream.legacy.records import (
    CheckpointBegin,
    CompressedData,
    EndOfBody,
    HvmParamChunk,
    HvmTail,
    LastCheckpoint,
    P2mFrameList,
    PageBatch,
    PvExtInfo,
    PvTail,
    QemuRecord,
    Record,
    StreamHeader,
    Tmem,
    TmemExtra,
    Toolstack,
    Trailer,
    TscInfo,
    VcpuInfo,
    XendHeader,
    XlHeader,
)
from xlpy.stream.source import ByteSource


def h(s: str) -> bytes:
    return bytes.fromhex(s.replace(" ", ""))


def reader(data: bytes, **kw: object) -> LegacyReader:
    return LegacyReader(ByteSource(io.BytesIO(data)), **kw)  # type: ignore[arg-type]


def chunk(data: bytes, width: int = 8, **kw: object) -> Record:
    r = reader(data, width=width, guest="hvm")
    rec = r.read_chunk(**kw)  # type: ignore[arg-type]
    assert r.source.offset == len(data), "the element reader read too little or too much"
    return rec


def records(data: bytes, **kw: object) -> list[Record]:
    return list(reader(data, **kw).records())


def kinds(recs: list[Record]) -> list[str]:
    return [type(r).__name__ for r in recs]


# --- spec §16 byte vectors ----------------------------------------------------------


def test_vector_last_checkpoint_and_end() -> None:
    assert isinstance(chunk(h("f7 ff ff ff")), LastCheckpoint)
    assert isinstance(chunk(h("00 00 00 00")), EndOfBody)


def test_vector_vcpu_info() -> None:
    rec = chunk(h("fe ff ff ff 01 00 00 00 03 00 00 00 00 00 00 00"))
    assert rec == VcpuInfo(max_vcpu_id=1, online_map=(3,))
    assert isinstance(rec, VcpuInfo) and rec.online_vcpus() == [0, 1]


def test_vector_ident_pt() -> None:
    rec = chunk(h("fd ff ff ff 00 00 00 00 00 c0 ff fe 00 00 00 00"))
    assert rec == HvmParamChunk(chunk_id=F.XC_SAVE_ID_HVM_IDENT_PT, value=0xFEFFC000)


def test_vector_tsc_info() -> None:
    data = h("f9 ff ff ff") + struct.pack("<IQII", 2, 123456789, 2400000, 7)
    assert len(data) == 24
    assert chunk(data) == TscInfo(tsc_mode=2, nsec=123456789, khz=2400000, incarnation=7)


def test_vector_toolstack() -> None:
    rec = chunk(h("ee ff ff ff 08 00 00 00 01 00 00 00 00 00 00 00"))
    assert rec == Toolstack(blob=h("01 00 00 00 00 00 00 00"))


def test_vector_w8_batch_of_two() -> None:
    pg = bytes(range(256)) * 16
    data = h("02 00 00 00") + h("05 00 00 00 00 00 00 00") + h("00 00 00 f0 00 00 00 00") + pg
    rec = chunk(data)
    assert isinstance(rec, PageBatch)
    assert rec.count == 2 and rec.entry_array().tolist() == [5, 0xF0000000]
    assert rec.data is not None and bytes(rec.data) == pg


@pytest.mark.parametrize(
    "text,value", [(b"Qemu", 1970103633), (b"Devi", 1769366852), (b"Remu", 1970103634)]
)
def test_vector_text_read_as_chunk_header(text: bytes, value: int) -> None:
    with pytest.raises(StreamMalformed) as ei:
        chunk(text + b"DeviceModel")
    assert (ei.value.field, ei.value.value, ei.value.offset) == ("chunk_header", value, 0)


def test_vector_plain_s_post_hvm_skeleton() -> None:
    data = B.hvm_image()
    recs = records(data)
    assert kinds(recs) == [
        "StreamHeader", "CheckpointBegin", "TscInfo", "PageBatch", "VcpuInfo",
        "HvmParamChunk", "Toolstack", "LastCheckpoint", "EndOfBody", "HvmTail", "QemuRecord",
    ]  # fmt: skip
    assert [r.index for r in recs] == list(range(len(recs)))
    tail = recs[-2]
    assert tail == HvmTail(ioreq_pfn=0xFEFFE, bufioreq_pfn=0xFEFFD, store_pfn=0xFEFFC,
                           context=b"HVMCTX")  # fmt: skip
    assert recs[-1] == QemuRecord(signature=F.QEMU_SIG_0002, data=b"QEVM\0\0\0\3qemu")
    assert recs[-1].offset == len(data) - 21 - 4 - 12


def test_vector_s_pre_xend_hvm() -> None:
    body = B.batch([1], 8) + B.vcpu_info(0, [1]) + B.hvm_param(-3, 5) + B.i32(0)
    qemu = b"QEVM" + b"x" * 100
    data = B.xend_header() + B.uw(16, 8) + body + B.hvm_tail() + B.qemu_to_eof(qemu)
    recs = records(data)
    assert isinstance(recs[0], XendHeader) and recs[0].config.startswith(b"(vm")
    assert recs[-1] == QemuRecord(signature=F.QEMU_SIG_TO_EOF, data=qemu)


# --- detection ------------------------------------------------------------------------


@pytest.mark.parametrize("width", [4, 8])
def test_detects_width_and_guest_hvm(width: int) -> None:
    r = reader(B.hvm_image(width))
    hdr = r.read_header()
    assert (r.width, r.guest, hdr.p2m_size, hdr.width) == (width, "hvm", B.HVM_P2M, width)


@pytest.mark.parametrize("width,guest_width", [(4, 4), (8, 8), (8, 4)])
def test_detects_width_and_guest_pv(width: int, guest_width: int) -> None:
    recs = records(B.pv_image(width, guest_width, xcnt=48))
    r = recs[0]
    assert isinstance(r, StreamHeader) and r.width == width
    ext, frames = recs[1], recs[2]
    assert isinstance(ext, PvExtInfo) and ext.guest_width == guest_width
    assert ext.extv and ext.xcnt == 48
    assert isinstance(frames, P2mFrameList)
    assert len(frames.entries) == -(-B.PV_P2M // (4096 // guest_width))
    tail = recs[-1]
    assert isinstance(tail, PvTail)
    assert tail.unmapped == (7,) and [v.vcpu_id for v in tail.vcpus] == [0, 1]
    assert all(v.ext is not None and v.xsave is not None for v in tail.vcpus)
    assert len(tail.vcpus[0].context) == (2800 if guest_width == 4 else 5168)
    assert tail.vcpus[1].xsave is not None and len(tail.vcpus[1].xsave.data) == 32


def test_guest_from_xl_and_xend_config() -> None:
    # A PV image without ext-info whose first frame pfn looks like a page count:
    # only the config can tell.
    pv = B.uw(16, 8) + B.uw(3, 8) + B.batch([1], 8) + B.i32(0) + B.pv_tail(8, 8, extv=False)
    r = reader(B.xl_header(b'type = "pv"\n') + pv)
    assert isinstance(r.read_framing(), XlHeader)
    r.read_header()
    assert r.guest == "pv"
    r = reader(B.xend_header(b"(vm (image (linux (kernel x))))") + pv)
    r.read_framing()
    r.read_header()
    assert r.guest == "pv"
    assert reader(pv).read_header() and reader(pv).guest is None  # not read yet
    r = reader(pv)
    r.read_header()
    assert r.guest == "hvm"  # what the bytes alone suggest: hence --guest


def test_guest_undecidable_is_a_usage_error_and_override_works() -> None:
    pv = B.uw(16, 8) + B.uw(0x12345, 8) + B.batch([1], 8) + B.i32(0) + B.pv_tail(8, 8, extv=False)
    with pytest.raises(UsageError, match="--guest"):
        reader(pv).read_header()
    recs = records(pv, guest="pv")
    assert isinstance(recs[1], P2mFrameList) and recs[1].entries == (0x12345,)
    assert isinstance(recs[-1], PvTail)


def test_width_override_beats_detection() -> None:
    data = B.hvm_image(4)
    r = reader(data, width=8, guest="hvm")
    assert r.read_header().p2m_size == B.HVM_P2M | (0xFFFFFFF9 << 32)  # p2m_size + TSC id
    assert isinstance(records(data, width=4)[-1], QemuRecord)


def test_unknown_ext_info_block_is_skipped_and_kept() -> None:
    ext = B.ext_info(8, 8, extra=[(b"zzzz", b"abc")])
    data = B.uw(16, 8) + ext + B.frame_list(16, 8, 8) + B.i32(0) + B.pv_tail(8, 8)
    recs = records(data)
    assert isinstance(recs[1], PvExtInfo)
    assert [b.block_id for b in recs[1].blocks] == [b"vcpu", b"extv", b"zzzz"]
    assert isinstance(recs[-1], PvTail)


def test_pv_without_ext_info_uses_toolstack_width() -> None:
    data = B.uw(1024, 4) + B.uw(0x4321, 4) + B.i32(0) + B.pv_tail(4, 4, extv=False)
    recs = records(data, guest="pv")
    assert isinstance(recs[1], P2mFrameList) and recs[1].entries == (0x4321,)


# --- page batches --------------------------------------------------------------------


def test_type_nibbles_and_4_0_receiver() -> None:
    ents = [1, 0xD0000002, 0xE0000003, 0xF0000000, 0x50000004, 0x90000005]
    body = B.i32(len(ents)) + b"".join(B.uw(e, 8) for e in ents)
    rec = chunk(body + B.page(1) * 3)
    assert isinstance(rec, PageBatch) and rec.data is not None and len(rec.data) == 3 * 4096
    assert data_bearing_count(rec.entries, 8) == 3
    rec = chunk(body + B.page(1) * 5, dataless_nibbles=F.DATALESS_NIBBLES_4_0)
    assert isinstance(rec, PageBatch) and rec.data is not None and len(rec.data) == 5 * 4096


def test_w8_entries_ignore_the_upper_half() -> None:
    rec = chunk(B.i32(1) + B.uw(0xFFFFFFFF_00000001, 8) + B.page(9))
    assert isinstance(rec, PageBatch) and rec.data is not None and len(rec.data) == 4096


@pytest.mark.parametrize("count", [0x401, -21, -1000, 2**31 - 1])
def test_bad_chunk_header(count: int) -> None:
    with pytest.raises(StreamMalformed) as ei:
        chunk(B.i32(count) + b"\0" * 64)
    assert ei.value.field == "chunk_header" and ei.value.value == count


def test_4_0_receiver_rejects_newer_ids_and_big_vcpu_maps() -> None:
    with pytest.raises(StreamMalformed) as ei:
        chunk(B.i32(-9), known_ids=F.KNOWN_IDS_4_0)
    assert ei.value.value == -9
    with pytest.raises(StreamMalformed) as ei:
        chunk(B.vcpu_info(64, [1, 1]), max_vcpu_id=F.MAX_VCPUS_4_0 - 1)
    assert ei.value.field == "vcpu_info.max_vcpu_id"


def test_format_b_batch_has_no_data() -> None:
    rec = chunk(B.batch([1, 2, 0xF0000000], 8, data=False), compressed=True)
    assert isinstance(rec, PageBatch) and rec.data is None and rec.count == 3


def test_reuse_buffers_shares_one_buffer() -> None:
    data = B.batch([1], 8) + B.batch([2], 8)
    r = reader(data, width=8, guest="hvm", reuse_buffers=True)
    a = r.read_chunk()
    assert isinstance(a, PageBatch) and a.data is not None and bytes(a.data) == B.page(1)
    b = r.read_chunk()
    assert isinstance(b, PageBatch) and b.data is not None and bytes(b.data) == B.page(2)
    assert bytes(a.data) == B.page(2)  # documented: valid only until the next element
    r = reader(data, width=8, guest="hvm")
    a, b = r.read_chunk(), r.read_chunk()
    assert isinstance(a, PageBatch) and a.data is not None and bytes(a.data) == B.page(1)


# --- chunks --------------------------------------------------------------------------


def test_compressed_data_length_is_w_sized() -> None:
    for width in (4, 8):
        rec = chunk(B.compressed_data(b"\x80" + B.page(3), width), width=width)
        assert rec == CompressedData(data=b"\x80" + B.page(3))


def test_tmem_and_tmem_extra() -> None:
    tmem = B.i32(-5) + struct.pack("<7I", 1, 2, 0xFFFFFFFF, 3, 4, 5, 0xFFFFFFFF)
    # pool 0: 2 pages announced, one sent then the oid terminator; pool 1: 16 KiB pages
    tmem += struct.pack("<III2Q", 0, 1, 2, 10, 11) + struct.pack("<3QI", 1, 2, 3, 4)
    tmem += B.page(0x77) + struct.pack("<3Q", *(2**64 - 1,) * 3)
    tmem += struct.pack("<III2Q", 1, 1 | (2 << 4), 1, 12, 13)
    tmem += struct.pack("<3QI", 5, 6, 7, 8) + b"q" * 16384 + B.u32(0xFFFFFFFF)
    rec = chunk(tmem)
    assert isinstance(rec, Tmem)
    assert (rec.version, rec.max_pools, rec.client_flags, rec.weight, rec.cap) == (1, 2, 3, 4, 5)
    p0, p1 = rec.pools
    assert p0.terminated and len(p0.pages) == 1 and p0.pages[0].oid == (1, 2, 3)
    assert p0.uuid == (10, 11) and p0.n_pages == 2
    assert not p1.terminated and len(p1.pages[0].data) == 16384 and p1.pages[0].index == 8
    # Only an all-ones oid ends the list: oid[0] = ~0 alone is an ordinary page.
    one = B.i32(-5) + struct.pack("<7I", 1, 1, 0xFFFFFFFF, 0, 0, 0, 0xFFFFFFFF)
    one += struct.pack("<III2Q", 0, 0, 1, 0, 0) + struct.pack("<3QI", 2**64 - 1, 0, 0, 9)
    one += B.page(5) + B.u32(0xFFFFFFFF)
    rec = chunk(one)
    assert isinstance(rec, Tmem) and not rec.pools[0].terminated
    assert rec.pools[0].pages[0].oid == (2**64 - 1, 0, 0)
    extra = B.i32(-6) + struct.pack("<I3QI", 1, 2, 3, 4, 5) + B.u32(0xFFFFFFFF)
    rec = chunk(extra)
    assert isinstance(rec, TmemExtra) and rec.entries[0].oid == (2, 3, 4)


def test_every_hvm_param_id() -> None:
    for cid in sorted(F.HVM_PARAM_CHUNKS):
        assert chunk(B.hvm_param(cid, 0x1234, pad=9)) == HvmParamChunk(
            chunk_id=cid, value=0x1234, pad=9
        )


# --- checkpoints, QEMU records, trailers ------------------------------------------------


def remus_hvm(checkpoints: int, *, compress: bool) -> bytes:
    out = B.uw(B.HVM_P2M, 8)
    for k in range(checkpoints):
        if k == 0:
            out += B.batch([1, 2], 8) + B.vcpu_info(0, [1])
            out += B.i32(-13) if compress else b""
        elif compress:
            out += B.batch([1, 0xF0000000, 2], 8, data=False) + B.vcpu_info(0, [1])
            out += B.compressed_data(b"\0" + b"\x80" + B.page(k), 8)
        else:
            out += B.batch([2], 8) + B.vcpu_info(0, [1])
        out += B.i32(0) + B.hvm_tail(b"ctx%d" % k) + B.qemu_remus(b"QEVM%d" % k)
    return out


@pytest.mark.parametrize("compress", [False, True])
def test_remus_checkpoints(compress: bool) -> None:
    recs = records(remus_hvm(3, compress=compress))
    begins = [r for r in recs if isinstance(r, CheckpointBegin)]
    assert [(b.number, b.compressed) for b in begins] == [
        (0, False), (1, compress), (2, compress)
    ]  # fmt: skip
    qemus = [r for r in recs if isinstance(r, QemuRecord)]
    assert [q.data for q in qemus] == [b"QEVM0", b"QEVM1", b"QEVM2"]
    if compress:
        batches = [r for r in recs if isinstance(r, PageBatch)]
        assert batches[0].data is not None and all(b.data is None for b in batches[1:])
        assert sum(isinstance(r, CompressedData) for r in recs) == 2


def test_remus_pv_repeats_body_and_tail() -> None:
    tail = B.pv_tail(8, 4, 2)
    body = B.batch([1], 8) + B.vcpu_info(1, [3]) + B.i32(0)
    recs = records(B.pv_header(8, 4) + (body + tail) * 3)
    assert sum(isinstance(r, PvTail) for r in recs) == 3
    assert all(len(r.vcpus) == 2 for r in recs if isinstance(r, PvTail))


def test_after_last_checkpoint_everything_is_trailer() -> None:
    handshake = b"domain is yours, you are cleared to unpause\0"
    recs = records(B.hvm_image() + handshake)
    assert recs[-1] == Trailer(data=handshake)
    # Even bytes that look like a chunk header are no new checkpoint after -9.
    recs = records(B.hvm_image() + B.batch([1], 8))
    assert isinstance(recs[-1], Trailer) and sum(isinstance(r, CheckpointBegin) for r in recs) == 1


def test_foreign_trailer_without_last_checkpoint() -> None:
    data = B.uw(16, 8) + B.batch([1], 8) + B.i32(0) + B.hvm_tail() + b"xl migration receiver"
    recs = records(data)
    assert recs[-1] == Trailer(data=b"xl migration receiver")


def test_xenserver_classic_is_detected_by_its_trailer() -> None:
    r = reader(B.hvm_image(qemu=B.qemu_xenserver(b"QEVM-xs")))
    recs = list(r.records())
    assert r.framing == "xenserver-classic"
    assert recs[-1] == QemuRecord(signature=F.XENSERVER_QEMU_SIG, data=b"QEVM-xs")


def test_xl_header_fields() -> None:
    r = reader(B.xl_header(b'builder="hvm"\n', mandatory=1) + B.hvm_image())
    hdr = r.read_framing()
    assert isinstance(hdr, XlHeader) and hdr.mandatory_flags == 1
    assert hdr.config == b'builder="hvm"\n' and r.framing == "xl"


def test_hvm_image_without_qemu_record_ends_at_eof() -> None:
    data = B.uw(16, 8) + B.hvm_body() + B.hvm_tail()
    assert isinstance(records(data)[-1], HvmTail)


# --- inputs: pipes and sockets, never seek -----------------------------------------------


def _feed(fd: int, data: bytes) -> threading.Thread:
    def run() -> None:
        with os.fdopen(fd, "wb") as f:
            for i in range(0, len(data), 1000):
                f.write(data[i : i + 1000])
                f.flush()

    t = threading.Thread(target=run)
    t.start()
    return t


def test_reads_from_a_pipe() -> None:
    data = B.pv_image(8, 8) + B.qemu_0002()
    rfd, wfd = os.pipe()
    t = _feed(wfd, data)
    try:
        recs = list(LegacyReader(ByteSource(rfd)).records())
    finally:
        t.join()
        os.close(rfd)
    assert recs == records(data)


def test_reads_from_a_socket() -> None:
    data = B.hvm_image()
    a, b = socket.socketpair()
    t = threading.Thread(target=lambda: (b.sendall(data), b.close()))
    t.start()
    try:
        recs = list(LegacyReader(ByteSource(a)).records())
    finally:
        t.join()
        a.close()
    assert recs == records(data)


def test_truncation_reports_element_start() -> None:
    data = B.hvm_image()
    cut = len(B.uw(0, 8) + B.tsc_info()) + 4 + 24 + 100
    with pytest.raises(StreamTruncated) as ei:
        records(data[:cut])
    assert ei.value.offset == 8 + 24 and ei.value.field == "batch.pages"
    assert ei.value.record == 3 and str(cut) in ei.value.message


def test_required_qemu_record() -> None:
    r = reader(b"DeviceModelRecord0003" + b"\0" * 8, width=8, guest="hvm")
    assert r.read_qemu_record() is None and r.source.offset == 0
    with pytest.raises(StreamMalformed) as ei:
        r.read_qemu_record(required=True)
    assert (ei.value.field, ei.value.offset) == ("qemu.signature", 0)
    r = reader(b"DeviceModel", width=8, guest="hvm")
    with pytest.raises(StreamTruncated) as et:
        r.read_qemu_record(required=True)
    assert et.value.field == "qemu.signature"
    r = reader(B.qemu_remus(b"QEVM"), width=8, guest="hvm")
    assert r.read_qemu_record(required=True) == QemuRecord(signature=F.QEMU_SIG_REMUS, data=b"QEVM")


def test_v2_stream_is_named() -> None:
    v2 = b"\xff" * 8 + b"XenF" + struct.pack(">IHH", 2, 1, 0)
    with pytest.raises(StreamMalformed, match="v2"):
        reader(v2).read_header()
