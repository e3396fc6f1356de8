"""Streaming writer of migration v2 streams (libxc, libxl, xl save framing).

The writer emits bytes in call order and keeps no state beyond the output
offset, so callers build any layout the specs allow: a bare libxc image, a
libxl stream (``libxl_header``, ``libxc_context``, the libxc image, emulator
records, ``end``), an ``xl save`` file (``xl_header`` first), or checkpointed
streams (``checkpoint`` in the libxc image followed by libxl records and
``checkpoint_end``).  Every record is padded with zeros to 8 bytes, exactly as
libxc's ``write_split_record`` and Xen's ``convert-legacy-stream`` do.

Page data goes out as one ``write`` of the caller's buffer per batch: no
per-page objects, no copy of the page bytes.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, BinaryIO, SupportsIndex

from xlpy.stream import xlheader
from xlpy.stream.legacy.format import XL_BYTEORDER_LE, XL_MAGIC, XL_MANDATORY_FLAG_STREAMv2
from xlpy.stream.v2 import format as F

if TYPE_CHECKING:  # numpy costs ~0.1 s to import: only page_data() needs it (convert start-up)
    import numpy.typing as npt

Buffer = bytes | bytearray | memoryview

_ZEROS = bytes(F.REC_ALIGN)


class V2Writer:
    """Writes v2 elements to a binary file object; :attr:`offset` counts bytes written."""

    def __init__(self, out: BinaryIO) -> None:
        """Write to ``out`` (a file, pipe or BytesIO) from :attr:`offset` 0; never seeks."""
        self._out = out
        self.offset = 0

    def _write(self, data: Buffer) -> None:
        n = self._out.write(data)
        if n is not None and n != len(data):
            # Raw (unbuffered) files may write short: finish the job.
            mv = memoryview(data)[n:]
            while mv:
                k = self._out.write(mv) or 0
                mv = mv[k:]
        self.offset += len(data)

    # -- headers -------------------------------------------------------------

    def xl_header(
        self,
        *,
        mandatory_flags: int = XL_MANDATORY_FLAG_STREAMv2,
        optional_flags: int = 0,
        optional_data: bytes = b"",
    ) -> None:
        """The ``xl save`` header; STREAMv2 (bit 1) says a libxl v2 stream follows."""
        self._write(
            XL_MAGIC
            + xlheader.XL_HEADER_FORMAT.pack(
                XL_BYTEORDER_LE, mandatory_flags, optional_flags, len(optional_data)
            )
            + optional_data
        )

    def libxl_header(self, *, options: int = 0) -> None:
        """libxl stream header; pass ``options=F.LIBXL_OPT_LEGACY`` for converted images."""
        self._write(F.LIBXL_HDR_FORMAT.pack(F.LIBXL_HDR_IDENT, F.LIBXL_HDR_VERSION, options))

    def image_header(self, *, version: int = 3, options: int = 0) -> None:
        """libxc image header (version 3 = with STATIC_DATA_END, as Xen 4.14+ writes)."""
        self._write(F.IHDR_FORMAT.pack(F.IHDR_MARKER, F.IHDR_ID, version, options, 0, 0))

    def domain_header(
        self, guest_type: int, *, xen_major: int = 0, xen_minor: int = 0, page_shift: int = 12
    ) -> None:
        """libxc domain header; ``xen_major=0`` marks an image converted from legacy."""
        self._write(F.DHDR_FORMAT.pack(guest_type, page_shift, 0, xen_major, xen_minor))

    # -- records ---------------------------------------------------------------

    def write_record(self, rec_type: int, *parts: Buffer) -> None:
        """One record whose body is ``parts`` concatenated, padded to 8 bytes."""
        length = sum(memoryview(p).nbytes for p in parts)
        self._write(F.RHDR_FORMAT.pack(rec_type, length))
        for p in parts:
            if len(p):
                self._write(p)
        pad = F.padding_for(length)
        if pad:
            self._write(_ZEROS[:pad])

    def write_record_head(self, rec_type: int, tail: int, *parts: Buffer) -> None:
        """The header and leading ``parts`` of a record whose last ``tail`` bytes the caller
        writes to the output itself, right after (flushing any buffered writer first).

        :attr:`offset` counts them as written.  The body must need no padding (PAGE_DATA
        whose pages follow its entries).
        """
        length = sum(memoryview(p).nbytes for p in parts) + tail
        if F.padding_for(length):
            raise ValueError(f"record body of {length} bytes needs padding: write it whole")
        self._write(F.RHDR_FORMAT.pack(rec_type, length))
        for p in parts:
            if len(p):
                self._write(p)
        self.offset += tail

    def page_data(self, entries: npt.ArrayLike, pages: Buffer) -> None:
        """A PAGE_DATA batch from v2 pfn entries (see :func:`page_entries`) and the pages.

        ``pages`` holds 4096 bytes for each data-bearing entry, in entry order.
        """
        import numpy as np

        from xlpy.stream.v2.records import data_pages_in

        ent = np.ascontiguousarray(entries, dtype="<u8")
        need = data_pages_in(ent.astype(np.uint64)) * F.PAGE_SIZE
        got = memoryview(pages).nbytes
        if got != need:
            raise ValueError(f"PAGE_DATA: {len(ent)} entries need {need} bytes of pages, got {got}")
        self.write_record(
            F.REC_TYPE_PAGE_DATA,
            F.PAGE_DATA_HDR_FORMAT.pack(len(ent), 0),
            ent.tobytes(),
            pages,
        )

    def page_data_pfns(
        self, pfns: npt.ArrayLike, pages: Buffer, types: npt.ArrayLike | None = None
    ) -> None:
        """A PAGE_DATA batch from pfns and XEN_DOMCTL_PFINFO_* types (default NOTAB)."""
        from xlpy.stream.v2.records import page_entries

        self.page_data(page_entries(pfns, types), pages)

    def x86_pv_info(self, guest_width: int, pt_levels: int) -> None:
        """X86_PV_INFO: guest width in bytes (4 or 8) and page-table levels (3 or 4)."""
        self.write_record(
            F.REC_TYPE_X86_PV_INFO, F.X86_PV_INFO_FORMAT.pack(guest_width, pt_levels, 0, 0)
        )

    def x86_pv_p2m_frames(
        self, start_pfn: int, end_pfn: int, pfns: Iterable[SupportsIndex]
    ) -> None:
        """X86_PV_P2M_FRAMES: the pfn range the p2m covers (``end_pfn`` inclusive) and the
        mfns of the p2m's frames, one u64 each."""
        self.write_record(
            F.REC_TYPE_X86_PV_P2M_FRAMES,
            F.X86_PV_P2M_FRAMES_FORMAT.pack(start_pfn, end_pfn),
            _u64s(pfns),
        )

    def _vcpu(self, rec_type: int, vcpu_id: int, context: Buffer) -> None:
        self.write_record(rec_type, F.X86_PV_VCPU_HDR_FORMAT.pack(vcpu_id, 0), context)

    def x86_pv_vcpu_basic(self, vcpu_id: int, context: Buffer) -> None:
        """X86_PV_VCPU_BASIC: the vcpu's ``vcpu_guest_context`` (guest-width layout)."""
        self._vcpu(F.REC_TYPE_X86_PV_VCPU_BASIC, vcpu_id, context)

    def x86_pv_vcpu_extended(self, vcpu_id: int, context: Buffer) -> None:
        """X86_PV_VCPU_EXTENDED: the extended context (``XEN_DOMCTL_get_ext_vcpucontext``)."""
        self._vcpu(F.REC_TYPE_X86_PV_VCPU_EXTENDED, vcpu_id, context)

    def x86_pv_vcpu_xsave(self, vcpu_id: int, context: Buffer) -> None:
        """X86_PV_VCPU_XSAVE: the vcpu's xsave area (``XEN_DOMCTL_getvcpuextstate``)."""
        self._vcpu(F.REC_TYPE_X86_PV_VCPU_XSAVE, vcpu_id, context)

    def x86_pv_vcpu_msrs(self, vcpu_id: int, context: Buffer) -> None:
        """X86_PV_VCPU_MSRS: the vcpu's MSRs (``xen_domctl_vcpu_msr`` entries, 16 bytes each)."""
        self._vcpu(F.REC_TYPE_X86_PV_VCPU_MSRS, vcpu_id, context)

    def shared_info(self, page: Buffer) -> None:
        """SHARED_INFO: the guest's 4096-byte shared info page (PV)."""
        self.write_record(F.REC_TYPE_SHARED_INFO, page)

    def tsc_info(self, mode: int, khz: int, nsec: int, incarnation: int) -> None:
        """X86_TSC_INFO: TSC mode, guest TSC frequency in kHz, elapsed ns, incarnation."""
        self.write_record(
            F.REC_TYPE_X86_TSC_INFO, F.X86_TSC_INFO_FORMAT.pack(mode, khz, nsec, incarnation, 0)
        )

    def hvm_context(self, blob: Buffer) -> None:
        """HVM_CONTEXT: the hypervisor's HVM save record blob (``xc_domain_hvm_getcontext``)."""
        self.write_record(F.REC_TYPE_HVM_CONTEXT, blob)

    def hvm_params(self, params: Sequence[tuple[int, int]]) -> None:
        """HVM_PARAMS from (index, value) pairs, in the given order."""
        flat = _u64s([v for pair in params for v in pair])
        self.write_record(F.REC_TYPE_HVM_PARAMS, F.HVM_PARAMS_FORMAT.pack(len(params), 0), flat)

    def static_data_end(self) -> None:
        """STATIC_DATA_END (image version 3): the static records (X86_PV_INFO ...) are done."""
        self.write_record(F.REC_TYPE_STATIC_DATA_END)

    def verify(self) -> None:
        """VERIFY: the following PAGE_DATA re-sends pages for the receiver to compare."""
        self.write_record(F.REC_TYPE_VERIFY)

    def checkpoint(self) -> None:
        """CHECKPOINT: the end of one checkpoint of a checkpointed (Remus/COLO) stream."""
        self.write_record(F.REC_TYPE_CHECKPOINT)

    def end(self) -> None:
        """END of a libxc image, or of a libxl stream (both are type 0)."""
        self.write_record(F.REC_TYPE_END)

    # -- libxl records -----------------------------------------------------------

    def libxc_context(self) -> None:
        """Marks where the libxc image starts inside a libxl stream."""
        self.write_record(F.REC_TYPE_LIBXC_CONTEXT)

    def emulator_xenstore_data(
        self,
        data: Buffer | Iterable[tuple[bytes, bytes]],
        *,
        emulator_id: int = F.EMULATOR_ID_UNKNOWN,
        index: int = 0,
    ) -> None:
        """EMULATOR_XENSTORE_DATA from raw NUL-terminated pairs or (key, value) tuples."""
        if not isinstance(data, bytes | bytearray | memoryview):
            data = b"".join(k + b"\0" + v + b"\0" for k, v in data)
        self.write_record(
            F.REC_TYPE_EMULATOR_XENSTORE_DATA,
            F.EMULATOR_HEADER_FORMAT.pack(emulator_id, index),
            data,
        )

    def emulator_context(
        self, blob: Buffer, *, emulator_id: int = F.EMULATOR_ID_UNKNOWN, index: int = 0
    ) -> None:
        """EMULATOR_CONTEXT: the device model's saved state (QEMU's ``QEVM`` blob)."""
        self.write_record(
            F.REC_TYPE_EMULATOR_CONTEXT, F.EMULATOR_HEADER_FORMAT.pack(emulator_id, index), blob
        )

    def checkpoint_end(self) -> None:
        """CHECKPOINT_END (libxl): the libxl records of a checkpoint are done."""
        self.write_record(F.REC_TYPE_CHECKPOINT_END)


def _u64s(values: Iterable[SupportsIndex]) -> bytes:
    """Little-endian u64s (plain struct: no numpy import for a few words)."""
    seq = [operator.index(v) for v in values]
    return struct.pack(f"<{len(seq)}Q", *seq)
