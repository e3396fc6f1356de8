"""Record encoder: spec §16 byte vectors and the layout of every element."""

from __future__ import annotations

import struct

import pytest

from xlpy.stream.legacy import format as F
from xlpy.stream.legacy.records import (
    CheckpointBegin,
    CompressedData,
    EnableCompression,
    EnableVerifyMode,
    EndOfBody,
    ExtInfoBlock,
    HvmParamChunk,
    HvmTail,
    LastCheckpoint,
    P2mFrameList,
    PageBatch,
    PvExtInfo,
    PvTail,
    QemuRecord,
    StreamHeader,
    Tmem,
    TmemExtra,
    TmemExtraEntry,
    TmemPage,
    TmemPool,
    Toolstack,
    Trailer,
    TscInfo,
    VcpuInfo,
    VcpuState,
    XendHeader,
    XlHeader,
    XsaveRecord,
)
from xlpy.stream.legacy.writer import encode


def h(s: str) -> bytes:
    return bytes.fromhex(s.replace(" ", ""))


def test_spec_16_vectors() -> None:
    assert encode([LastCheckpoint()]) == h("f7 ff ff ff")
    assert encode([EndOfBody()]) == h("00 00 00 00")
    assert encode([VcpuInfo(max_vcpu_id=1, online_map=(3,))]) == h(
        "fe ff ff ff 01 00 00 00 03 00 00 00 00 00 00 00"
    )
    assert encode([HvmParamChunk(chunk_id=F.XC_SAVE_ID_HVM_IDENT_PT, value=0xFEFFC000)]) == h(
        "fd ff ff ff 00 00 00 00 00 c0 ff fe 00 00 00 00"
    )
    assert encode([Toolstack(blob=struct.pack("<II", 1, 0))]) == h(
        "ee ff ff ff 08 00 00 00 01 00 00 00 00 00 00 00"
    )
    page = bytes(range(256)) * 16
    entries = struct.pack("<QQ", 5, F.BARE_XTAB_ENTRY)
    assert encode([PageBatch(width=8, entries=entries, data=page)]) == (
        h("02 00 00 00 05 00 00 00 00 00 00 00 00 00 00 f0 00 00 00 00") + page
    )
    tsc = encode([TscInfo(tsc_mode=1, nsec=2, khz=3, incarnation=4)])
    assert tsc == h("f9 ff ff ff") + struct.pack("<IQII", 1, 2, 3, 4)
    assert len(tsc) == 24


def test_bare_chunks_and_markers() -> None:
    assert encode([EnableVerifyMode()]) == struct.pack("<i", -1)
    assert encode([EnableCompression()]) == struct.pack("<i", -13)
    assert encode([CheckpointBegin(number=0)]) == b""


@pytest.mark.parametrize("width", [4, 8])
def test_w_sized_fields(width: int) -> None:
    fmt = "<Q" if width == 8 else "<I"
    assert encode([StreamHeader(p2m_size=0x40000, width=width)], width) == struct.pack(fmt, 0x40000)
    assert encode([P2mFrameList(entries=(1, 2, 3))], width) == struct.pack(f"<3{fmt[1]}", 1, 2, 3)
    assert encode([CompressedData(data=b"\x00\x00")], width) == (
        struct.pack("<i", -12) + struct.pack(fmt, 2) + b"\x00\x00"
    )
    ext = PvExtInfo(
        blocks=(
            ExtInfoBlock(block_id=b"vcpu", data=bytes(F.VCPU_CONTEXT_SIZE_32)),
            ExtInfoBlock(block_id=b"extv", data=b""),
        )
    )
    got = encode([ext], width)
    assert got[:width] == b"\xff" * width
    assert struct.unpack_from("<I", got, width)[0] == 8 + 2800 + 8
    assert got[width + 4 : width + 12] == b"vcpu" + struct.pack("<I", 2800)
    assert got[-8:] == b"extv" + bytes(4)
    # Format B: count and entries, no page data.
    b = PageBatch(width=width, entries=struct.pack(f"<2{fmt[1]}", 7, 8), data=None)
    assert encode([b], width) == struct.pack("<I", 2) + struct.pack(f"<2{fmt[1]}", 7, 8)


def test_page_batch_width_mismatch_is_a_program_error() -> None:
    with pytest.raises(ValueError):
        encode([PageBatch(width=4, entries=bytes(4), data=bytes(4096))], 8)


def test_pv_tail_layout() -> None:
    ctx = bytes([1]) * F.VCPU_CONTEXT_SIZE_64
    tail = PvTail(
        unmapped=(9,),
        vcpus=(
            VcpuState(
                vcpu_id=0,
                context=ctx,
                ext=bytes(128),
                xsave=XsaveRecord(xfeature_mask=7, data=b"x" * 16),
            ),
        ),
        shared_info=bytes([2]) * 4096,
    )
    got = encode([tail], 4)
    assert got[:8] == struct.pack("<II", 1, 9)
    assert got[8 : 8 + 5168] == ctx
    off = 8 + 5168 + 128
    assert got[off : off + 16] == struct.pack("<QQ", 7, 16)
    assert got[off + 16 : off + 32] == b"x" * 16
    assert got[off + 32 :] == bytes([2]) * 4096


def test_hvm_tail_and_qemu_records() -> None:
    got = encode([HvmTail(ioreq_pfn=1, bufioreq_pfn=2, store_pfn=3, context=b"ctx")])
    assert got == struct.pack("<QQQI", 1, 2, 3, 3) + b"ctx"
    data = b"QEVM" + b"\x01" * 10
    assert encode([QemuRecord(signature=F.QEMU_SIG_TO_EOF, data=data)]) == (
        b"QemuDeviceModelRecord" + data
    )
    assert encode([QemuRecord(signature=F.QEMU_SIG_0002, data=data)]) == (
        b"DeviceModelRecord0002" + struct.pack("<I", 14) + data
    )
    assert encode([QemuRecord(signature=F.QEMU_SIG_REMUS, data=data)]) == (
        b"RemusDeviceModelState" + struct.pack("<I", 14) + data
    )
    assert encode([QemuRecord(signature=F.XENSERVER_QEMU_SIG, data=data)]) == (
        b"QemuDeviceModelRecord\n" + struct.pack(">I", 14) + data
    )
    with pytest.raises(ValueError):
        encode([QemuRecord(signature=b"X" * 21, data=b"")])


def test_framing() -> None:
    cfg = b"(domain (name x))"
    assert encode([XendHeader(config=cfg)]) == b"LinuxGuestRecord" + struct.pack(">i", 17) + cfg
    opt = struct.pack("<I", 3) + b"a=1"
    got = encode([XlHeader(mandatory_flags=0, optional_flags=0, optional_data=opt)])
    assert got[:32] == h("58656e20736176656420646f6d61696e2c20786c20666f726d61740a2000200d")
    assert got[32:48] == h("04030201") + struct.pack("<III", 0, 0, len(opt))
    assert got[48:] == opt
    assert encode([Trailer(data=b"abc")]) == b"abc"


def test_tmem_layout() -> None:
    page = TmemPage(oid=(1, 2, 3), index=4, data=b"p" * 4096)
    pool = TmemPool(pool_id=0, flags=1, n_pages=2, uuid=(5, 6), pages=(page,), terminated=True)
    got = encode([Tmem(version=1, max_pools=16, client_flags=0, weight=2, cap=3, pools=(pool,))])
    head = struct.pack("<iIIIIIII", -5, 1, 16, 0xFFFFFFFF, 0, 2, 3, 0xFFFFFFFF)
    body = struct.pack("<IIIQQ", 0, 1, 2, 5, 6) + struct.pack("<QQQI", 1, 2, 3, 4) + b"p" * 4096
    assert got == head + body + b"\xff" * 24 + b"\xff" * 4
    extra = TmemExtra(entries=(TmemExtraEntry(pool_id=1, oid=(2, 3, 4), index=5),))
    assert encode([extra]) == (
        struct.pack("<i", -6) + struct.pack("<IQQQI", 1, 2, 3, 4, 5) + b"\xff" * 4
    )
