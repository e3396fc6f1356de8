"""v2 writer and reader: byte layout, round trips, layering, pipes."""

from __future__ import annotations

import io
import os
import struct
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xlpy.errors import StreamMalformed, StreamTruncated
from xlpy.stream.legacy.records import XlHeader
from xlpy.stream.source import ByteSource
from xlpy.stream.v2 import format as F
from xlpy.stream.v2.reader import V2Reader
from xlpy.stream.v2.records import (
    LIBXC,
    LIBXL,
    DomainHeader,
    EmulatorRecord,
    HvmParams,
    ImageHeader,
    LibxlHeader,
    PageData,
    V2Record,
    X86PvInfo,
    X86PvP2mFrames,
    X86PvVcpu,
    X86TscInfo,
    page_entries,
)
from xlpy.stream.v2.writer import V2Writer


def _pages(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n * 4096, dtype=np.uint8).tobytes()


def _read_all(data: bytes, **kw: object) -> list[object]:
    return list(V2Reader(ByteSource(io.BytesIO(data)), **kw).elements())  # type: ignore[arg-type]


def test_record_layout_is_byte_exact() -> None:
    out = io.BytesIO()
    w = V2Writer(out)
    w.write_record(0x1234, b"abc")
    w.x86_pv_vcpu_xsave(3, b"\x01" * 13)
    w.tsc_info(1, 2, 3, 4)
    w.end()
    assert out.getvalue() == (
        struct.pack("<II", 0x1234, 3) + b"abc" + bytes(5)
        + struct.pack("<IIII", 6, 21, 3, 0) + b"\x01" * 13 + bytes(3)
        + struct.pack("<II", 8, 24) + struct.pack("<IIQII", 1, 2, 3, 4, 0)
        + struct.pack("<II", 0, 0)
    )  # fmt: skip
    assert w.offset == len(out.getvalue())


def test_headers_layout() -> None:
    out = io.BytesIO()
    w = V2Writer(out)
    w.xl_header(optional_data=b"\x02\0\0\0ab")
    w.libxl_header(options=F.LIBXL_OPT_LEGACY)
    w.image_header(version=2)
    w.domain_header(F.DHDR_TYPE_X86_HVM, xen_major=4, xen_minor=17)
    b = out.getvalue()
    assert b[:32] == b"Xen saved domain, xl format\n \0 \r"
    assert b[32:48] == b"\x04\x03\x02\x01" + struct.pack("<III", 2, 0, 6)
    assert b[54:70] == b"LibxlFmt" + bytes([0, 0, 0, 2, 0, 0, 0, 2])
    assert b[70:94] == b"\xff" * 8 + b"XENF" + bytes([0, 0, 0, 2]) + bytes(8)
    assert b[94:110] == struct.pack("<IHHII", 2, 12, 0, 4, 17)


def test_page_data_helpers() -> None:
    out = io.BytesIO()
    w = V2Writer(out)
    types = [0, F.XEN_DOMCTL_PFINFO_XTAB, F.XEN_DOMCTL_PFINFO_L1TAB | F.XEN_DOMCTL_PFINFO_LPINTAB]
    pages = _pages(2)
    w.image_header()
    w.domain_header(F.DHDR_TYPE_X86_PV)
    w.page_data_pfns([5, 6, 7], pages, types=types)
    w.end()
    rec = _read_all(out.getvalue())[2]
    assert isinstance(rec, V2Record)
    pd = rec.decode()
    assert isinstance(pd, PageData)
    assert pd.count == 3 and bytes(pd.pages) == pages
    assert pd.pfns.tolist() == [5, 6, 7]
    assert pd.type_nibbles.tolist() == [0, 0xF, 0x9]
    with pytest.raises(ValueError, match="need 8192 bytes"):
        w.page_data_pfns([1, 2], _pages(1))


def test_page_entries_from_legacy_entries() -> None:
    legacy = np.array([0x10, 0xF0000011, 0x90000012], dtype=np.uint64)
    ent = page_entries(legacy & np.uint64(0x0FFFFFFF), legacy & np.uint64(0xF0000000))
    assert ent.tolist() == [0x10, (0xF << 60) | 0x11, (0x9 << 60) | 0x12]


def _write_libxl_pv(out: io.BytesIO | io.BufferedWriter, checkpoints: int = 0) -> None:
    w = V2Writer(out)
    w.xl_header()
    w.libxl_header()
    w.libxc_context()
    w.image_header()
    w.domain_header(F.DHDR_TYPE_X86_PV, xen_major=4, xen_minor=17)
    w.x86_pv_info(8, 4)
    w.static_data_end()
    w.x86_pv_p2m_frames(0, 511, [9])
    w.page_data_pfns(np.arange(16), _pages(16))
    for i in range(checkpoints):
        w.checkpoint()
        w.emulator_xenstore_data([(b"k", b"v%d" % i)], emulator_id=F.EMULATOR_ID_QEMU_UPSTREAM)
        w.checkpoint_end()
        w.page_data_pfns([i], _pages(1, i))
    w.tsc_info(0, 1000, 5, 1)
    w.x86_pv_vcpu_basic(0, bytes(5168))
    w.x86_pv_vcpu_msrs(0, b"")
    w.shared_info(bytes(4096))
    w.end()
    w.emulator_context(b"QEVM", emulator_id=F.EMULATOR_ID_QEMU_TRAD, index=1)
    w.end()


def test_round_trip_typed() -> None:
    out = io.BytesIO()
    _write_libxl_pv(out)
    reader = V2Reader(ByteSource(io.BytesIO(out.getvalue())))
    els = list(reader.elements())
    assert reader.framing == "xl" and reader.format == LIBXL
    assert isinstance(els[0], XlHeader) and els[0].offset == 0
    assert isinstance(els[1], LibxlHeader) and els[1].offset == 48
    assert isinstance(els[3], ImageHeader) and els[3].version == 3
    assert isinstance(els[4], DomainHeader) and els[4].xen_minor == 17
    recs = [e for e in els if isinstance(e, V2Record)]
    assert [r.index for r in recs] == list(range(len(recs)))
    assert [(r.layer, r.type) for r in recs] == [
        (LIBXL, F.REC_TYPE_LIBXC_CONTEXT),
        (LIBXC, F.REC_TYPE_X86_PV_INFO),
        (LIBXC, F.REC_TYPE_STATIC_DATA_END),
        (LIBXC, F.REC_TYPE_X86_PV_P2M_FRAMES),
        (LIBXC, F.REC_TYPE_PAGE_DATA),
        (LIBXC, F.REC_TYPE_X86_TSC_INFO),
        (LIBXC, F.REC_TYPE_X86_PV_VCPU_BASIC),
        (LIBXC, F.REC_TYPE_X86_PV_VCPU_MSRS),
        (LIBXC, F.REC_TYPE_SHARED_INFO),
        (LIBXC, F.REC_TYPE_END),
        (LIBXL, F.REC_TYPE_EMULATOR_CONTEXT),
        (LIBXL, F.REC_TYPE_LIBXL_END),
    ]
    assert recs[1].decode() == X86PvInfo(guest_width=8, pt_levels=4)
    p2m = recs[3].decode()
    assert isinstance(p2m, X86PvP2mFrames) and p2m.p2m_end_pfn == 511
    assert p2m.pfns.tolist() == [9]
    assert bytes(recs[4].decode().pages) == _pages(16)  # type: ignore[attr-defined]
    assert recs[5].decode() == X86TscInfo(mode=0, khz=1000, nsec=5, incarnation=1)
    assert recs[7].decode() == X86PvVcpu(vcpu_id=0, reserved=0, context=b"")
    assert recs[10].decode() == EmulatorRecord(emulator_id=1, emulator_index=1, data=b"QEVM")
    assert recs[-1].offset + 8 == len(out.getvalue())


def test_checkpointed_libxl_stream_interleaves_layers() -> None:
    out = io.BytesIO()
    _write_libxl_pv(out, checkpoints=2)
    recs = [e for e in _read_all(out.getvalue()) if isinstance(e, V2Record)]
    seq = [(r.layer, r.name) for r in recs]
    i = seq.index((LIBXC, "Checkpoint"))
    assert seq[i : i + 4] == [
        (LIBXC, "Checkpoint"),
        (LIBXL, "Emulator xenstore data"),
        (LIBXL, "Checkpoint end"),
        (LIBXC, "Page data"),
    ]
    assert seq.count((LIBXC, "Checkpoint")) == 2


def test_hvm_params_round_trip() -> None:
    out = io.BytesIO()
    V2Writer(out).hvm_params([(1, 2), (3, 0xFFFFFFFFFFFFFFFF)])
    rec = V2Record(type=F.REC_TYPE_HVM_PARAMS, body=out.getvalue()[8:])
    assert rec.decode() == HvmParams(count=2, reserved=0, params=[(1, 2), (3, 0xFFFFFFFFFFFFFFFF)])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 0x7FFFFFFF), st.binary(max_size=40)), min_size=0, max_size=8)
)
def test_generic_records_round_trip(records: list[tuple[int, bytes]]) -> None:
    """Any record list reads back as written; every record ends on an 8-byte boundary."""
    out = io.BytesIO()
    w = V2Writer(out)
    w.image_header()
    w.domain_header(F.DHDR_TYPE_X86_HVM)
    for t, body in records:
        w.write_record(t or 0x7F, body)  # type 0 would end the image early
    w.end()
    els = _read_all(out.getvalue(), fmt="libxc")
    recs = [e for e in els if isinstance(e, V2Record)]
    assert [(r.type, r.body) for r in recs[:-1]] == [(t or 0x7F, b) for t, b in records]
    assert all(r.offset % 8 == 0 and r.padding == bytes(len(r.padding)) for r in recs)


def test_truncation_names_record_and_offset() -> None:
    out = io.BytesIO()
    _write_libxl_pv(out)
    data = out.getvalue()
    recs = [e for e in _read_all(data) if isinstance(e, V2Record)]
    pd = recs[4]
    with pytest.raises(StreamTruncated) as ei:
        _read_all(data[: pd.offset + 100])
    assert ei.value.record == pd.index
    assert ei.value.offset == pd.offset + 8
    assert ei.value.field == "record.body"


def test_oversized_record_rejected_before_allocation() -> None:
    data = b"\xff" * 8 + b"XENF\0\0\0\3" + bytes(8) + bytes(16) + struct.pack("<II", 1, 1 << 30)
    with pytest.raises(StreamMalformed) as ei:
        _read_all(data)
    assert ei.value.field == "record.length" and ei.value.offset == 40


def test_not_a_v2_stream() -> None:
    with pytest.raises(StreamMalformed, match="not a migration v2 stream"):
        _read_all(b"\x00" * 64)


def test_reads_from_a_pipe_in_small_pieces() -> None:
    out = io.BytesIO()
    _write_libxl_pv(out, checkpoints=1)
    data = out.getvalue()
    r, wfd = os.pipe()

    def feed() -> None:
        with os.fdopen(wfd, "wb", buffering=0) as f:
            for i in range(0, len(data), 1000):
                f.write(data[i : i + 1000])

    t = threading.Thread(target=feed)
    t.start()
    try:
        els = list(V2Reader(ByteSource(r)).elements())
    finally:
        t.join()
        os.close(r)
    assert sum(isinstance(e, V2Record) for e in els) == 16


def test_public_api_is_documented() -> None:
    """Every public class, function, method and property of xlpy.stream.v2 says what it is."""
    import dataclasses
    import importlib
    import inspect

    missing = []
    for name in ("format", "reader", "records", "verify", "writer"):
        mod = importlib.import_module(f"xlpy.stream.v2.{name}")
        for attr, obj in vars(mod).items():
            if attr.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                continue
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            if not obj.__doc__:
                missing.append(f"{name}.{attr}")
            if inspect.isclass(obj):
                for meth, member in vars(obj).items():
                    # a dataclass's generated __init__ is documented by its fields
                    generated = dataclasses.is_dataclass(obj)
                    if meth.startswith("_") and (meth != "__init__" or generated):
                        continue
                    fn = member.fget if isinstance(member, property) else member
                    if inspect.isfunction(fn) and not fn.__doc__:
                        missing.append(f"{name}.{attr}.{meth}")
    assert missing == []
