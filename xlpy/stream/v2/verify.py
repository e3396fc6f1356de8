"""Verifier of migration v2 streams, in two modes.

* **strict** applies the checks of Xen's ``verify-stream-v2`` (Debian's 4.17
  ``xen.migration.{libxc,libxl}``): padding and reserved fields must be zero,
  every record type must be known, lengths exact.  Where that tool is wrong on
  Python 3 we check what it means to check: EMULATOR_XENSTORE_DATA is judged
  as bytes (the tool compares a byte with ``'\\x00'`` and rejects every such
  record), and a checkpointed libxl stream is read with its layers
  interleaved as libxl does (the tool reads it as one libxc image).
* **tolerant** (default) accepts what the receivers accept: libxc's
  ``xg_sr_restore.c`` (4.6 and later) and libxl's stream reader.  Padding and
  reserved fields are ignored as the spec says restore must; optional
  records (bit 31) are skipped; vcpu records without context (sent by
  4.6-4.8) and TOOLSTACK records (4.6) are accepted with a warning; records a
  receiver would refuse for the guest type (PV records in an HVM image) are
  errors.

Errors are :class:`~xlpy.errors.StreamMalformed` (or ``StreamTruncated``)
naming the offset, record index and field.  :class:`V2Checker` judges one
element at a time so the receiver and the converter can verify while they
stream; :func:`verify_stream` drives the reader and returns a report.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xlpy.errors import StreamMalformed, error_json
from xlpy.stream.legacy.records import XlHeader
from xlpy.stream.source import ByteSource
from xlpy.stream.v2 import format as F
from xlpy.stream.v2.reader import V2Reader
from xlpy.stream.v2.records import (
    LIBXC,
    DomainHeader,
    Element,
    ImageHeader,
    LibxlHeader,
    V2Record,
)

_PV_ONLY = frozenset(
    {
        F.REC_TYPE_X86_PV_INFO,
        F.REC_TYPE_X86_PV_P2M_FRAMES,
        F.REC_TYPE_X86_PV_VCPU_BASIC,
        F.REC_TYPE_X86_PV_VCPU_EXTENDED,
        F.REC_TYPE_X86_PV_VCPU_XSAVE,
        F.REC_TYPE_X86_PV_VCPU_MSRS,
        F.REC_TYPE_SHARED_INFO,
    }
)
_HVM_ONLY = frozenset({F.REC_TYPE_HVM_CONTEXT, F.REC_TYPE_HVM_PARAMS})
_ZERO_LENGTH = {
    F.REC_TYPE_END: "End",
    F.REC_TYPE_VERIFY: "Verify",
    F.REC_TYPE_CHECKPOINT: "Checkpoint",
    F.REC_TYPE_STATIC_DATA_END: "Static data end",
}


def _err(rec: V2Record, message: str, field: str, rel: int = 0) -> StreamMalformed:
    """An error ``rel`` bytes into ``rec``'s body (negative: into its header)."""
    return StreamMalformed(
        message, offset=rec.offset + F.RHDR_SIZE + rel, record=rec.index, field=field
    )


def _header_fault(h: Element, name: str) -> Callable[[str, str, int], StreamMalformed]:
    """The errors of header ``h`` (``name``: ``image_header``, ...): a message, the field
    and where it starts, ``rel`` bytes into the header."""

    def fault(message: str, field: str, rel: int) -> StreamMalformed:
        return StreamMalformed(message, offset=h.offset + rel, field=f"{name}.{field}")

    return fault


def xenstore_pairs(data: bytes) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs of EMULATOR_XENSTORE_DATA, or ValueError saying what is wrong."""
    if not data:
        return []
    if data[-1] != 0:
        raise ValueError("data not NUL terminated")
    parts = data[:-1].split(b"\0")
    if len(parts) % 2:
        raise ValueError(f"expected an even number of strings, got {len(parts)}")
    return list(zip(parts[0::2], parts[1::2], strict=True))


@dataclass
class V2Checker:
    """Judges v2 elements one by one, in stream order (``check`` raises on a fault)."""

    strict: bool = False
    warnings: list[str] = field(default_factory=list)
    version: int = 0
    guest_type: int = 0
    checkpoints: int = 0
    pages: int = 0
    _static_data_end: bool = False

    def check(self, el: Element | XlHeader) -> None:
        """Check one element in stream order; raises :class:`StreamMalformed` naming its
        offset, record index and field (warnings for what only strict mode rejects)."""
        if isinstance(el, XlHeader):
            return  # the reader already matched the magic; xl checks nothing else we need
        if isinstance(el, LibxlHeader):
            self._libxl_header(el)
        elif isinstance(el, ImageHeader):
            self._image_header(el)
        elif isinstance(el, DomainHeader):
            self._domain_header(el)
        elif isinstance(el, V2Record):
            self._record(el)

    def _warn(self, rec: V2Record | None, msg: str) -> None:
        where = f" [offset {rec.offset}, record {rec.index}]" if rec is not None else ""
        self.warnings.append(msg + where)

    # -- headers ------------------------------------------------------------------

    def _libxl_header(self, h: LibxlHeader) -> None:
        bad = _header_fault(h, "libxl_header")
        if h.ident != F.LIBXL_HDR_IDENT:
            raise bad(f"bad libxl ident 0x{h.ident:x}", "ident", 0)
        if h.version != F.LIBXL_HDR_VERSION:
            raise bad(f"unknown libxl stream version {h.version}", "version", 8)
        if h.options & F.LIBXL_OPT_BIG_ENDIAN:
            raise bad("big-endian libxl stream", "options", 12)
        if self.strict and h.options & F.LIBXL_OPT_RESZ_MASK:
            raise bad(
                f"reserved bits set in libxl options: 0x{h.options & F.LIBXL_OPT_RESZ_MASK:x}",
                "options",
                12,
            )

    def _image_header(self, h: ImageHeader) -> None:
        bad = _header_fault(h, "image_header")
        if h.marker != F.IHDR_MARKER:
            raise bad(f"bad image marker 0x{h.marker:016x}", "marker", 0)
        if h.id != F.IHDR_ID:
            raise bad(f"bad image id 0x{h.id:08x}, expected 0x{F.IHDR_ID:08x}", "id", 8)
        if not F.IHDR_VERSION_MIN <= h.version <= F.IHDR_VERSION_MAX:
            raise bad(f"unknown image version {h.version}, expected 2 or 3", "version", 12)
        if h.options & F.IHDR_OPT_BIG_ENDIAN:
            raise bad("big-endian image: unable to handle", "options", 16)
        if self.strict and h.options & F.IHDR_OPT_RESZ_MASK:
            raise bad(f"reserved bits set in image options: 0x{h.options:x}", "options", 16)
        if self.strict and (h.reserved1 or h.reserved2):
            raise bad(
                f"reserved bits set in image header: 0x{h.reserved1:04x}:0x{h.reserved2:08x}",
                "reserved",
                18,
            )
        self.version = h.version
        self._static_data_end = False

    def _domain_header(self, h: DomainHeader) -> None:
        bad = _header_fault(h, "domain_header")
        if h.type not in (F.DHDR_TYPE_X86_PV, F.DHDR_TYPE_X86_HVM):
            raise bad(f"unsupported domain type 0x{h.type:x} ({h.type_name})", "type", 0)
        if self.strict and h.reserved:
            raise bad(f"reserved bits set in domain header: 0x{h.reserved:04x}", "reserved", 6)
        if h.page_shift != F.PAGE_SHIFT:
            raise bad(f"page shift {h.page_shift}, expected 12", "page_shift", 4)
        self.guest_type = h.type

    # -- records -------------------------------------------------------------------

    def _record(self, rec: V2Record) -> None:
        names = F.LIBXC_REC_NAMES if rec.layer == LIBXC else F.LIBXL_REC_NAMES
        if rec.type not in names:
            if not self.strict and rec.type & F.REC_TYPE_OPTIONAL:
                self._warn(rec, f"skipped optional {rec.layer} record 0x{rec.type:08x}")
                return
            raise _err(rec, f"unrecognised {rec.layer} record type 0x{rec.type:x}", "type", -8)
        if self.strict and any(rec.padding):
            raise _err(rec, "padding containing non-zero bytes", "padding", rec.length)
        if rec.layer == LIBXC:
            self._libxc_record(rec)
        else:
            self._libxl_record(rec)

    def _libxc_record(self, rec: V2Record) -> None:
        t = rec.type
        n = rec.length
        strict = self.strict
        if not strict:
            if t in _PV_ONLY and self.guest_type == F.DHDR_TYPE_X86_HVM:
                raise _err(rec, f"{rec.name} record in an HVM image", "type", -8)
            if t in _HVM_ONLY and self.guest_type == F.DHDR_TYPE_X86_PV:
                raise _err(rec, f"{rec.name} record in a PV image", "type", -8)
        if t in _ZERO_LENGTH:
            if strict and n:
                raise _err(rec, f"{_ZERO_LENGTH[t]} record with non-zero length {n}", "length", -4)
            if t == F.REC_TYPE_CHECKPOINT:
                self.checkpoints += 1
            if t == F.REC_TYPE_STATIC_DATA_END:
                if strict and self.version < 3:
                    raise _err(rec, "Static data end record found in v2 stream", "type", -8)
                if not strict and self._static_data_end:
                    raise _err(rec, "multiple STATIC_DATA_END records", "type", -8)
                self._static_data_end = True
        elif t == F.REC_TYPE_PAGE_DATA:
            self._page_data(rec)
        elif t == F.REC_TYPE_X86_PV_INFO:
            if (n != 8) if strict else (n < 8):
                raise _err(rec, f"X86_PV_INFO length {n}, expected 8", "length", -4)
            w, lv, r1, r2 = F.X86_PV_INFO_FORMAT.unpack_from(rec.body)
            if w not in (4, 8):
                raise _err(rec, f"guest width {w}, expected 4 or 8", "guest_width", 0)
            if lv not in (3, 4):
                raise _err(rec, f"pt levels {lv}, expected 3 or 4", "pt_levels", 1)
            if strict and (r1 or r2):
                raise _err(rec, f"reserved bits set in X86_PV_INFO: {r1:#x} {r2:#x}", "reserved", 2)
        elif t == F.REC_TYPE_X86_PV_P2M_FRAMES:
            if n < 8 or n % 8:
                raise _err(rec, f"X86_PV_P2M_FRAMES length {n}, need 8 + 8 * frames", "length", -4)
            start, end = F.X86_PV_P2M_FRAMES_FORMAT.unpack_from(rec.body)
            if not strict and start > end:
                raise _err(rec, f"p2m end pfn {end:#x} before start {start:#x}", "p2m_end_pfn", 4)
        elif t in (
            F.REC_TYPE_X86_PV_VCPU_BASIC,
            F.REC_TYPE_X86_PV_VCPU_EXTENDED,
            F.REC_TYPE_X86_PV_VCPU_XSAVE,
            F.REC_TYPE_X86_PV_VCPU_MSRS,
        ):
            if n < 8:
                raise _err(rec, f"{rec.name} length {n}, need at least 8", "length", -4)
            _, res = F.X86_PV_VCPU_HDR_FORMAT.unpack_from(rec.body)
            if strict and res:
                raise _err(rec, f"reserved bits set in {rec.name}: {res:#x}", "reserved", 4)
            if n == 8:
                self._warn(rec, f"{rec.name} record with zero content")
        elif t == F.REC_TYPE_SHARED_INFO:
            if n != F.SHARED_INFO_SIZE:
                raise _err(rec, f"SHARED_INFO length {n}, expected 4096", "length", -4)
        elif t == F.REC_TYPE_X86_TSC_INFO:
            if n != F.X86_TSC_INFO_FORMAT.size:
                raise _err(rec, f"TSC_INFO length {n}, expected 24", "length", -4)
            if strict and F.X86_TSC_INFO_FORMAT.unpack_from(rec.body)[4]:
                raise _err(rec, "reserved bits set in TSC_INFO", "reserved", 20)
        elif t == F.REC_TYPE_HVM_CONTEXT:
            if n == 0:
                raise _err(rec, "zero length HVM context", "length", -4)
        elif t == F.REC_TYPE_HVM_PARAMS:
            self._hvm_params(rec)
        elif t == F.REC_TYPE_TOOLSTACK:
            if strict:
                raise _err(rec, "TOOLSTACK record (deprecated) in stream", "type", -8)
            self._warn(rec, "TOOLSTACK record (only Xen 4.6 receivers use it)")
        elif t == F.REC_TYPE_CHECKPOINT_DIRTY_PFN_LIST:
            raise _err(rec, "CHECKPOINT_DIRTY_PFN_LIST belongs to the back channel", "type", -8)
        elif t in (F.REC_TYPE_X86_CPUID_POLICY, F.REC_TYPE_X86_MSR_POLICY):
            size = (
                F.X86_CPUID_POLICY_ENTRY_SIZE
                if t == F.REC_TYPE_X86_CPUID_POLICY
                else F.X86_MSR_POLICY_ENTRY_SIZE
            )
            if strict and self.version < 3:
                raise _err(rec, f"{rec.name} record found in v2 stream", "type", -8)
            if n % size or (strict and n < size):
                raise _err(
                    rec, f"{rec.name} length {n}, expected a multiple of {size}", "length", -4
                )

    def _page_data(self, rec: V2Record) -> None:
        n = rec.length
        strict = self.strict
        if n < 8 or (strict and n == 8):
            raise _err(rec, f"PAGE_DATA record length {n}, too short", "length", -4)
        count, res = F.PAGE_DATA_HDR_FORMAT.unpack_from(rec.body)
        if strict and res:
            raise _err(rec, f"reserved bits set in PAGE_DATA: {res:#x}", "reserved", 4)
        if count < 1:
            raise _err(rec, "PAGE_DATA record with count 0", "count", 0)
        if n < 8 + 8 * count:
            raise _err(rec, f"PAGE_DATA length {n} too short for {count} pfns", "length", -4)
        ent = np.frombuffer(rec.body, dtype="<u8", count=count, offset=8)
        if strict:
            resz = np.nonzero(ent & np.uint64(F.PAGE_DATA_PFN_RESZ_MASK))[0]
            if len(resz):
                i = int(resz[0])
                raise _err(
                    rec,
                    f"reserved bits set in pfn[{i}]: 0x{int(ent[i]):016x}",
                    f"pfn[{i}]",
                    8 + 8 * i,
                )
        nib = (ent >> np.uint64(F.PAGE_DATA_TYPE_SHIFT)).astype(np.uint8)
        bad = np.nonzero((nib >= 5) & (nib <= 8))[0]
        if len(bad):
            i = int(bad[0])
            raise _err(
                rec, f"invalid type in pfn[{i}]: 0x{int(ent[i]):016x}", f"pfn[{i}].type", 8 + 8 * i
            )
        pages = int(np.count_nonzero((nib <= 4) | (nib >= 9) & (nib <= 0xC)))
        want = 8 + 8 * count + F.PAGE_SIZE * pages
        if n != want:
            raise _err(
                rec,
                f"PAGE_DATA length {n}, expected {want} ({count} pfns, {pages} pages)",
                "length",
                -4,
            )
        self.pages += pages

    def _hvm_params(self, rec: V2Record) -> None:
        n = rec.length
        if n < 8:
            raise _err(rec, f"HVM_PARAMS length {n}, need at least 8", "length", -4)
        count, res = F.HVM_PARAMS_FORMAT.unpack_from(rec.body)
        if self.strict and res:
            raise _err(rec, f"reserved field not zero in HVM_PARAMS: {res:#x}", "reserved", 4)
        want = 8 + 16 * count
        if (n != want) if self.strict else (n < want):
            raise _err(
                rec, f"HVM_PARAMS length {n}, expected {want} for {count} params", "length", -4
            )
        if count == 0:
            self._warn(rec, "HVM_PARAMS record with zero content")

    def _libxl_record(self, rec: V2Record) -> None:
        t = rec.type
        n = rec.length
        if t in (F.REC_TYPE_LIBXL_END, F.REC_TYPE_LIBXC_CONTEXT, F.REC_TYPE_CHECKPOINT_END):
            if self.strict and n:
                raise _err(rec, f"{rec.name} record with non-zero length {n}", "length", -4)
        elif t in (F.REC_TYPE_EMULATOR_XENSTORE_DATA, F.REC_TYPE_EMULATOR_CONTEXT):
            if n < 8:
                raise _err(rec, f"{rec.name} length {n}, need at least 8", "length", -4)
            emu_id, _ = F.EMULATOR_HEADER_FORMAT.unpack_from(rec.body)
            if emu_id not in F.EMULATOR_ID_NAMES:
                raise _err(rec, f"unrecognised emulator id {emu_id:#x}", "emulator_id", 0)
            if t == F.REC_TYPE_EMULATOR_XENSTORE_DATA:
                try:
                    xenstore_pairs(rec.body[8:])
                except ValueError as e:
                    raise _err(rec, f"EMULATOR_XENSTORE_DATA {e}", "data", 8) from None
        elif t == F.REC_TYPE_CHECKPOINT_STATE and n == 0:
            raise _err(rec, "CHECKPOINT_STATE record with zero length", "length", -4)


@dataclass
class VerifyReport:
    """What :func:`verify_stream` saw: ``error`` is ``None`` for a valid stream."""

    strict: bool
    framing: str = "bare"
    format: str = LIBXC
    guest: str | None = None
    version: int = 0
    records: int = 0
    pages: int = 0
    checkpoints: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)
    trailing_data: bool = False
    error: StreamMalformed | Exception | None = None

    @property
    def valid(self) -> bool:
        """True when the whole stream passed (no :attr:`error`)."""
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        """The report as ``xlpy verify --json`` prints it (the error with its offset,
        record index and field)."""
        err = self.error
        return {
            "valid": self.valid,
            "mode": "strict" if self.strict else "tolerant",
            "framing": self.framing,
            "format": self.format,
            "guest": self.guest,
            "version": self.version,
            "records": self.records,
            "pages": self.pages,
            "checkpoints": self.checkpoints,
            "counts": dict(self.counts),
            "warnings": self.warnings,
            "trailing_data": self.trailing_data,
            "error": None if err is None else error_json(err),
        }


def verify_stream(
    source: ByteSource,
    *,
    strict: bool = False,
    xl: bool | None = None,
    fmt: str | None = None,
    on_element: Callable[[Element | XlHeader], None] | None = None,
) -> VerifyReport:
    """Read and check a whole v2 stream; stream faults land in ``report.error``.

    ``xl``/``fmt`` as for :class:`~xlpy.stream.v2.reader.V2Reader` (``None`` detects).
    Bytes after the outermost END (e.g. the QEMU record of an ``xl save`` file
    in libxc format) are reported as ``trailing_data``, not judged.
    """
    from xlpy.errors import StreamError

    reader = V2Reader(source, xl=xl, fmt=fmt)
    checker = V2Checker(strict=strict)
    report = VerifyReport(strict=strict)
    try:
        for el in reader.elements():
            checker.check(el)
            if isinstance(el, V2Record):
                report.counts[f"{el.layer}:{el.name}"] += 1
            if on_element is not None:
                on_element(el)
        report.trailing_data = not source.at_eof()
    except StreamError as e:
        report.error = e
    report.framing = reader.framing
    report.format = reader.format or LIBXC
    report.records = reader.records
    report.version = checker.version
    report.guest = {F.DHDR_TYPE_X86_PV: "pv", F.DHDR_TYPE_X86_HVM: "hvm"}.get(checker.guest_type)
    report.pages = checker.pages
    report.checkpoints = checker.checkpoints
    report.warnings = checker.warnings
    return report
