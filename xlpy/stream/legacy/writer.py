"""Legacy stream record encoder: the exact inverse of the reader.

:class:`LegacyWriter` serialises the typed records of
:mod:`xlpy.stream.legacy.records` byte for byte as the spec lays them out
(``legacy-stream.md`` §1-§8): little-endian inside the libxc image, W-sized
fields where the sender used ``unsigned long``, and the two big-endian lengths
of the toolstack framing (xend config, XenServer-classic QEMU record).  It
makes no policy decisions (which chunks, in which order): that is the job of
the sender profiles in :mod:`xlpy.stream.legacy.senders`.

Page data is written straight from the record's buffer, never copied into a
larger one, so a writer over a pipe streams at the speed of ``write``.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable
from typing import BinaryIO

from xlpy.stream.legacy import format as F
from xlpy.stream.legacy.records import (
    BlobRecord,
    CheckpointBegin,
    CompressedData,
    EnableCompression,
    EnableVerifyMode,
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

_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_HVM_PARAM = struct.Struct("<iIQ")
_TSC = struct.Struct("<iIQII")
_TMEM_HEAD = struct.Struct("<iIIIIIII")
_TMEM_POOL = struct.Struct("<IIIQQ")
_TMEM_PAGE = struct.Struct("<QQQI")
_TMEM_EXTRA = struct.Struct("<IQQQI")
_HVM_TAIL = struct.Struct("<QQQI")
_XSAVE_HEAD = struct.Struct("<QQ")
_XL_FIXED = struct.Struct("<4sIII")

#: ``u32 0xFFFFFFFF``: tmem's separators and list terminators (§5.2).
_MINUS_ONE_U32 = 0xFFFFFFFF
_TMEM_OID_END = (0xFFFFFFFFFFFFFFFF,) * 3


def _bare_chunk(chunk_id: int) -> bytes:
    return _I32.pack(chunk_id)


class LegacyWriter:
    """Writes legacy records to a binary output in wire order.

    ``width`` is the toolstack width W in bytes (8 for a 64-bit dom0, 4 for a
    32-bit one); every W-sized field is written with it.  ``offset`` counts the
    bytes written so far.  Records are written as given: the caller is
    responsible for a sensible order (see :mod:`xlpy.stream.legacy.senders`).
    """

    def __init__(self, out: BinaryIO, *, width: int = 8) -> None:
        if width not in (4, 8):
            raise ValueError(f"toolstack width must be 4 or 8 bytes, not {width}")
        self._out = out
        self.width = width
        self.offset = 0
        self._wfmt = "<Q" if width == 8 else "<I"
        self._w = struct.Struct(self._wfmt)

    def _put(self, b: bytes | bytearray | memoryview) -> None:
        self._out.write(b)
        self.offset += len(b)

    def _uword(self, value: int) -> bytes:
        return self._w.pack(value)

    def _uwords(self, values: Iterable[int]) -> bytes:
        vals = tuple(values)
        return struct.pack(f"<{len(vals)}{self._wfmt[1]}", *vals)

    def write(self, rec: Record) -> None:
        """Serialise one record (``CheckpointBegin`` writes nothing)."""
        if isinstance(rec, BlobRecord) and rec.skipped:
            raise ValueError(f"{type(rec).__name__}: its blob was skipped by the reader")
        match rec:
            case PageBatch():
                self._page_batch(rec)
            case HvmParamChunk():
                self._put(_HVM_PARAM.pack(rec.chunk_id, rec.pad, rec.value))
            case CompressedData():
                self._put(_I32.pack(F.XC_SAVE_ID_COMPRESSED_DATA) + self._uword(len(rec.data)))
                self._put(rec.data)
            case EndOfBody():
                self._put(_I32.pack(0))
            case CheckpointBegin():
                pass
            case VcpuInfo():
                self._put(
                    struct.pack(
                        f"<ii{len(rec.online_map)}Q",
                        F.XC_SAVE_ID_VCPU_INFO,
                        rec.max_vcpu_id,
                        *rec.online_map,
                    )
                )
            case EnableVerifyMode():
                self._put(_bare_chunk(F.XC_SAVE_ID_ENABLE_VERIFY_MODE))
            case LastCheckpoint():
                self._put(_bare_chunk(F.XC_SAVE_ID_LAST_CHECKPOINT))
            case EnableCompression():
                self._put(_bare_chunk(F.XC_SAVE_ID_ENABLE_COMPRESSION))
            case TscInfo():
                self._put(
                    _TSC.pack(
                        F.XC_SAVE_ID_TSC_INFO, rec.tsc_mode, rec.nsec, rec.khz, rec.incarnation
                    )
                )
            case Toolstack():
                self._put(_I32.pack(F.XC_SAVE_ID_TOOLSTACK) + _U32.pack(len(rec.blob)))
                self._put(rec.blob)
            case Tmem():
                self._tmem(rec)
            case TmemExtra():
                self._tmem_extra(rec)
            case StreamHeader():
                self._put(self._uword(rec.p2m_size))
            case PvExtInfo():
                self._pv_ext_info(rec)
            case P2mFrameList():
                self._put(self._uwords(rec.entries))
            case PvTail():
                self._pv_tail(rec)
            case HvmTail():
                self._put(
                    _HVM_TAIL.pack(rec.ioreq_pfn, rec.bufioreq_pfn, rec.store_pfn, len(rec.context))
                )
                self._put(rec.context)
            case QemuRecord():
                self._qemu(rec)
            case XlHeader():
                self._put(F.XL_MAGIC)
                self._put(
                    _XL_FIXED.pack(
                        F.XL_BYTEORDER_LE,
                        rec.mandatory_flags,
                        rec.optional_flags,
                        len(rec.optional_data),
                    )
                )
                self._put(rec.optional_data)
            case XendHeader():
                self._put(F.XEND_SIGNATURE + struct.pack(">i", len(rec.config)))
                self._put(rec.config)
            case Trailer():
                self._put(rec.data)
            case _:
                raise TypeError(f"no encoding for record {type(rec).__name__}")

    def write_all(self, records: Iterable[Record]) -> None:
        """Write every record of ``records`` in order."""
        for rec in records:
            self.write(rec)

    # -- element encoders ---------------------------------------------------------

    def _page_batch(self, rec: PageBatch) -> None:
        if rec.width != self.width:
            raise ValueError(f"page batch of width {rec.width} on a width-{self.width} writer")
        self._put(_U32.pack(rec.count))
        self._put(rec.entries)
        if rec.data is not None:
            self._put(rec.data)

    def _pv_ext_info(self, rec: PvExtInfo) -> None:
        blocks = b"".join(b.block_id + _U32.pack(len(b.data)) + b.data for b in rec.blocks)
        self._put(self._uword((1 << (8 * self.width)) - 1) + _U32.pack(len(blocks)))
        self._put(blocks)

    def _pv_tail(self, rec: PvTail) -> None:
        self._put(_U32.pack(len(rec.unmapped)) + self._uwords(rec.unmapped))
        for v in rec.vcpus:
            self._put(v.context)
            if v.ext is not None:
                self._put(v.ext)
            if v.xsave is not None:
                self._put(_XSAVE_HEAD.pack(v.xsave.xfeature_mask, len(v.xsave.data)))
                self._put(v.xsave.data)
        self._put(rec.shared_info)

    def _tmem(self, rec: Tmem) -> None:
        self._put(
            _TMEM_HEAD.pack(
                F.XC_SAVE_ID_TMEM,
                rec.version,
                rec.max_pools,
                _MINUS_ONE_U32,
                rec.client_flags,
                rec.weight,
                rec.cap,
                _MINUS_ONE_U32,
            )
        )
        for pool in rec.pools:
            self._put(_TMEM_POOL.pack(pool.pool_id, pool.flags, pool.n_pages, *pool.uuid))
            for page in pool.pages:
                self._put(_TMEM_PAGE.pack(*page.oid, page.index))
                self._put(page.data)
            if pool.terminated:
                self._put(struct.pack("<QQQ", *_TMEM_OID_END))
        self._put(_U32.pack(_MINUS_ONE_U32))

    def _tmem_extra(self, rec: TmemExtra) -> None:
        self._put(_I32.pack(F.XC_SAVE_ID_TMEM_EXTRA))
        for e in rec.entries:
            self._put(_TMEM_EXTRA.pack(e.pool_id, *e.oid, e.index))
        self._put(_U32.pack(_MINUS_ONE_U32))

    def _qemu(self, rec: QemuRecord) -> None:
        sig = rec.signature
        if sig == F.QEMU_SIG_TO_EOF:
            self._put(sig)
        elif sig in (F.QEMU_SIG_0002, F.QEMU_SIG_REMUS):
            self._put(sig + _U32.pack(len(rec.data)))
        elif sig == F.XENSERVER_QEMU_SIG:
            self._put(sig + struct.pack(">I", len(rec.data)))
        else:
            raise ValueError(f"unknown QEMU record signature {sig!r}")
        self._put(rec.data)


def encode(records: Iterable[Record], width: int = 8) -> bytes:
    """All ``records`` serialised with toolstack width ``width`` (bytes)."""
    buf = io.BytesIO()
    LegacyWriter(buf, width=width).write_all(records)
    return buf.getvalue()
