"""The migration-v2 receiver: libxc's ``xg_sr_restore.c`` (Xen 4.6 and later) into a domain.

Reads bare libxc images, libxl streams and ``xl save`` files through the v2 reader
(:class:`~xlpy.stream.v2.reader.V2Reader`), and follows Xen 4.17's
``tools/libs/guest/xg_sr_restore.c`` ``restore()`` loop:

* ``stream_type`` (:class:`~xlpy.operation.StreamType`) PLAIN, REMUS or COLO comes from the
  caller (``checkpointed`` 0/1/2).  A CHECKPOINT record in a PLAIN stream fails
  ("Found checkpoint in non-checkpointed stream", ``handle_checkpoint``).
* Records before the first CHECKPOINT are processed as they arrive.  The first CHECKPOINT
  only sets ``buffer_all_records``; from then on every record but END and CHECKPOINT is
  buffered and processed when the next CHECKPOINT arrives.  A read error with
  ``buffer_all_records`` set goes to ``remus_failover``: the buffered records are dropped
  and the domain completes in the state of the last CHECKPOINT.  Before it, a read error
  fails and the domain is destroyed.
* END ends the loop and completes the domain.  In a REMUS stream that has seen a
  CHECKPOINT, records buffered since the last one are dropped (``cleanup`` frees them
  unprocessed); a real 4.6+ sender always ends a checkpoint with CHECKPOINT before END.
  A PLAIN-layout stream (no CHECKPOINT) into a REMUS receiver is processed as it
  arrives and END completes it: that is a plain restore.
* libxl format: after libxc's CHECKPOINT, libxc's ``checkpoint`` callback makes libxl
  read its own records up to CHECKPOINT_END; the checkpoint is processed only when that
  succeeds.  A read error there is ``XGR_CHECKPOINT_FAILOVER``: failover once
  ``buffer_all_records`` is set, failure before.  Emulator records take effect with the
  checkpoint they belong to.

Messages are libxc's format strings (verbatim from 4.17's ``xg_sr_restore.c``,
``xg_sr_restore_x86_pv.c``, ``xg_sr_restore_x86_hvm.c``, ``xg_sr_common.c``,
``xg_sr_common_x86.c``) rendered by :class:`xlpy.receiver.messages.XcLog`.

Not modelled (no hypervisor to ask): vcpu context contents (start info, GDT, cr3
translation), page-table localisation, grant-table seeding, COLO's dirty-pfn back
channel (COLO otherwise behaves as REMUS here).  The domain has
:data:`~xlpy.stream.legacy.format.XC_SR_MAX_VCPUS` vcpus and, for HVM, as much memory
as the simulation backs; populating beyond it fails as ``populate_physmap`` would.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import numpy as np

from xlpy.errors import StreamError, StreamMalformed, UsageError
from xlpy.operation import StreamType
from xlpy.progress import RunProgress
from xlpy.receiver import messages as M
from xlpy.receiver.domains import Domain, DomainFull, Outcome, ReceiveRequest, Stop
from xlpy.receiver.domains.sim import MAX_SIM_P2M_SIZE
from xlpy.receiver.generations import Generation, generation
from xlpy.stream.detect import detect
from xlpy.stream.hvm_params import (
    HVM_PARAM_BUFIOREQ_PFN,
    HVM_PARAM_CONSOLE_PFN,
    HVM_PARAM_IOREQ_PFN,
    HVM_PARAM_PAE_ENABLED,
    HVM_PARAM_STORE_PFN,
)
from xlpy.stream.legacy import format as LF
from xlpy.stream.legacy.records import XlHeader
from xlpy.stream.source import ByteSource
from xlpy.stream.v2 import format as F
from xlpy.stream.v2.reader import V2Reader
from xlpy.stream.v2.records import (
    LIBXC,
    LIBXL,
    DomainHeader,
    Element,
    HvmParams,
    ImageHeader,
    LibxlHeader,
    PageData,
    V2Record,
    X86PvInfo,
    X86PvP2mFrames,
    X86PvVcpu,
    X86TscInfo,
    carries_data,
    reserved,
)
from xlpy.stream.v2.verify import V2Checker

_T = TypeVar("_T")
_LIBXC_MAGIC = F.IHDR_MARKER.to_bytes(8, "big")
_LIBXL_MAGIC = F.LIBXL_HDR_IDENT.to_bytes(8, "big")
#: ``INVALID_MFN`` as a 64-bit toolstack prints it.
_INVALID = (1 << 64) - 1
_VCPU_BLOBS = {
    F.REC_TYPE_X86_PV_VCPU_BASIC: ("X86_PV_VCPU_BASIC", "ctx"),
    F.REC_TYPE_X86_PV_VCPU_EXTENDED: ("X86_PV_VCPU_EXTENDED", "ext"),
    F.REC_TYPE_X86_PV_VCPU_XSAVE: ("X86_PV_VCPU_XSAVE", "xsave"),
    F.REC_TYPE_X86_PV_VCPU_MSRS: ("X86_PV_VCPU_MSRS", "msrs"),
}
_XEN_DOMCTL_VCPU_MSR_SIZE = 16


def cx(n: int) -> str:
    """C's ``%#x``: ``0`` for zero, ``0x…`` otherwise."""
    return f"{n:#x}" if n else "0"


def rec_type_to_str(rtype: int) -> str:
    """libxc's ``rec_type_to_str`` (optional and unknown types are "Reserved")."""
    if rtype & F.REC_TYPE_OPTIONAL:
        return "Reserved"
    return F.LIBXC_REC_NAMES.get(rtype, "Reserved")


def _decoded(rec: V2Record, kind: type[_T]) -> _T:
    """``rec``'s typed body, after the caller checked its length as libxc does."""
    body = rec.decode()
    if not isinstance(body, kind):
        raise AssertionError(f"{rec.name} decodes to {kind.__name__}")
    return body


class _Err(Stop):
    """``goto err``: libxc fails, the toolstack destroys the domain."""

    def __init__(self, error: StreamError, *, restore_failed: bool = True) -> None:
        super().__init__(error)
        #: Inside ``restore()`` (logs "Restore failed"); header errors return before it.
        self.restore_failed = restore_failed


class _Failover(Stop):
    """``goto remus_failover``: complete the domain from the last checkpoint."""


@dataclass
class _Libxl:
    """libxl's emulator records of one checkpoint (or of the plain stream)."""

    qemu: bytes | None = None
    qemu_id: int | None = None
    xenstore: bytes | None = None


@dataclass
class _Vcpu:
    blobs: dict[str, bytes] = field(default_factory=dict)


class V2Restore:
    """One v2 ``xc_domain_restore`` call (plus libxl's stream reader around it)."""

    def __init__(self, source: ByteSource, request: ReceiveRequest, domain: Domain) -> None:
        self.source = source
        self.request = request
        self.domain = domain
        self.gen: Generation = generation(request.generation)
        if self.gen.stream_format != "v2":
            raise UsageError(f"{self.gen.name} is a legacy receiver; it does not read v2")
        st = 0 if request.checkpointed is None else request.checkpointed
        try:
            self.stream_type = StreamType(st)
        except ValueError:
            raise UsageError(
                f"stream type {st} unknown: 0 (PLAIN), 1 (REMUS) or 2 (COLO)"
            ) from None
        if request.guest not in (None, "pv", "hvm"):
            raise UsageError(f"guest type {request.guest!r}: pv or hvm")
        self.log = M.XcLog(self.gen)
        self.reader = V2Reader(source)
        self._it: Iterator[Element | XlHeader] = self.reader.elements()
        # where the next element comes from (for the read-error messages)
        self._layer = LIBXL
        self._head = b""
        self._final = False
        # ctx->restore
        self.format_version = 0
        self.guest = "pv"
        self.seen_static_data_end = False
        self.buffer_all_records = False
        self.buffered: list[V2Record] = []
        self.verify = False
        self.checkpoints = 0
        self.in_libxl_checkpoint = False
        self.libxc_done = False
        self.clean_end = False
        # x86 PV
        self.seen_pv_info = False
        self.guest_width = 8
        self.pt_levels = 4
        self.max_pfn = 0
        self.p2m_pfns: dict[int, int] = {}
        self.pfn_types: dict[int, int] = {}
        self.vcpus: dict[int, _Vcpu] = {}
        self.shared_info: bytes | None = None
        # x86 HVM
        self.hvm_context: bytes | None = None
        self.hvm_params: dict[int, int] = {}
        self.cleared: set[int] = set()
        # common x86
        self.tsc: dict[str, int] | None = None
        self.cpuid_policy: bytes | None = None
        self.msr_policy: bytes | None = None
        self.xen_version: tuple[int, int] = (0, 0)
        self.top_pfn = -1
        self.pages = 0
        # libxl
        self.libxl_staged = _Libxl()
        self.libxl_committed = _Libxl()
        # outcome
        self.image_end: int | None = None
        self.stop_error: StreamError | None = None
        self._report = RunProgress(
            request.progress, lambda: (self.checkpoints, self.pages, self.source.offset)
        )

    # -- public ---------------------------------------------------------------------------

    def run(self) -> Outcome:
        """Restore; stream problems end up in the result, never raised."""
        try:
            self._restore()
        except _Err as e:
            if e.restore_failed:
                self.log.perror("Restore failed")
            return self._failed(e.error)
        toolstack_error = self._libxl_after()
        if toolstack_error is not None:
            self.log.stderr(f"libxl: {toolstack_error}")
            return self._failed(self.stop_error, rc=0, toolstack_error=toolstack_error)
        if self.clean_end:
            self.image_end = self.source.offset
        self._finish()
        self.domain.publish()
        self._report("done", force=True, ended=True)
        return self._result(ok=True, rc=0, error=self.stop_error)

    # -- results ------------------------------------------------------------------------------

    @property
    def committed(self) -> int:
        return max(self.checkpoints - 1, 0)

    def _result(self, *, ok: bool, rc: int, error: StreamError | None, **kw: Any) -> Outcome:
        consumed = self.source.offset
        past = 0 if self.image_end is None or not ok else max(0, consumed - self.image_end)
        return Outcome(
            ok=ok,
            rc=rc,
            committed_checkpoint=self.committed if ok else None,
            bytes_past_image=past,
            domain_destroyed=not ok,
            messages=list(self.log.lines),
            out=self.request.out if ok else None,
            generation=self.gen.name,
            toolstack=self.request.toolstack,
            checkpointed=int(self.stream_type),
            error=error,
            checkpoints_complete=self.committed + 1 if ok else self.checkpoints,
            bytes_consumed=consumed,
            extra={"format": self.reader.format, "framing": self.reader.framing},
            **kw,
        )

    def _failed(
        self, error: StreamError | None, *, rc: int = 1, toolstack_error: str | None = None
    ) -> Outcome:
        self.domain.destroy()
        self._report("failed", force=True)
        return self._result(ok=False, rc=rc, error=error, toolstack_error=toolstack_error)

    # -- reading ------------------------------------------------------------------------------

    def _next(self) -> Element | XlHeader:
        """The next element; a read failure is reported as libxc or libxl reports it."""
        # The header of the next record, for libxc's messages about it (never past the end).
        self._head = b"" if self._final else self.source.peek(F.RHDR_SIZE)
        try:
            el = next(self._it)
        except StreamError as e:
            raise self._read_failure(e) from None
        if isinstance(el, V2Record):
            if el.layer == LIBXC and el.type == F.REC_TYPE_END:
                self._final = self.reader.format == LIBXC
            elif el.layer == LIBXL and el.type == F.REC_TYPE_LIBXL_END and self.libxc_done:
                self._final = True
        return el

    def _read_failure(self, e: StreamError) -> Exception:
        f = e.field or ""
        libxc_header = f.startswith(("image_header", "domain_header"))
        if not libxc_header and (self._layer == LIBXL or f.startswith("xl_header")):
            return self._libxl_read_failure(e)
        if isinstance(e, StreamMalformed) and f == "record.length":
            rtype = int.from_bytes(self._head[:4], "little")
            self.log.error(
                f"Record (0x{rtype:08x}, {rec_type_to_str(rtype)}) length {cx(e.value or 0)} "
                f"exceeds max ({cx(F.REC_LENGTH_MAX)})"
            )
            self.log.errno = M.ESUCCESS
        else:
            self.log.errno = M.ESUCCESS  # read_exact() sets errno 0 at EOF
            if f.startswith("image_header"):
                self.log.perror("Failed to read Image Header from stream")
                return _Err(e, restore_failed=False)
            if f.startswith("domain_header"):
                self.log.perror("Failed to read Domain Header from stream")
                return _Err(e, restore_failed=False)
            if f == "record.header" or len(self._head) < F.RHDR_SIZE:
                self.log.perror("Failed to read Record Header from stream")
            else:
                rtype, length = F.RHDR_FORMAT.unpack(self._head)
                datasz = length + F.padding_for(length)
                self.log.perror(
                    f"Failed to read {datasz} bytes of data for record "
                    f"(0x{rtype:08x}, {rec_type_to_str(rtype)})"
                )
        return _Failover(e) if self.buffer_all_records else _Err(e)

    def _libxl_read_failure(self, e: StreamError) -> Exception:
        """libxl's stream reader failed: before libxc ran, in a checkpoint, or after END."""
        if self.in_libxl_checkpoint:
            # the checkpoint callback returns XGR_CHECKPOINT_FAILOVER (handle_checkpoint)
            self.log.stderr(f"libxl: checkpoint records: {e}")
            return _Failover(e) if self.buffer_all_records else _Err(e)
        if self.libxc_done:
            return _LibxlAfter(e)
        self.log.stderr(f"libxl: cannot read the stream: {e}")
        return _Err(e, restore_failed=False)

    # -- the restore loop -----------------------------------------------------------------

    def _restore(self) -> None:
        fmt = detect(self.source)
        short = len(self.source.peek(8)) < 8
        if not short and not fmt.is_v2:
            what = (
                "legacy (pre-4.6) stream: a v2 receiver needs it converted first "
                "(xlpy convert, or Xen's convert-legacy-stream as libxl runs it)"
                if fmt.is_legacy
                else f"{fmt.description}, not a migration v2 stream"
            )
            err = StreamMalformed(what, offset=self.source.offset, field="header")
            self.log.stderr(f"libxl: {err.message}")
            raise _Err(err, restore_failed=False)
        if short:  # too short to tell: libxc's read of its image header fails
            self.reader = V2Reader(self.source, xl=False, fmt=LIBXC)
            self._it = self.reader.elements()
            self._layer = LIBXC
        el = self._next()
        while not isinstance(el, ImageHeader):  # toolstack framing: xl, then libxl headers
            if isinstance(el, V2Record) and el.layer == LIBXL and el.type == F.REC_TYPE_LIBXL_END:
                # the libxl stream is over (the reader reads no further): no libxc image
                err = StreamMalformed(
                    "the libxl stream ends before its LIBXC_CONTEXT record: no libxc image",
                    offset=el.offset,
                    field="record.type",
                )
                self.log.stderr(f"libxl: {err.message}")
                raise _Err(err, restore_failed=False)
            if isinstance(el, LibxlHeader):
                try:
                    V2Checker().check(el)
                except StreamMalformed as e:
                    self.log.stderr(f"libxl: {e.message}")
                    raise _Err(e, restore_failed=False) from None
            el = self._next()
        self._layer = LIBXC
        self._image_header(el)
        dh = self._next()
        if not isinstance(dh, DomainHeader):
            raise AssertionError("the reader yields the domain header after the image header")
        self._domain_header(dh)
        try:
            self._loop()
        except _Failover as f:
            self.stop_error = f.error
            self.buffered = []
            # COLO already completed the domain at its checkpoint; Remus completes it now.
            self._stream_complete()
            return
        self._stream_complete()

    def _image_header(self, h: ImageHeader) -> None:
        def bad(msg: str, fld: str) -> _Err:
            self.log.error(msg)
            err = StreamMalformed(msg, offset=h.offset, field=f"image_header.{fld}")
            return _Err(err, restore_failed=False)

        if h.marker != F.IHDR_MARKER:
            raise bad(f"Invalid marker: Got 0x{h.marker:016x}", "marker")
        if h.id != F.IHDR_ID:
            raise bad(f"Invalid ID: Expected 0x{F.IHDR_ID:08x}, Got 0x{h.id:08x}", "id")
        if not F.IHDR_VERSION_MIN <= h.version <= F.IHDR_VERSION_MAX:
            raise bad(f"Invalid Version: Expected 2 <= ver <= 3, Got {h.version}", "version")
        if h.options & F.IHDR_OPT_BIG_ENDIAN:
            raise bad("Unable to handle big endian streams", "options")
        self.format_version = h.version

    def _domain_header(self, h: DomainHeader) -> None:
        """``read_headers`` then ``setup``: the stream must match the domain libxl built."""
        self.xen_version = (h.xen_major, h.xen_minor)
        stream_guest = {F.DHDR_TYPE_X86_PV: "pv", F.DHDR_TYPE_X86_HVM: "hvm"}.get(h.type)
        # libxl builds the domain from its config; without one, the stream's type decides.
        self.guest = self.request.guest or stream_guest or "pv"
        name = "x86_pv" if self.guest == "pv" else "x86 HVM"
        # dhdr_type_to_str(): 4.17 names only the two x86 types
        type_name = F.DHDR_TYPE_NAMES[h.type] if stream_guest else "Reserved"

        def bad(msg: str, fld: str) -> _Err:
            self.log.error(msg)
            return _Err(StreamMalformed(msg, offset=h.offset, field=f"domain_header.{fld}"))

        if stream_guest != self.guest:
            raise bad(f"Unable to restore {type_name} domain into an {name} domain", "type")
        page_size = (1 << h.page_shift) & 0xFFFFFFFF if h.page_shift < 32 else 0
        if page_size != F.PAGE_SIZE:
            raise bad(f"Invalid page size {page_size} for {name} domains", "page_shift")
        try:
            self.domain.create(guest=self.guest, p2m_size=0, width=8, guest_width=8)
        except DomainFull as e:  # pragma: no cover - an empty domain always fits
            raise _Err(StreamMalformed(str(e), offset=h.offset, field="domain_header")) from None

    def _loop(self) -> None:
        """``restore()``'s do-while over ``read_record``."""
        self._report("checkpoint", force=True)
        while True:
            el = self._next()
            if not isinstance(el, V2Record):
                raise AssertionError(f"unexpected {type(el).__name__} inside the image")
            if el.layer == LIBXL:
                self._libxl_record(el)
                continue
            if el.type == F.REC_TYPE_END:
                self.libxc_done = True
                self._layer = LIBXL
                # Records buffered since the last CHECKPOINT are dropped, unprocessed.
                self.clean_end = not self.buffered
                return
            if self.buffer_all_records and el.type != F.REC_TYPE_CHECKPOINT:
                self.buffered.append(el)
                continue
            if el.type == F.REC_TYPE_CHECKPOINT:
                self._checkpoint_record(el)
                continue
            self._process_record(el)
            self._report("checkpoint")

    # -- checkpoints -------------------------------------------------------------------------

    def _checkpoint_record(self, rec: V2Record) -> None:
        if self.stream_type == StreamType.PLAIN:
            self._fail(rec, M.CHECKPOINT_IN_PLAIN, "type")
        if self.reader.format == LIBXL:
            # the checkpoint callback: libxl reads its records up to CHECKPOINT_END
            self.in_libxl_checkpoint = True
            self._layer = LIBXL
            self.libxl_staged = _Libxl(
                qemu=self.libxl_committed.qemu,
                qemu_id=self.libxl_committed.qemu_id,
                xenstore=self.libxl_committed.xenstore,
            )
            return
        self._commit_checkpoint()

    def _commit_checkpoint(self) -> None:
        """``handle_checkpoint`` after the callback returned XGR_CHECKPOINT_SUCCESS."""
        if self.buffer_all_records:
            records, self.buffered = self.buffered, []
            for rec in records:
                self._process_record(rec)
        else:
            self.buffer_all_records = True
        self.libxl_committed = self.libxl_staged
        self.checkpoints += 1
        self.image_end = self.source.offset
        self._report("checkpoint", force=True, ended=True)

    def _libxl_record(self, rec: V2Record) -> None:
        t = rec.type
        if t in (F.REC_TYPE_EMULATOR_CONTEXT, F.REC_TYPE_EMULATOR_XENSTORE_DATA):
            try:
                emu = rec.decode()
            except StreamMalformed as e:
                self.log.stderr(f"libxl: {e}")
                raise (_LibxlAfter(e) if self.libxc_done else _Err(e)) from None
            data = getattr(emu, "data", b"")
            if t == F.REC_TYPE_EMULATOR_CONTEXT:
                self.libxl_staged.qemu = data
                self.libxl_staged.qemu_id = getattr(emu, "emulator_id", None)
            else:
                self.libxl_staged.xenstore = data
        elif t == F.REC_TYPE_CHECKPOINT_END and self.in_libxl_checkpoint:
            self.in_libxl_checkpoint = False
            self._layer = LIBXC
            self._commit_checkpoint()
        elif t == F.REC_TYPE_LIBXC_CONTEXT:
            self._layer = LIBXC

    # -- process_record --------------------------------------------------------------------

    def _fail(self, rec: V2Record, message: str, fld: str) -> NoReturn:
        self.log.error(message)
        raise _Err(
            StreamMalformed(message, offset=rec.offset, record=rec.index, field=f"{rec.name}.{fld}")
        )

    def _process_record(self, rec: V2Record) -> None:
        t = rec.type
        if t == F.REC_TYPE_PAGE_DATA:
            self._page_data(rec)
        elif t == F.REC_TYPE_VERIFY:
            self.verify = True
        elif t == F.REC_TYPE_CHECKPOINT:
            raise AssertionError("CHECKPOINT records are never buffered")
        elif t == F.REC_TYPE_STATIC_DATA_END:
            self._static_data_end(rec)
        elif t == F.REC_TYPE_X86_TSC_INFO:
            self._tsc_info(rec)
        elif t in (F.REC_TYPE_X86_CPUID_POLICY, F.REC_TYPE_X86_MSR_POLICY):
            self._policy(rec)
        elif self.guest == "pv" and t == F.REC_TYPE_X86_PV_INFO:
            self._pv_info(rec)
        elif self.guest == "pv" and t == F.REC_TYPE_X86_PV_P2M_FRAMES:
            self._p2m_frames(rec)
        elif self.guest == "pv" and t in _VCPU_BLOBS:
            self._vcpu_blob(rec)
        elif self.guest == "pv" and t == F.REC_TYPE_SHARED_INFO:
            self._shared_info(rec)
        elif self.guest == "hvm" and t == F.REC_TYPE_HVM_CONTEXT:
            self.hvm_context = rec.body
        elif self.guest == "hvm" and t == F.REC_TYPE_HVM_PARAMS:
            self._hvm_params(rec)
        elif not t & F.REC_TYPE_OPTIONAL:  # RECORD_NOT_PROCESSED
            self._fail(rec, f"Mandatory record {cx(t)} ({rec_type_to_str(t)}) not handled", "type")

    def _static_data_end(self, rec: V2Record) -> None:
        if self.seen_static_data_end:
            self._fail(rec, "Multiple STATIC_DATA_END records found", "type")
        self.seen_static_data_end = True

    def _require_static_data_end(self, rec: V2Record) -> None:
        """v2 compat: a version 2 image infers STATIC_DATA_END at its first memory record."""
        if self.format_version < 3 and not self.seen_static_data_end:
            self.seen_static_data_end = True
        if not self.seen_static_data_end:
            self._fail(rec, "No STATIC_DATA_END seen", "type")

    def _page_data(self, rec: V2Record) -> None:
        self._require_static_data_end(rec)
        n = rec.length
        if n < F.PAGE_DATA_HDR_FORMAT.size:
            self._fail(rec, f"PAGE_DATA record truncated: length {n}, min 8", "length")
        pd = _decoded(rec, PageData)
        count = pd.count
        if count < 1:
            self._fail(rec, "Expected at least 1 pfn in PAGE_DATA record", "count")
        if n < 8 + 8 * count:
            self._fail(
                rec,
                f"PAGE_DATA record (length {n}) too short to contain {count} pfns worth of "
                "information",
                "length",
            )
        pfns = pd.pfns
        types = pd.type_nibbles
        invalid = pfns > np.uint64(self.max_pfn) if self.guest == "pv" else np.zeros(count, bool)
        unknown = reserved(types)
        bad = np.flatnonzero(invalid | unknown)
        if len(bad):
            i = int(bad[0])
            pfn = int(pfns[i])
            if invalid[i]:
                self._fail(rec, f"pfn {cx(pfn)} (index {i}) outside domain maximum", f"pfn[{i}]")
            typ = int(types[i]) << 28
            self._fail(rec, f"Unknown type {cx(typ)} for pfn {cx(pfn)} (index {i})", f"pfn[{i}]")
        data = carries_data(types)
        nr = int(np.count_nonzero(data))
        if n != 8 + 8 * count + F.PAGE_SIZE * nr:
            self._fail(
                rec,
                f"PAGE_DATA record wrong size: length {n}, expected 8 + {8 * count} + "
                f"{F.PAGE_SIZE * nr}",
                "length",
            )
        populate = types != 0xF  # XTAB and BROKEN are not populated; XALLOC is
        populate &= types != 0xD
        if populate.any() and int(pfns[populate].max()) >= MAX_SIM_P2M_SIZE:
            self.log.errno = M.ENOMEM
            self.log.perror("Failed to populate physmap")
            self.log.error(f"Failed to populate pfns for batch of {count} pages")
            raise _Err(
                StreamMalformed(
                    f"pfn beyond the {MAX_SIM_P2M_SIZE:#x} pages the domain can hold",
                    offset=rec.offset,
                    record=rec.index,
                    field="Page data.pfn",
                )
            )
        if populate.any():
            self.top_pfn = max(self.top_pfn, int(pfns[populate].max()))
        if self.guest == "pv":
            self._set_page_types(pfns, types)
        dpfns = pfns[data]
        if not len(dpfns):
            return
        if self.verify:
            self._verify_pages(dpfns, pd.pages, types[data])
        else:
            self.domain.write_pages(dpfns, pd.pages)
        self.pages += len(dpfns)

    def _set_page_types(self, pfns: np.ndarray, types: np.ndarray) -> None:
        typed = types != 0
        if self.pfn_types:  # only page tables (and other non-NOTAB pages) are tracked
            for p in pfns[~typed].tolist():
                self.pfn_types.pop(int(p), None)
        for p, t in zip(pfns[typed].tolist(), types[typed].tolist(), strict=True):
            self.pfn_types[int(p)] = int(t) << 28

    def _verify_pages(self, pfns: np.ndarray, pages: memoryview, types: np.ndarray) -> None:
        for k, pfn in enumerate(pfns.tolist()):
            if self.domain.read_page(int(pfn)) != pages[k * F.PAGE_SIZE : (k + 1) * F.PAGE_SIZE]:
                self.log.error(f"verify pfn {cx(int(pfn))} failed (type {cx(int(types[k]))})")

    def _tsc_info(self, rec: V2Record) -> None:
        if rec.length != F.X86_TSC_INFO_FORMAT.size:
            self._fail(
                rec,
                f"X86_TSC_INFO record wrong size: length {rec.length}, expected "
                f"{F.X86_TSC_INFO_FORMAT.size}",
                "length",
            )
        tsc = _decoded(rec, X86TscInfo)
        self.tsc = {
            "mode": tsc.mode,
            "khz": tsc.khz,
            "nsec": tsc.nsec,
            "incarnation": tsc.incarnation,
        }

    def _policy(self, rec: V2Record) -> None:
        cpuid = rec.type == F.REC_TYPE_X86_CPUID_POLICY
        size = F.X86_CPUID_POLICY_ENTRY_SIZE if cpuid else F.X86_MSR_POLICY_ENTRY_SIZE
        if rec.length == 0 or rec.length % size:
            what = "X86_CPUID_POLICY" if cpuid else "X86_MSR_POLICY"
            entry = "xen_cpuid_leaf_t" if cpuid else "xen_msr_entry_t"
            self._fail(
                rec,
                f"{what} size {rec.length} should be multiple of {size} ({entry})",
                "length",
            )
        if cpuid:
            self.cpuid_policy = rec.body
        else:
            self.msr_policy = rec.body

    # -- x86 PV -----------------------------------------------------------------------------

    def _pv_info(self, rec: V2Record) -> None:
        if self.seen_pv_info:
            self._fail(rec, "Already received X86_PV_INFO record", "type")
        if rec.length < F.X86_PV_INFO_FORMAT.size:
            self._fail(
                rec, f"X86_PV_INFO record truncated: length {rec.length}, expected 8", "length"
            )
        info = _decoded(rec, X86PvInfo)
        width, levels = info.guest_width, info.pt_levels
        if (width, levels) not in ((4, 3), (8, 4)):
            self._fail(
                rec,
                f"Invalid X86_PV_INFO combination: width {width}, pt_levels {levels}",
                "guest_width",
            )
        self.guest_width, self.pt_levels = width, levels
        self.seen_pv_info = True

    def _p2m_frames(self, rec: V2Record) -> None:
        self._require_static_data_end(rec)
        if not self.seen_pv_info:
            self._fail(rec, "Not yet received X86_PV_INFO record", "type")
        n = rec.length
        if n < F.X86_PV_P2M_FRAMES_FORMAT.size:
            self._fail(rec, f"X86_PV_P2M_FRAMES record truncated: length {n}, min 16", "length")
        p2m = _decoded(rec, X86PvP2mFrames)
        start_pfn, end_pfn = p2m.p2m_start_pfn, p2m.p2m_end_pfn
        if start_pfn > end_pfn:
            self._fail(
                rec,
                f"End pfn in stream ({cx(end_pfn)}) exceeds Start ({cx(start_pfn)})",
                "p2m_end_pfn",
            )
        fpp = F.PAGE_SIZE // self.guest_width
        start, end = start_pfn // fpp, end_pfn // fpp + 1
        if n != 8 + (end - start) * 8:
            self._fail(
                rec,
                f"X86_PV_P2M_FRAMES record wrong size: start_pfn {cx(start_pfn)}, end_pfn "
                f"{cx(end_pfn)}, length {n}, expected 8 + ({end} - {start}) * 8",
                "length",
            )
        self.max_pfn = max(self.max_pfn, end_pfn)
        for x, pfn in enumerate(p2m.pfns.tolist()):
            self.p2m_pfns[start + x] = int(pfn)

    def _vcpu_blob(self, rec: V2Record) -> None:
        name, kind = _VCPU_BLOBS[rec.type]
        n = rec.length
        if n < F.X86_PV_VCPU_HDR_FORMAT.size:
            self._fail(rec, f"{name} record truncated: length {n}, header size 8", "length")
        vcpu = _decoded(rec, X86PvVcpu)
        vcpu_id, blob = vcpu.vcpu_id, vcpu.context
        if not blob:
            return  # tolerated: 4.6-4.8 senders sent empty records
        if vcpu_id >= LF.XC_SR_MAX_VCPUS:
            self._fail(
                rec,
                f"{name} record vcpu_id ({vcpu_id}) exceeds domain max ({LF.XC_SR_MAX_VCPUS - 1})",
                "vcpu_id",
            )
        if kind == "ctx":
            want = LF.VCPU_CONTEXT_SIZE_64 if self.guest_width == 8 else LF.VCPU_CONTEXT_SIZE_32
            if len(blob) != want:
                self._fail(rec, f"{name} record wrong size: expected {8 + want}, got {n}", "length")
        elif kind == "ext" and len(blob) > LF.EXT_VCPU_CONTEXT_SIZE:
            self._fail(rec, f"{name} record too long: max {8 + 128}, got {n}", "length")
        elif kind == "xsave" and len(blob) < 16:
            self._fail(rec, f"{name} record too short: min {8 + 16}, got {n}", "length")
        elif kind == "msrs" and len(blob) % _XEN_DOMCTL_VCPU_MSR_SIZE:
            self._fail(
                rec,
                f"{name} record payload size {len(blob)} expected to be a multiple of "
                f"{_XEN_DOMCTL_VCPU_MSR_SIZE}",
                "length",
            )
        self.vcpus.setdefault(vcpu_id, _Vcpu()).blobs[kind] = blob

    def _shared_info(self, rec: V2Record) -> None:
        if not self.seen_pv_info:
            self._fail(rec, "Not yet received X86_PV_INFO record", "type")
        if rec.length != F.SHARED_INFO_SIZE:
            self._fail(
                rec,
                f"X86_PV_SHARED_INFO record wrong size: length {rec.length}, expected 4096",
                "length",
            )
        self.shared_info = rec.body

    # -- x86 HVM ----------------------------------------------------------------------------

    def _hvm_params(self, rec: V2Record) -> None:
        n = rec.length
        if n < F.HVM_PARAMS_FORMAT.size:
            self._fail(rec, f"HVM_PARAMS record truncated: length {n}, header size 8", "length")
        hp = _decoded(rec, HvmParams)
        count = hp.count
        if n != 8 + 16 * count:
            self._fail(
                rec,
                f"HVM_PARAMS record truncated: header 8, count {count}, expected len "
                f"{16 * count}, got {n}",
                "length",
            )
        clear: list[int] = []
        for index, value in hp.params:
            if index == HVM_PARAM_PAE_ENABLED:
                continue
            if index in (
                HVM_PARAM_CONSOLE_PFN,
                HVM_PARAM_STORE_PFN,
                HVM_PARAM_IOREQ_PFN,
                HVM_PARAM_BUFIOREQ_PFN,
            ):
                clear.append(value)
            self.hvm_params[index] = value
        clear = [p for p in clear if p < MAX_SIM_P2M_SIZE]
        if clear:
            self.domain.zero_pages(np.array(clear, dtype=np.uint64))
            self.cleared.update(clear)
            self.top_pfn = max(self.top_pfn, *clear)

    # -- completing ------------------------------------------------------------------------

    def _stream_complete(self) -> None:
        """``ops.stream_complete``: what the simulation can check of it."""
        if self.guest == "pv":
            basic = self.vcpus.get(0)
            if basic is None or "ctx" not in basic.blobs:
                self._complete_failed("Sender didn't send vcpu0's basic state")
            fpp = F.PAGE_SIZE // self.guest_width
            for i in range(self.max_pfn // fpp + 1):
                pfn = self.p2m_pfns.get(i, _INVALID)
                if pfn > self.max_pfn:
                    self._complete_failed(f"pfn ({cx(pfn)}) for p2m_frame_list[{i}] out of range")
                if self.pfn_types.get(pfn, 0):
                    self._complete_failed(
                        f"pfn ({cx(pfn)}) for p2m_frame_list[{i}] has bad type "
                        f"{self.pfn_types[pfn] >> 28}"
                    )
        elif not self.hvm_context:
            self.log.errno = M.EINVAL
            self._complete_failed("Unable to restore HVM context", perror=True)

    def _complete_failed(self, message: str, *, perror: bool = False) -> NoReturn:
        if perror:
            self.log.perror(message)
        else:
            self.log.error(message)
        raise _Err(StreamMalformed(message, offset=self.source.offset, field="stream_complete"))

    def _libxl_after(self) -> str | None:
        """libxl reads the rest of its stream after libxc returned (libxl format only)."""
        if self.reader.format != LIBXL or self._final or self.stop_error is not None:
            return None  # nothing left, or a Remus failover: the primary is gone
        try:
            while not self._final:
                el = self._next()
                if isinstance(el, V2Record) and el.layer == LIBXL:
                    self._libxl_record(el)
        except (_LibxlAfter, _Err, _Failover) as e:
            self.stop_error = e.error
            if self.stream_type != StreamType.PLAIN:
                # xl migrate-receive -r: libxl returning at all means the primary is gone;
                # the domain carries on from the last checkpoint (xl's "Failover").
                return None
            return f"cannot read the libxl records after the libxc image: {e.error}"
        if not self.buffer_all_records:
            self.libxl_committed = self.libxl_staged
        return None

    def _finish(self) -> None:
        self._report("finish", force=True, ended=True)
        files: dict[str, bytes] = {}
        if self.guest == "pv":
            for vid, v in sorted(self.vcpus.items()):
                for kind, blob in v.blobs.items():
                    files[f"vcpu{vid}.{kind}"] = blob
            if self.shared_info is not None:
                files["shared_info"] = self.shared_info
            p2m_size = self.max_pfn + 1
        else:
            files["hvm_context"] = self.hvm_context or b""
            p2m_size = self.top_pfn + 1
        lx = self.libxl_committed
        if lx.qemu is not None:
            files["qemu"] = lx.qemu
        if lx.xenstore is not None:
            files["emulator_xenstore"] = lx.xenstore
        state = {
            "guest": self.guest,
            "stream": "v2",
            "image_version": self.format_version,
            "xen_version": "converted"
            if self.xen_version[0] == 0
            else "{}.{}".format(*self.xen_version),
            "format": self.reader.format,
            "framing": self.reader.framing,
            "guest_width": self.guest_width * 8 if self.guest == "pv" else None,
            "pt_levels": self.pt_levels if self.guest == "pv" else None,
            "p2m_size": p2m_size,
            "online_vcpus": sorted(v for v, b in self.vcpus.items() if "ctx" in b.blobs),
            "hvm_params": {str(k): v for k, v in sorted(self.hvm_params.items())},
            "tsc_info": self.tsc,
            "console_pfn": self.hvm_params.get(HVM_PARAM_CONSOLE_PFN),
            "store_pfn": self.hvm_params.get(HVM_PARAM_STORE_PFN),
            "zeroed_pfns": sorted(self.cleared),
            "cpuid_policy_bytes": None if self.cpuid_policy is None else len(self.cpuid_policy),
            "msr_policy_bytes": None if self.msr_policy is None else len(self.msr_policy),
            "verify_mode": self.verify,
            "qemu": None
            if lx.qemu is None
            else {"emulator_id": lx.qemu_id, "length": len(lx.qemu)},
            "committed_checkpoint": self.committed,
            "receiver": self.gen.name,
            "receiver_label": self.gen.label,
            "toolstack": self.request.toolstack,
            "stream_type": self.stream_type.name,
            "checkpointed_stream": int(self.stream_type),
            "failover": self.stop_error is not None,
            "outcome": "restored",
            "pages_applied": self.pages,
            "messages": list(self.log.lines),
        }
        self.domain.finish(state, files)


class _LibxlAfter(Stop):
    """libxl failed reading its records after libxc returned successfully."""


__all__ = ["V2Restore", "cx", "rec_type_to_str"]
