"""Migration v2 → legacy: replay a modern image as an old sender's stream.

:func:`v2_to_legacy` reads a v2 stream (bare libxc image, libxl stream or
``xl save`` file; x86 PV or HVM) with :class:`~xlpy.stream.v2.reader.V2Reader`
and writes the legacy stream that a sender profile (``xen-4.0`` … ``xen-4.5``;
toolstack ``bare``, ``xend``, ``xl`` or ``xenserver-classic``) would have
written for that guest.  Which chunks, in which order, under which condition,
comes from :mod:`xlpy.stream.legacy.senders` (``end_of_checkpoint_list``,
``pv_ext_info``, ``qemu_record``, ``libxl_toolstack_blob``); the bytes from
:class:`~xlpy.stream.legacy.writer.LegacyWriter`.

Mapping (the inverse of Xen's ``convert-legacy-stream``):

* PAGE_DATA → page batches of at most 1024 W-sized entries, type nibble in
  bits 28-31; XTAB entries as the bare ``0xF0000000`` a sender writes; batches
  with nothing but XTAB are not written (as a sender never writes them);
* X86_PV_INFO + X86_PV_P2M_FRAMES → ``p2m_size``, ext-info ("vcpu" = vcpu0's
  basic context, "extv" when extended contexts exist, "xcnt" when vcpus have
  xsave and the sender knows it: 4.1+) and the p2m frame list;
* X86_PV_VCPU_BASIC/EXTENDED/XSAVE, SHARED_INFO → PV tail and -2 VCPU_INFO
  (online = vcpus with a basic context; max id = highest online, since v2 does
  not carry the offline ones); the xsave mask, which v2 drops, is rebuilt as
  ``xcr0 | xcr0_accum`` from the first 16 bytes of the area;
* HVM_PARAMS → the HVM-param chunks the sender knows (non-zero only) and the
  tail's ioreq/bufioreq/store pfns; HVM_CONTEXT → tail context; -2 from the
  context's CPU records (vcpu0 alone when there are none);
* TSC_INFO → -7 where it stands (as a live sender sends it; Remus: first
  checkpoint only); VERIFY → -1;
* libxl EMULATOR_CONTEXT (or a ``DeviceModelRecord0002`` after a bare libxc
  image, as Xen's converter writes one) → the QEMU record of the toolstack;
  EMULATOR_XENSTORE_DATA physmap → the -18 blob (xl, 4.2+); the xl header →
  the legacy xl header without STREAMv2, its config kept verbatim (JSON flag
  included: a modern xl restores it, a 4.1-4.3 xl could not read JSON; no xl
  header in the input: one without config, so ``xl restore`` needs a config
  file); xend → a minimal S-expression config (name, memory, vcpus from the xl
  config when there is one, else from the stream; image type ``linux``/``hvm``);
* CHECKPOINT → a legacy Remus stream (no -9), one legacy checkpoint per v2
  checkpoint; a segment after the last CHECKPOINT becomes one more only if it
  carries state; an input cut inside a later checkpoint (a Remus failover) gives
  a legacy stream cut at the same point, with a warning.

Dropped with a warning (legacy restore is equivalent): CPUID/MSR policy
records (no legacy stream carried one: the restoring Xen applies the policy it
gives every pre-4.14 image), HVM params legacy senders never sent or this
sender does not know (the receiver keeps its default, as it did for that
sender's images), the VM86 TSS size (the legacy chunk carries the address;
Xen then assumes 128 bytes), later Remus TSC_INFO (senders sent -7 once),
optional records, emulator data a framing cannot carry.  Silently dropped:
STATIC_DATA_END, MSR records whose values are all zero.  Refused with
:class:`~xlpy.errors.NotRepresentable`: PVH/ARM, non-zero PV MSRs, xsave state
beyond x87/SSE for a sender without xsave, page types or vcpu counts the
sender cannot express, COLO records, HVM without QEMU data for a toolstack
that must send it.

Memory stays O(one batch): the first checkpoint's body waits in a temporary
file (``spool_dir``) because the legacy header needs what v2 sends after the
pages (vcpu0's context, "extv"/"xcnt", an HVM guest's ``p2m_size``); later
checkpoints stream straight through.  The first checkpoint's page bytes do not pass
through Python when the input is a pipe or file: the source splices them into the
spool (:class:`_SpoolPages`), and the spool goes to an output descriptor by
``sendfile``, so the pages are copied once, into the spool's page cache.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO, cast

import numpy as np

from xlpy.errors import NotRepresentable, StreamMalformed, StreamTruncated, UsageError
from xlpy.guest import MIN_PAGES, GuestSpec
from xlpy.outfile import output_fd, output_name
from xlpy.progress import ProgressFn, RunProgress
from xlpy.stream.hvm_params import (
    CHUNK_TO_HVM_PARAM,
    HVM_PARAM_VM86_TSS_SIZED,
    HVM_TAIL_PARAMS,
)
from xlpy.stream.legacy import format as LF
from xlpy.stream.legacy.reader import PagePlacement
from xlpy.stream.legacy.records import (
    EnableVerifyMode,
    HvmTail,
    P2mFrameList,
    PageBatch,
    PvTail,
    StreamHeader,
    Trailer,
    TscInfo,
    VcpuState,
    XendHeader,
    XlHeader,
    XsaveRecord,
)
from xlpy.stream.legacy.senders import (
    FOREIGN_TRAILER,
    SenderProfile,
    end_of_checkpoint_list,
    hvm_param_chunks,
    libxl_toolstack_blob,
    pv_ext_info,
    qemu_record,
)
from xlpy.stream.legacy.writer import LegacyWriter
from xlpy.stream.source import ByteSource
from xlpy.stream.v2 import format as F
from xlpy.stream.v2.reader import V2Reader
from xlpy.stream.v2.records import (
    LIBXC,
    DomainHeader,
    EmulatorRecord,
    HvmParams,
    ImageHeader,
    PageData,
    V2Record,
    X86PvInfo,
    X86PvP2mFrames,
    X86PvVcpu,
    X86TscInfo,
    carries_data,
    reserved,
    type_nibbles,
)

WarnFn = Callable[[str], None]


class LossyConversion(UserWarning):
    """Something of the v2 stream has no legacy form and was dropped (restore is equivalent)."""


#: v2 HVM param → the legacy chunk that carried it (Xen's converter, inverted); a
#: sized VM86 TSS (4.8+) went out as the plain one.
_PARAM_CHUNK = {param: chunk for chunk, param in CHUNK_TO_HVM_PARAM.items()} | {
    HVM_PARAM_VM86_TSS_SIZED: LF.XC_SAVE_ID_HVM_VM86_TSS
}
#: Old hvmloaders had a 128-byte TSS; Xen gives a VM86_TSS set without size that size.
_LEGACY_VM86_TSS_SIZE = 128

#: Page types a sender version could write (legacy-stream.md §4.2): XALLOC from
#: 4.2, BROKEN from 4.3; the rest always.
_NIBBLE_SINCE = {0xE: (4, 2), 0xD: (4, 3)}
_XTAB = 0xF

#: HVM save record typecode of a vcpu's CPU state (``HVM_SAVE_CODE(CPU)``).
_HVM_SAVE_CODE_CPU = 2
_HVM_SAVE_DESC = struct.Struct("<HHI")
#: XSTATE_FP | XSTATE_SSE: the state a vcpu_guest_context's FXSAVE area holds.
_XSTATE_FP_SSE = 0x3
_MSR_ENTRY = struct.Struct("<IIQ")


@dataclass
class _Segment:
    """What one v2 checkpoint says beyond its pages (kept until its legacy tail)."""

    basic: dict[int, bytes] = field(default_factory=dict)
    extended: dict[int, bytes] = field(default_factory=dict)
    xsave: dict[int, bytes] = field(default_factory=dict)
    shared_info: bytes | None = None
    hvm_context: bytes | None = None
    hvm_params: dict[int, int] = field(default_factory=dict)
    toolstack: bytes | None = None
    xenstore: bytes | None = None
    qemu: bytes | None = None
    #: A record that carries guest state was seen (an empty last segment is no checkpoint).
    state: bool = False


def v2_to_legacy(
    source: ByteSource,
    out: BinaryIO,
    *,
    sender: str,
    toolstack: str,
    width: int = 8,
    trailer: str = "eof",
    progress: ProgressFn | None = None,
    warn: WarnFn | None = None,
    spool_dir: str | None = None,
) -> None:
    """Write to ``out`` the legacy stream ``sender``/``toolstack`` would have sent for ``source``.

    ``width`` is the toolstack width W (4 or 8 bytes; 32/64 accepted);
    ``trailer`` ``"foreign"`` appends xl's handshake bytes after the image.
    ``progress`` gets ``{"phase", "checkpoint", "pages", "bytes"}`` dicts;
    ``warn`` each lossy-but-equivalent drop (default: :class:`LossyConversion`
    warnings).  Raises :class:`~xlpy.errors.UsageError` for a bad profile
    before reading, :class:`~xlpy.errors.NotRepresentable` for input no legacy
    sender could express, other :class:`~xlpy.errors.StreamError` for bad input.
    """
    w = {32: 4, 64: 8}.get(width, width)
    profile = SenderProfile(sender=sender, toolstack=toolstack, trailer=trailer, width=w)
    profile.check(GuestSpec(kind="pv", pages=MIN_PAGES["pv"], vcpus=1))
    _Converter(source, out, profile, progress, warn, spool_dir).run()


class _SpoolPages:
    """PageSink of the converter while the first checkpoint is spooled: a PAGE_DATA
    record's page bytes go from the source into the spool file (in the kernel where
    the input is a pipe or file), each batch's after a gap its header fills once
    :meth:`_Converter._page_data` has judged the entries.  A record whose byte count
    does not fit its entries is read as without a sink, for that method to refuse."""

    def __init__(self, conv: _Converter) -> None:
        self.conv = conv

    def place(self, entries: bytes, width: int, nbytes: int) -> PagePlacement | None:
        conv = self.conv
        spool = conv.spool
        if spool is None:
            return None  # later checkpoints go to the output as they come
        nib = type_nibbles(np.frombuffer(entries, dtype="<u8"))
        is_data = carries_data(nib)
        if int(np.count_nonzero(is_data)) * F.PAGE_SIZE != nbytes:
            return None
        spool.flush()
        base = conv._placed_at = spool.tell()
        pieces = [
            (base + at + 4 + conv.w * (e - s), hi - lo)
            for s, e, lo, hi, at in _batches(nib, is_data, conv.w)
            if hi > lo
        ]
        return PagePlacement(spool.fileno(), pieces, "the spool file")


class _Converter:
    def __init__(
        self,
        source: ByteSource,
        out: BinaryIO,
        profile: SenderProfile,
        progress: ProgressFn | None,
        warn: WarnFn | None,
        spool_dir: str | None,
    ) -> None:
        self.source = source
        self.out = out
        self.p = profile
        self.w = profile.width
        self._report = RunProgress(
            progress, lambda: (self.checkpoints, self.pages, self.source.offset), first=1
        )
        self._warn_fn = warn
        self._warned: set[str] = set()
        self.reader = V2Reader(source, page_sink=_SpoolPages(self))
        #: Where the spool region of the PAGE_DATA record just placed starts.
        self._placed_at = 0
        self.kind = ""
        self.xl_header: XlHeader | None = None
        # PV header facts
        self.guest_width = 0
        self.p2m_size = 0
        self.p2m_frames: tuple[int, ...] | None = None
        self.extv = False
        self.xcnt: int | None = None
        # HVM: highest pfn seen in the first checkpoint (its p2m_size is max + 1)
        self.max_pfn = -1
        self.data_pages = 0
        self.pages = 0
        self.checkpoints = 0  # legacy checkpoints written
        self.remus = False
        self.seg = _Segment()
        self.spool: BinaryIO | None = cast(BinaryIO, tempfile.TemporaryFile(dir=spool_dir))  # noqa: SIM115
        self.body = LegacyWriter(self.spool, width=self.w)
        self.writer = LegacyWriter(out, width=self.w)
        self._rec: V2Record | None = None

    # -- diagnostics -----------------------------------------------------------------------

    def _warn(self, key: str, message: str) -> None:
        """One warning per ``key`` per stream."""
        if key in self._warned:
            return
        self._warned.add(key)
        if self._warn_fn is not None:
            self._warn_fn(message)
        else:
            warnings.warn(message, LossyConversion, stacklevel=4)

    def _refuse(self, message: str, field: str, value: int | None = None) -> NotRepresentable:
        rec = self._rec
        return NotRepresentable(
            f"not representable in a {self.p.sender} legacy stream: {message}",
            offset=rec.offset if rec else self.source.offset,
            record=rec.index if rec else None,
            field=field,
            value=value,
        )

    def _malformed(self, message: str, field: str, value: int | None = None) -> StreamMalformed:
        rec = self._rec
        return StreamMalformed(
            message,
            offset=rec.offset if rec else self.source.offset,
            record=rec.index if rec else None,
            field=field,
            value=value,
        )

    # -- driver ------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
        except StreamTruncated as e:
            if not (self.remus and self.checkpoints):
                self._report("failed", force=True)
                raise
            # A Remus sender that dies mid-checkpoint leaves exactly this: the
            # committed checkpoints, then a cut; the receiver fails over to the last.
            self._warn(
                "cut",
                f"input ends inside checkpoint {self.checkpoints + 1} ({e}): the legacy stream "
                "ends there too, as a failed-over Remus sender's does",
            )
            self._report("done", force=True, ended=True)
        except BaseException:
            self._report("failed", force=True)
            raise
        finally:
            if self.spool is not None:
                self.spool.close()

    def _run(self) -> None:
        pending_end = False  # libxc END/CHECKPOINT seen, libxl records of the segment follow
        for el in self.reader.elements():
            match el:
                case XlHeader():
                    self.xl_header = el
                case ImageHeader():
                    self._image_header(el)
                case DomainHeader():
                    self._domain_header(el)
                case V2Record(layer=layer) if layer == LIBXC:
                    self._rec = el
                    if el.type == F.REC_TYPE_END:
                        pending_end = True
                    elif el.type == F.REC_TYPE_CHECKPOINT:
                        self.remus = True
                        if self.reader.format == LIBXC:
                            self._finish_segment(final=False)
                        else:
                            pending_end = True
                    else:
                        self._libxc(el)
                case V2Record():
                    self._rec = el
                    self._libxl(el)
                    if el.type in (F.REC_TYPE_CHECKPOINT_END, F.REC_TYPE_LIBXL_END) and pending_end:
                        pending_end = False
                        self._finish_segment(final=el.type == F.REC_TYPE_LIBXL_END)
                case _:
                    pass  # the libxl stream header: nothing to check or carry
        self._rec = None
        if self.reader.format == LIBXC:
            self._trailing_qemu()
            self._finish_segment(final=True)
        if self.checkpoints == 0:
            raise self._malformed("the v2 stream holds no checkpoint", "stream")
        if self.p.trailer == "foreign":
            self.writer.write(Trailer(data=FOREIGN_TRAILER))
        self._report("done", force=True, ended=True)

    # -- headers ---------------------------------------------------------------------------------

    def _image_header(self, h: ImageHeader) -> None:
        if h.marker != F.IHDR_MARKER or h.id != F.IHDR_ID:
            raise StreamMalformed(
                "no libxc v2 image header (a legacy stream? convert it with `xlpy convert`)",
                offset=h.offset,
                field="image_header.marker",
                value=h.marker,
            )
        if not F.IHDR_VERSION_MIN <= h.version <= F.IHDR_VERSION_MAX:
            raise StreamMalformed(
                f"unknown libxc image version {h.version}",
                offset=h.offset,
                field="image_header.version",
                value=h.version,
            )
        if h.options & F.IHDR_OPT_BIG_ENDIAN:
            raise NotRepresentable(
                "big-endian image: legacy streams are little-endian x86",
                offset=h.offset,
                field="image_header.options",
                value=h.options,
            )

    def _domain_header(self, h: DomainHeader) -> None:
        kinds = {F.DHDR_TYPE_X86_PV: "pv", F.DHDR_TYPE_X86_HVM: "hvm"}
        if h.type not in kinds or h.page_shift != F.PAGE_SHIFT:
            raise NotRepresentable(
                f"{h.type_name} guest with page shift {h.page_shift}: legacy streams carry "
                "x86 PV and HVM guests with 4 KiB pages",
                offset=h.offset,
                field="domain_header.type",
                value=h.type,
            )
        self.kind = kinds[h.type]

    # -- libxc records -------------------------------------------------------------------------

    def _libxc(self, rec: V2Record) -> None:
        t = rec.type
        seg = self.seg
        body = rec.decode()
        match body:
            case PageData():
                seg.state = True
                self._page_data(body, rec.placed)
            case X86PvInfo():
                self._pv_info(body)
            case X86PvP2mFrames():
                self._p2m_frames(body)
            case X86PvVcpu() if t == F.REC_TYPE_X86_PV_VCPU_MSRS:
                self._msrs(body)
            case X86PvVcpu():
                seg.state = True
                store = {
                    F.REC_TYPE_X86_PV_VCPU_BASIC: seg.basic,
                    F.REC_TYPE_X86_PV_VCPU_EXTENDED: seg.extended,
                    F.REC_TYPE_X86_PV_VCPU_XSAVE: seg.xsave,
                }[t]
                if body.context or t == F.REC_TYPE_X86_PV_VCPU_BASIC:
                    # 4.6-4.8 senders wrote empty records for state a vcpu lacks
                    store[body.vcpu_id] = body.context
            case X86TscInfo():
                if self.checkpoints == 0:
                    tsc = TscInfo(
                        tsc_mode=body.mode,
                        nsec=body.nsec,
                        khz=body.khz,
                        incarnation=body.incarnation,
                    )
                    self.body.write(tsc)
                else:
                    self._warn(
                        "tsc", "TSC_INFO of later checkpoints dropped: Remus senders sent -7 once"
                    )
            case HvmParams():
                if len(body.params) < body.count:
                    raise self._malformed(
                        f"HVM_PARAMS record too short for its {body.count} params",
                        "hvm_params.length",
                        body.count,
                    )
                seg.state = True
                seg.hvm_params.update(body.params)
            case _ if t == F.REC_TYPE_SHARED_INFO:
                seg.state = True
                seg.shared_info = rec.body
            case _ if t == F.REC_TYPE_HVM_CONTEXT:
                seg.state = True
                seg.hvm_context = rec.body
            case _ if t == F.REC_TYPE_TOOLSTACK:
                seg.toolstack = rec.body
            case _ if t == F.REC_TYPE_VERIFY:
                self.body.write(EnableVerifyMode())
            case _ if t == F.REC_TYPE_STATIC_DATA_END:
                pass  # structure only: legacy images have no static-data section
            case _ if t in (F.REC_TYPE_X86_CPUID_POLICY, F.REC_TYPE_X86_MSR_POLICY):
                self._warn(
                    rec.name,
                    f"{rec.name} record dropped: legacy streams carry no CPU policy; the "
                    "restoring Xen gives the guest the policy it gives every pre-4.14 image",
                )
            case _ if t & F.REC_TYPE_OPTIONAL:
                self._warn(rec.name, f"{rec.name} record dropped (optional, no legacy form)")
            case _:
                raise self._refuse(f"{rec.name} record", "record.type", t)

    def _libxl(self, rec: V2Record) -> None:
        t = rec.type
        if t == F.REC_TYPE_EMULATOR_CONTEXT or t == F.REC_TYPE_EMULATOR_XENSTORE_DATA:
            emu = rec.decode()
            assert isinstance(emu, EmulatorRecord)
            if t == F.REC_TYPE_EMULATOR_CONTEXT:
                self.seg.qemu = emu.data
            else:
                self.seg.xenstore = (self.seg.xenstore or b"") + emu.data
        elif t == F.REC_TYPE_CHECKPOINT_STATE:
            raise self._refuse("COLO CHECKPOINT_STATE record", "record.type", t)
        elif t not in (F.REC_TYPE_LIBXC_CONTEXT, F.REC_TYPE_CHECKPOINT_END, F.REC_TYPE_LIBXL_END):
            if t & F.REC_TYPE_OPTIONAL:
                self._warn(rec.name, f"libxl {rec.name} record dropped (optional, no legacy form)")
            else:
                raise self._refuse(f"libxl {rec.name} record", "record.type", t)

    def _pv_info(self, info: X86PvInfo) -> None:
        if (info.guest_width, info.pt_levels) not in ((4, 3), (8, 4)):
            raise self._refuse(
                f"guest width {info.guest_width} with {info.pt_levels} page-table levels "
                "(legacy derives 32-bit/3 levels or 64-bit/4 levels from the vcpu context size)",
                "x86_pv_info.guest_width",
                info.guest_width,
            )
        self.guest_width = info.guest_width

    def _p2m_frames(self, fr: X86PvP2mFrames) -> None:
        if not self.guest_width:
            raise self._malformed("X86_PV_P2M_FRAMES before X86_PV_INFO", "x86_pv_p2m_frames")
        if fr.p2m_start_pfn != 0:
            raise self._refuse(
                "a p2m that does not start at pfn 0", "x86_pv_p2m_frames.start", fr.p2m_start_pfn
            )
        size = fr.p2m_end_pfn + 1
        if size > LF.MAX_P2M_SIZE:
            raise self._refuse(
                f"p2m_size {size:#x} (max 0x10000000)", "x86_pv_p2m_frames.end", size
            )
        fpp = F.PAGE_SIZE // self.guest_width
        need = -(-size // fpp)
        if len(fr.pfns) != need:
            raise self._malformed(
                f"{len(fr.pfns)} p2m frames for p2m_size {size:#x}; the format needs {need}",
                "x86_pv_p2m_frames.pfns",
                len(fr.pfns),
            )
        frames = tuple(int(x) for x in fr.pfns)
        if frames and max(frames) >> (8 * self.w):
            raise self._refuse(f"p2m frame pfn beyond a {8 * self.w}-bit word", "x86_pv_p2m_frames")
        self.p2m_size = size
        self.p2m_frames = frames

    def _msrs(self, v: X86PvVcpu) -> None:
        n = len(v.context) // _MSR_ENTRY.size
        for i in range(n):
            index, _flags, value = _MSR_ENTRY.unpack_from(v.context, i * _MSR_ENTRY.size)
            if value:
                raise self._refuse(
                    f"vcpu {v.vcpu_id} MSR {index:#x} = {value:#x} (legacy PV streams carry "
                    "no MSRs; restoring it as 0 would change the guest)",
                    "x86_pv_vcpu_msrs",
                    index,
                )

    # -- pages -------------------------------------------------------------------------------

    def _page_data(self, pd: PageData, placed: int) -> None:
        """One PAGE_DATA record as legacy batches; ``placed``: its page bytes are in the
        spool already, where :class:`_SpoolPages` put them."""
        entries = pd.entries
        if len(entries) < pd.count:
            raise self._malformed(
                f"PAGE_DATA record too short for its {pd.count} pfn entries",
                "page_data.length",
                pd.count,
            )
        if not entries.size:
            return
        nib = pd.type_nibbles
        pfns = pd.pfns
        bad = np.flatnonzero(reserved(nib))
        if len(bad):
            n = int(nib[bad[0]])
            raise self._malformed(f"reserved page type {n:#x}", "page_data.type", n)
        for n, since in _NIBBLE_SINCE.items():
            if since > self.p.version and bool((nib == n).any()):
                raise self._refuse(
                    f"page type {n:#x} (written by senders from Xen {since[0]}.{since[1]})",
                    "page_data.type",
                    n,
                )
        top = int(pfns.max())
        if top > LF.PFN_MASK:
            raise self._refuse(f"pfn {top:#x} beyond the 28-bit legacy entry", "page_data.pfn", top)
        if self.kind == "pv" and top >= self.p2m_size:
            raise self._malformed(
                f"pfn {top:#x} outside the p2m (size {self.p2m_size:#x})", "page_data.pfn", top
            )
        is_data = carries_data(nib)
        ndata = int(np.count_nonzero(is_data))
        if len(pd.pages) + placed != ndata * F.PAGE_SIZE:
            raise self._malformed(
                f"{len(pd.pages)} bytes of pages for {ndata} data entries",
                "page_data.pages",
                len(pd.pages),
            )
        if self.checkpoints == 0:
            self.max_pfn = max(self.max_pfn, top)
            self.data_pages += ndata
        self.pages += ndata
        legacy = np.where(
            nib == _XTAB,
            self.p.xtab_entries(pfns, self.kind),
            (nib.astype(np.uint64) << np.uint64(28)) | pfns,
        ).astype("<u8" if self.w == 8 else "<u4")
        batches = _batches(nib, is_data, self.w)
        if placed:
            assert self.spool is not None
            # the headers go into the gaps the sink left between the batches' pages
            for s, e, _lo, _hi, at in batches:
                self.spool.seek(self._placed_at + at)
                self.body.write(PageBatch(width=self.w, entries=legacy[s:e].tobytes(), data=None))
            self.spool.seek(self._placed_at + _extent(batches, self.w))
            self.body.offset += placed
        else:
            for s, e, lo, hi, _at in batches:
                self.body.write(
                    PageBatch(width=self.w, entries=legacy[s:e].tobytes(), data=pd.pages[lo:hi])
                )
        self._report("converting")

    # -- checkpoint boundaries ----------------------------------------------------------------

    def _trailing_qemu(self) -> None:
        """Xen's converter puts a raw DeviceModelRecord0002 after a bare libxc image's END."""
        head = self.source.peek(LF.QEMU_SIGNATURE_LEN)
        if head == LF.QEMU_SIG_0002:
            self.source.read_exact(len(head), field="qemu.signature")
            n = struct.unpack("<I", self.source.read_exact(4, field="qemu.length"))[0]
            self.seg.qemu = self.source.read_exact(n, field="qemu.data")
        elif head:
            raise StreamMalformed(
                "bytes after the END record that are no QEMU record",
                offset=self.source.offset,
                field="trailer",
            )

    def _finish_segment(self, *, final: bool) -> None:
        seg = self.seg
        if final and not seg.state and self.checkpoints > 0:
            # nothing after the last CHECKPOINT: no further checkpoint
            if seg.qemu is not None:
                self._warn(
                    "qemu-after",
                    "QEMU record after the last checkpoint dropped: libxc-format v2 "
                    "carries no per-checkpoint emulator state",
                )
            return
        mode = "remus" if self.remus else "plain"
        if self.p.mode != mode:
            self.p = SenderProfile(
                sender=self.p.sender,
                toolstack=self.p.toolstack,
                mode=mode,
                trailer=self.p.trailer,
                width=self.w,
            )
        online, max_vcpu_id = self._vcpus(seg)
        try:
            spec = GuestSpec(kind=self.kind, pages=MIN_PAGES[self.kind], vcpus=max_vcpu_id + 1)  # type: ignore[arg-type]
            self.p.check(spec)
        except UsageError as e:
            raise self._refuse(str(e), "profile") from None
        first = self.checkpoints == 0
        if first:
            self._write_header(seg, len(online))
        self.writer.write_all(
            end_of_checkpoint_list(
                self.p,
                max_vcpu_id=max_vcpu_id,
                online_vcpus=online,
                hvm_params=self._param_chunks(seg) if self.kind == "hvm" else None,
                toolstack_blob=self._toolstack_blob(seg),
                first=first,
            )
        )
        self.writer.write(self._pv_tail(seg, online) if self.kind == "pv" else self._hvm_tail(seg))
        self._qemu(seg)
        self.checkpoints += 1
        self.seg = _Segment()
        self._report("converting", force=True, ended=True)

    def _vcpus(self, seg: _Segment) -> tuple[list[int], int]:
        if self.kind == "pv":
            online = sorted(seg.basic)
            if not online:
                raise self._refuse(
                    "a PV checkpoint without X86_PV_VCPU_BASIC (every legacy tail has the "
                    "vcpu contexts)",
                    "vcpus",
                )
        else:
            online = sorted(_hvm_cpus(seg.hvm_context or b"")) or [0]
        return online, online[-1]

    def _write_header(self, seg: _Segment, nvcpus: int) -> None:
        """Framing, p2m_size, PV ext-info and frame list, then the spooled first body."""
        if self.p.toolstack == "xl":
            h = self.xl_header
            self.writer.write(
                XlHeader(
                    mandatory_flags=h.mandatory_flags & ~LF.XL_MANDATORY_FLAG_STREAMv2,
                    optional_flags=h.optional_flags,
                    optional_data=h.optional_data,
                )
                if h is not None
                else XlHeader()
            )
        elif self.p.toolstack == "xend":
            self.writer.write(XendHeader(config=self._xend_config(nvcpus)))
        if self.kind == "pv":
            if self.p2m_frames is None:
                raise self._malformed("a PV stream without X86_PV_P2M_FRAMES", "x86_pv_p2m_frames")
            self.writer.write(StreamHeader(p2m_size=self.p2m_size, width=self.w))
            self._pv_layout(seg)
            vcpu0 = seg.basic[min(seg.basic)]
            self.writer.write(pv_ext_info(self.p, vcpu0, extv=self.extv, xcnt=self.xcnt))
            self.writer.write(P2mFrameList(entries=self.p2m_frames))
        else:
            self.writer.write(StreamHeader(p2m_size=self.max_pfn + 1, width=self.w))
        assert self.spool is not None
        self.spool.flush()
        self.spool.seek(0)  # our own temporary file, not the input
        fd = output_fd(self.out)
        if fd is None:
            shutil.copyfileobj(self.spool, self.out, 1 << 20)
        else:
            # In the kernel, into a pipe too: the spool is never written again, so the
            # pages a pipe still refers to after it is closed keep the bytes sent.
            self.out.flush()
            ByteSource(self.spool.fileno()).transfer(
                fd, [(None, self.body.offset)], field="spool", out_name=output_name(self.out)
            )
        self.writer.offset += self.body.offset
        self.spool.close()
        self.spool = None
        self.body = self.writer

    def _pv_layout(self, seg: _Segment) -> None:
        """Fix "extv" and "xcnt" from the first checkpoint's vcpu records."""
        if not self.guest_width:
            raise self._malformed("a PV stream without X86_PV_INFO", "x86_pv_info")
        self.extv = bool(seg.extended)
        if not seg.xsave:
            return
        sizes = {len(x) for x in seg.xsave.values()}
        if len(sizes) != 1 or set(seg.xsave) != set(seg.basic):
            raise self._refuse(
                "xsave areas of different sizes or on some vcpus only (the legacy tail has "
                "one size for every vcpu)",
                "x86_pv_vcpu_xsave",
            )
        if self.p.has_xsave:
            self.xcnt = sizes.pop() + 16
            return
        for vid, area in seg.xsave.items():
            if _xsave_mask(area) & ~_XSTATE_FP_SSE:
                raise self._refuse(
                    f"vcpu {vid} uses xsave state beyond x87/SSE and {self.p.sender} "
                    "has no xsave records (Xen 4.1+)",
                    "x86_pv_vcpu_xsave",
                    vid,
                )
        self._warn(
            "xsave",
            f"xsave records dropped: {self.p.sender} has none, and the x87/SSE "
            "state is in each vcpu context's FXSAVE area",
        )

    def _xend_config(self, nvcpus: int) -> bytes:
        """A minimal xend S-expression: name, memory (MiB), vcpus, image type."""
        name, mem, vcpus = "xlpy-converted", -(-self.data_pages // 256), nvcpus
        cfg = self.xl_header.config if self.xl_header is not None else None
        if cfg:
            text = cfg.rstrip(b"\0").decode("utf-8", "replace")
            if (
                self.xl_header is not None
                and self.xl_header.mandatory_flags & LF.XL_MANDATORY_FLAG_JSON
            ):
                try:
                    d = json.loads(text)
                    name = d.get("c_info", {}).get("name", name)
                    mem = d.get("b_info", {}).get("max_memkb", mem * 1024) // 1024
                    vcpus = d.get("b_info", {}).get("max_vcpus", vcpus)
                except (ValueError, AttributeError, TypeError):
                    pass
            else:
                for key, pat in (("name", r'"([^"]*)"'), ("memory", r"(\d+)"), ("vcpus", r"(\d+)")):
                    m = re.search(rf"^\s*{key}\s*=\s*{pat}", text, re.M)
                    if m:
                        if key == "name":
                            name = m.group(1)
                        elif key == "memory":
                            mem = int(m.group(1))
                        else:
                            vcpus = int(m.group(1))
        image = "hvm" if self.kind == "hvm" else "linux"
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", str(name)) or "xlpy-converted"
        return (
            f"(domain (name {safe}) (memory {int(mem)}) (vcpus {int(vcpus)}) (image ({image})))"
        ).encode()

    # -- end-of-checkpoint pieces ------------------------------------------------------------

    def _param_chunks(self, seg: _Segment) -> dict[int, int]:
        known = set(hvm_param_chunks(self.p))
        chunks: dict[int, int] = {}
        for index, value in seg.hvm_params.items():
            if index in HVM_TAIL_PARAMS or not value:
                continue
            cid = _PARAM_CHUNK.get(index)
            if cid is None:
                self._warn(
                    f"param{index}",
                    f"HVM param {index} = {value:#x} dropped: no legacy sender saved it",
                )
                continue
            if index == HVM_PARAM_VM86_TSS_SIZED:
                size = (value >> 32) & 0x7FFFFFFF
                if size not in (0, _LEGACY_VM86_TSS_SIZE):
                    self._warn(
                        "vm86",
                        f"VM86 TSS size {size} dropped: the legacy chunk carries the address, "
                        f"the restoring Xen assumes {_LEGACY_VM86_TSS_SIZE} bytes",
                    )
                value &= 0xFFFFFFFF
            if cid not in known:
                self._warn(
                    f"chunk{cid}",
                    f"HVM param {index} = {value:#x} dropped: {self.p.sender} has no chunk "
                    f"{cid} ({LF.CHUNK_NAMES[cid]})",
                )
                continue
            chunks[cid] = value
        return chunks

    def _toolstack_blob(self, seg: _Segment) -> bytes:
        if seg.toolstack is not None:
            if not self.p.has_toolstack_chunk:
                self._warn("toolstack", "TOOLSTACK record dropped: this sender has no -18 chunk")
            return seg.toolstack
        physmap = _physmap(seg.xenstore or b"", self._warn)
        if physmap and not self.p.has_toolstack_chunk:
            self._warn(
                "physmap",
                "emulator physmap dropped: only xl senders from 4.2 carry it (-18)",
            )
        return libxl_toolstack_blob(physmap, self.w)

    def _pv_tail(self, seg: _Segment, online: list[int]) -> PvTail:
        size = LF.VCPU_CONTEXT_SIZE_64 if self.guest_width == 8 else LF.VCPU_CONTEXT_SIZE_32
        vcpus = []
        for vid in online:
            ctx = seg.basic[vid]
            if len(ctx) != size:
                raise self._malformed(
                    f"vcpu {vid} basic context is {len(ctx)} bytes, a {8 * self.guest_width}-bit "
                    f"guest's is {size}",
                    "x86_pv_vcpu_basic",
                    len(ctx),
                )
            ext = None
            if self.extv:
                ext = seg.extended.get(vid)
                if ext is None or (len(ext) > LF.EXT_VCPU_CONTEXT_SIZE and any(ext[128:])):
                    raise self._refuse(
                        f"vcpu {vid}'s extended context (missing, or longer than 128 bytes)",
                        "x86_pv_vcpu_extended",
                        vid,
                    )
                ext = ext[: LF.EXT_VCPU_CONTEXT_SIZE].ljust(LF.EXT_VCPU_CONTEXT_SIZE, b"\0")
            xsave = None
            if self.xcnt is not None:
                area = seg.xsave.get(vid)
                if area is None or len(area) + 16 != self.xcnt:
                    raise self._refuse(
                        f"vcpu {vid}'s xsave area (missing, or not {self.xcnt - 16} bytes)",
                        "x86_pv_vcpu_xsave",
                        vid,
                    )
                xsave = XsaveRecord(xfeature_mask=_xsave_mask(area) or _XSTATE_FP_SSE, data=area)
            vcpus.append(VcpuState(vcpu_id=vid, context=ctx, ext=ext, xsave=xsave))
        if seg.shared_info is None or len(seg.shared_info) != LF.SHARED_INFO_SIZE:
            raise self._refuse("a PV checkpoint without a 4096-byte SHARED_INFO", "shared_info")
        # v2 has no "unmapped pfns" (Xen's converter discards them as bogus).
        return PvTail(unmapped=(), vcpus=tuple(vcpus), shared_info=seg.shared_info)

    def _hvm_tail(self, seg: _Segment) -> HvmTail:
        if seg.hvm_context is None:
            raise self._refuse("an HVM checkpoint without HVM_CONTEXT", "hvm_context")
        ioreq, bufioreq, store = (seg.hvm_params.get(i, 0) for i in HVM_TAIL_PARAMS)
        return HvmTail(
            ioreq_pfn=ioreq, bufioreq_pfn=bufioreq, store_pfn=store, context=seg.hvm_context
        )

    def _qemu(self, seg: _Segment) -> None:
        if self.kind != "hvm":
            return
        if seg.qemu is None:
            if qemu_record(self.p, b"") is not None:
                raise self._refuse(
                    f"an HVM checkpoint without emulator context: {self.p.toolstack} sends a "
                    "QEMU record after every HVM checkpoint",
                    "emulator_context",
                )
            return
        rec = qemu_record(self.p, seg.qemu)
        if rec is None:
            self._warn("qemu", "emulator context dropped: bare libxc framing has no QEMU record")
            return
        self.writer.write(rec)


#: A legacy batch of a PAGE_DATA record: its entries ``s:e``, its page bytes ``lo:hi``
#: of the record's, and where its header starts when the batches are laid end to end.
_Batch = tuple[int, int, int, int, int]


def _batches(nib: np.ndarray, is_data: np.ndarray, width: int) -> list[_Batch]:
    """The legacy batches of one PAGE_DATA record: at most 1024 entries each, none of
    nothing but XTAB entries (a sender writes no batch without a valid entry)."""
    first_data = np.concatenate(([0], np.cumsum(is_data)))
    out = []
    at = 0
    for s in range(0, nib.size, LF.MAX_BATCH_SIZE):
        e = min(s + LF.MAX_BATCH_SIZE, nib.size)
        if bool((nib[s:e] == _XTAB).all()):
            continue
        lo, hi = int(first_data[s]) * F.PAGE_SIZE, int(first_data[e]) * F.PAGE_SIZE
        out.append((s, e, lo, hi, at))
        at += 4 + width * (e - s) + hi - lo
    return out


def _extent(batches: list[_Batch], width: int) -> int:
    """Bytes of the batches laid end to end."""
    if not batches:
        return 0
    s, e, lo, hi, at = batches[-1]
    return at + 4 + width * (e - s) + hi - lo


def _xsave_mask(area: bytes) -> int:
    """``xcr0 | xcr0_accum``: the first two words of a getvcpuextstate buffer."""
    if len(area) < 16:
        return 0
    xcr0, accum = struct.unpack_from("<QQ", area)
    return int(xcr0 | accum)


def _hvm_cpus(ctx: bytes) -> set[int]:
    """Instance numbers of the CPU records of an HVM context blob (empty if unparsable)."""
    found: set[int] = set()
    off = 0
    while off + _HVM_SAVE_DESC.size <= len(ctx):
        code, instance, length = _HVM_SAVE_DESC.unpack_from(ctx, off)
        if code == 0:
            return found
        if code == _HVM_SAVE_CODE_CPU:
            found.add(instance)
        off += _HVM_SAVE_DESC.size + length
    return found if off == len(ctx) else set()


def _physmap(data: bytes, warn: Callable[[str, str], None]) -> list[tuple[int, int, int, bytes]]:
    """libxl physmap entries of EMULATOR_XENSTORE_DATA (``physmap/<phys>/<field>`` keys)."""
    parts = data.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    entries: dict[int, dict[str, bytes]] = {}
    for key, value in zip(parts[0::2], parts[1::2], strict=False):
        m = re.fullmatch(rb"physmap/([0-9a-fA-F]+)/(start_addr|size|name)", key)
        if m is None:
            warn("xenstore", f"emulator xenstore key {key!r} dropped: -18 carries the physmap only")
            continue
        entries.setdefault(int(m.group(1), 16), {})[m.group(2).decode()] = value
    out = []
    for phys, kv in entries.items():
        try:
            out.append((phys, int(kv["start_addr"], 16), int(kv["size"], 16), kv["name"] + b"\0"))
        except (KeyError, ValueError):
            warn("xenstore", f"incomplete physmap entry {phys:#x} dropped")
    return out
