"""Typed elements of a migration v2 stream.

The reader yields headers and :class:`V2Record` objects (one per record, raw
body kept as bytes); :meth:`V2Record.decode` gives the typed body for the
records whose layout the spec fixes.  Page data stays one buffer per record and
the pfn entries one numpy array: never one Python object per page.

Every element carries ``offset`` (absolute byte offset of its first byte, xl
header included) and ``index`` (0-based position among records; headers use
-1); both are excluded from equality.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from xlpy.errors import StreamMalformed
from xlpy.stream import pagetypes as P
from xlpy.stream.v2 import format as F

#: Which record numbering a record belongs to.
LIBXC = "libxc"
LIBXL = "libxl"


@dataclass(frozen=True, slots=True, kw_only=True)
class Element:
    """Something read from a v2 stream: where it starts and its place in the stream.

    ``offset`` is the byte offset of its first byte from the start of the input
    (xl header included), ``index`` its 0-based position among the elements
    read; both are -1 for an element built in memory and not compared.
    """

    offset: int = field(default=-1, compare=False)
    index: int = field(default=-1, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageHeader(Element):
    """libxc image header (24 bytes, big-endian)."""

    marker: int = F.IHDR_MARKER
    id: int = F.IHDR_ID
    version: int = 3
    options: int = 0
    reserved1: int = 0
    reserved2: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class DomainHeader(Element):
    """libxc domain header (16 bytes); ``xen_major == 0`` marks a converted legacy image."""

    type: int = F.DHDR_TYPE_X86_PV
    page_shift: int = F.PAGE_SHIFT
    reserved: int = 0
    xen_major: int = 0
    xen_minor: int = 0

    @property
    def type_name(self) -> str:
        """The domain type's name in Xen's ``DHDR_TYPE_*`` spelling (``x86 PV``, ...)."""
        return F.DHDR_TYPE_NAMES.get(self.type, "Reserved")


@dataclass(frozen=True, slots=True, kw_only=True)
class LibxlHeader(Element):
    """libxl stream header (16 bytes, big-endian)."""

    ident: int = F.LIBXL_HDR_IDENT
    version: int = F.LIBXL_HDR_VERSION
    options: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class V2Record(Element):
    """One record: ``layer`` is ``"libxc"`` or ``"libxl"`` (which type numbering applies)."""

    layer: str = LIBXC
    type: int = 0
    body: bytes = b""
    #: The padding bytes as read (all zero in a well-formed stream).
    padding: bytes = b""
    #: Bytes at the end of the body that a reader's page sink moved elsewhere.
    placed: int = 0

    @property
    def length(self) -> int:
        """The record header's ``length``: body bytes, padding excluded."""
        return len(self.body) + self.placed

    @property
    def name(self) -> str:
        """The record type's name as Xen's ``xen.migration`` tools print it (``Page data``,
        ``Emulator context``), or ``optional``/``reserved`` with the hex type."""
        names = F.LIBXC_REC_NAMES if self.layer == LIBXC else F.LIBXL_REC_NAMES
        if self.type & F.REC_TYPE_OPTIONAL:
            return f"optional 0x{self.type:08x}"
        return names.get(self.type, f"reserved 0x{self.type:08x}")

    def decode(self) -> object:
        """The typed body (:class:`PageData`, :class:`X86PvInfo`, ...) or the record itself.

        Raises :class:`~xlpy.errors.StreamMalformed` when the body is too short
        for its fixed part.
        """
        decoder = (_LIBXC_DECODERS if self.layer == LIBXC else _LIBXL_DECODERS).get(self.type)
        return self if decoder is None else decoder(self)


# --- typed bodies ---------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PageData:
    """A PAGE_DATA batch: the declared ``count``, the raw u64 entries present (type nibble
    in bits 60-63; fewer than ``count`` in a short record) and the bytes after them."""

    count: int
    reserved: int
    entries: npt.NDArray[np.uint64]
    pages: memoryview

    @property
    def pfns(self) -> npt.NDArray[np.uint64]:
        """The pfn of each entry (``PAGE_DATA_PFN_MASK``: bits 0-51)."""
        return self.entries & np.uint64(F.PAGE_DATA_PFN_MASK)

    @property
    def type_nibbles(self) -> npt.NDArray[np.uint8]:
        """Each entry's page type, bits 60-63 (``XEN_DOMCTL_PFINFO_*`` >> 28)."""
        return type_nibbles(self.entries)


@dataclass(frozen=True, slots=True, kw_only=True)
class X86PvInfo:
    """X86_PV_INFO: ``guest_width`` in bytes (4 or 8), ``pt_levels`` (3 or 4), reserved."""

    guest_width: int
    pt_levels: int
    reserved1: int = 0
    reserved2: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class X86PvP2mFrames:
    """X86_PV_P2M_FRAMES: the first and last pfn the p2m covers and the mfns of its frames
    (``pfns``, one u64 each, in p2m order)."""

    p2m_start_pfn: int
    p2m_end_pfn: int
    pfns: npt.NDArray[np.uint64]


@dataclass(frozen=True, slots=True, kw_only=True)
class X86PvVcpu:
    """X86_PV_VCPU_{BASIC,EXTENDED,XSAVE,MSRS}: a vcpu header and an opaque blob."""

    vcpu_id: int
    reserved: int
    context: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class X86TscInfo:
    """X86_TSC_INFO: ``mode`` (TSC_MODE_*), ``khz`` (guest TSC frequency in kHz), ``nsec``
    (elapsed nanoseconds), ``incarnation`` and the reserved u32."""

    mode: int
    khz: int
    nsec: int
    incarnation: int
    reserved: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class HvmParams:
    """HVM_PARAMS: the declared ``count``, the reserved u32 and the (index, value) pairs
    present (``HVM_PARAM_*``; fewer than ``count`` in a short record)."""

    count: int
    reserved: int
    params: list[tuple[int, int]]


@dataclass(frozen=True, slots=True, kw_only=True)
class EmulatorRecord:
    """EMULATOR_XENSTORE_DATA or EMULATOR_CONTEXT: emulator header + data."""

    emulator_id: int
    emulator_index: int
    data: bytes


def _short(rec: V2Record, need: int, what: str) -> StreamMalformed:
    return StreamMalformed(
        f"{rec.name} record body is {rec.length} bytes, {what} needs {need}",
        offset=rec.offset,
        record=rec.index,
        field=f"{rec.name}.length",
        value=rec.length,
    )


def _fixed(rec: V2Record, fmt: struct.Struct, what: str) -> tuple[int, ...]:
    """The fixed part ``fmt`` at the start of ``rec``'s body (``what``: its name in the error
    a shorter body gets)."""
    if rec.length < fmt.size:
        raise _short(rec, fmt.size, what)
    fields: tuple[int, ...] = fmt.unpack_from(rec.body)
    return fields


def _page_data(rec: V2Record) -> PageData:
    hdr = F.PAGE_DATA_HDR_FORMAT.size
    count, res = _fixed(rec, F.PAGE_DATA_HDR_FORMAT, "the PAGE_DATA header")
    # The entries present, up to ``count``: whether they all are is the policy's to judge.
    present = min(count, (rec.length - hdr) // 8)
    entries = np.frombuffer(rec.body, dtype="<u8", count=present, offset=hdr).astype(np.uint64)
    pages = memoryview(rec.body)[hdr + 8 * present :]
    return PageData(count=count, reserved=res, entries=entries, pages=pages)


def _pv_info(rec: V2Record) -> X86PvInfo:
    w, lv, r1, r2 = _fixed(rec, F.X86_PV_INFO_FORMAT, "X86_PV_INFO")
    return X86PvInfo(guest_width=w, pt_levels=lv, reserved1=r1, reserved2=r2)


def _p2m_frames(rec: V2Record) -> X86PvP2mFrames:
    start, end = _fixed(rec, F.X86_PV_P2M_FRAMES_FORMAT, "X86_PV_P2M_FRAMES")
    n = (rec.length - 8) // 8
    pfns = np.frombuffer(rec.body, dtype="<u8", count=n, offset=8).astype(np.uint64)
    return X86PvP2mFrames(p2m_start_pfn=start, p2m_end_pfn=end, pfns=pfns)


def _vcpu(rec: V2Record) -> X86PvVcpu:
    vid, res = _fixed(rec, F.X86_PV_VCPU_HDR_FORMAT, "the vcpu header")
    return X86PvVcpu(vcpu_id=vid, reserved=res, context=rec.body[8:])


def _tsc(rec: V2Record) -> X86TscInfo:
    mode, khz, nsec, inc, res = _fixed(rec, F.X86_TSC_INFO_FORMAT, "TSC_INFO")
    return X86TscInfo(mode=mode, khz=khz, nsec=nsec, incarnation=inc, reserved=res)


def _hvm_params(rec: V2Record) -> HvmParams:
    count, res = _fixed(rec, F.HVM_PARAMS_FORMAT, "the HVM_PARAMS header")
    present = min(count, (rec.length - 8) // 16)
    params = [F.HVM_PARAMS_ENTRY_FORMAT.unpack_from(rec.body, 8 + 16 * i) for i in range(present)]
    return HvmParams(count=count, reserved=res, params=params)


def _emulator(rec: V2Record) -> EmulatorRecord:
    eid, idx = _fixed(rec, F.EMULATOR_HEADER_FORMAT, "the emulator header")
    return EmulatorRecord(emulator_id=eid, emulator_index=idx, data=rec.body[8:])


_LIBXC_DECODERS = {
    F.REC_TYPE_PAGE_DATA: _page_data,
    F.REC_TYPE_X86_PV_INFO: _pv_info,
    F.REC_TYPE_X86_PV_P2M_FRAMES: _p2m_frames,
    F.REC_TYPE_X86_PV_VCPU_BASIC: _vcpu,
    F.REC_TYPE_X86_PV_VCPU_EXTENDED: _vcpu,
    F.REC_TYPE_X86_PV_VCPU_XSAVE: _vcpu,
    F.REC_TYPE_X86_PV_VCPU_MSRS: _vcpu,
    F.REC_TYPE_X86_TSC_INFO: _tsc,
    F.REC_TYPE_HVM_PARAMS: _hvm_params,
}
_LIBXL_DECODERS = {
    F.REC_TYPE_EMULATOR_XENSTORE_DATA: _emulator,
    F.REC_TYPE_EMULATOR_CONTEXT: _emulator,
}


def page_entries(pfns: npt.ArrayLike, types: npt.ArrayLike | None = None) -> npt.NDArray[np.uint64]:
    """PAGE_DATA entries from pfns and XEN_DOMCTL_PFINFO_* types (u32, bits 28-31).

    Legacy batch entries carry the same u32 type in bits 28-31, so a converter
    passes ``entries & 0x0fffffff`` and ``entries & 0xf0000000``.
    """
    out = np.asarray(pfns, dtype=np.uint64) & np.uint64(F.PAGE_DATA_PFN_MASK)
    if types is not None:
        t = np.asarray(types, dtype=np.uint64) & np.uint64(0xF << F.XEN_DOMCTL_PFINFO_LTAB_SHIFT)
        out = out | (t << np.uint64(F.PFINFO_SHIFT_IN_ENTRY))
    return out


_CARRIES_DATA = np.array([n in P.DATA_NIBBLES for n in range(16)])
_RESERVED = np.array([n in P.RESERVED_NIBBLES for n in range(16)])


def type_nibbles(entries: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint8]:
    """Each PAGE_DATA entry's type nibble (bits 60-63)."""
    return (entries >> np.uint64(F.PAGE_DATA_TYPE_SHIFT)).astype(np.uint8)


def carries_data(nibbles: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
    """Which type nibbles carry a page of data (:data:`xlpy.stream.pagetypes.DATA_NIBBLES`)."""
    mask: npt.NDArray[np.bool_] = _CARRIES_DATA[nibbles]
    return mask


def reserved(nibbles: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
    """Which type nibbles the v2 spec reserves (0x5-0x8)."""
    mask: npt.NDArray[np.bool_] = _RESERVED[nibbles]
    return mask


def data_pages_in(entries: npt.NDArray[np.uint64]) -> int:
    """How many entries carry a page of data (NOTAB, L1-L4, pinned L1-L4)."""
    return int(np.count_nonzero(carries_data(type_nibbles(entries))))
