"""The reference receiver: libxc's ``xc_domain_restore`` control flow, one copy for all releases.

Follows legacy-stream.md §10.4 (pseudocode), §10.5 (what is buffered vs applied, and
when) and §10.6 (EOF / error outcomes); the per-release differences come from a
:class:`~xlpy.receiver.generations.Generation`, the toolstack around libxc from a
:class:`~xlpy.receiver.toolstacks.Toolstack`.  Stream elements are read with the legacy
reader's element readers; this module only decides *when* to read what, what takes
effect, and what libxc logs.

* Checkpoint 1 is applied batch by batch as it arrives; its tail is buffered.  The
  pages of a valid batch go straight from the stream into the domain's page file when
  it has one (this object is the reader's :class:`~xlpy.stream.legacy.reader.PageSink`);
  the effect is the same as reading the batch and then writing it.
* After the first tail ("completed") every read waits at most ``heartbeat`` seconds.
  Before it libxc has no heartbeat (a stall inside checkpoint 1 blocks it forever), so
  there, and for what the toolstack reads after libxc, the caller's stall bound
  (``request.timeout``) applies, if any: a stall then is a failed restore.
  Unless ``last_checkpoint`` is set, later checkpoints are buffered whole (body + tail)
  and applied only when complete; any read failure commits the last complete one
  (R-fix44: destroys the domain instead).
* Failures before completion, and any failure while applying, destroy the domain.
* PV finish checks what libxc checks before loading the vcpus: vcpu0's start-info frame
  and the xenstore/console frames in it, the GDT frames, the (user) page-table base
  against the pfn's page type, then the p2m frame list (§3.3, §7.1, §11).
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np

from xlpy.errors import (
    StreamError,
    StreamMalformed,
    StreamTimeout,
    StreamTruncated,
    UsageError,
)
from xlpy.progress import RunProgress
from xlpy.receiver import messages as M
from xlpy.receiver.domains import Domain, DomainFull, Outcome, ReceiveRequest, Stop
from xlpy.receiver.generations import generation
from xlpy.receiver.toolstacks import checkpointed_for, toolstack
from xlpy.stream.legacy import fields as FLD
from xlpy.stream.legacy import format as F
from xlpy.stream.legacy import framing, pvcontext
from xlpy.stream.legacy.compression import CheckpointDecoder
from xlpy.stream.legacy.fields import Element, element
from xlpy.stream.legacy.reader import LegacyReader, PagePlacement
from xlpy.stream.legacy.records import (
    CompressedData,
    EnableCompression,
    EnableVerifyMode,
    EndOfBody,
    HvmParamChunk,
    HvmTail,
    LastCheckpoint,
    P2mFrameList,
    PageBatch,
    PvTail,
    QemuRecord,
    Record,
    TmemExtra,
    Toolstack,
    TscInfo,
    VcpuInfo,
)
from xlpy.stream.source import ByteSource

#: HVM params set in the end-of-body step (§5, §10.4), by chunk id.
END_OF_BODY_PARAMS = {
    F.XC_SAVE_ID_HVM_IDENT_PT: "ident_pt",
    F.XC_SAVE_ID_HVM_VM86_TSS: "vm86_tss",
    F.XC_SAVE_ID_HVM_PAGING_RING_PFN: "paging_ring_pfn",
    F.XC_SAVE_ID_HVM_ACCESS_RING_PFN: "access_ring_pfn",
    F.XC_SAVE_ID_HVM_SHARING_RING_PFN: "sharing_ring_pfn",
}


# What libxc logs when a read fails, by the reader's field (or element) that failed: each
# libxc read has its own message (§11).  A field not listed gets the step's default.

#: Extended info (§3.2); anything else is the read-and-discard of an unknown block.
_EXT_INFO_MESSAGES: dict[str, str] = {
    FLD.EXT_INFO_SIGNATURE: M.EXT_SIGNATURE,
    FLD.EXT_INFO_TOTAL_BYTES: M.EXT_SIZE,
    FLD.EXT_INFO_BLOCK_ID: M.EXT_CHUNK_SIGNATURE,
    FLD.EXT_INFO_BLOCK_SIZE: M.EXT_CHUNK_SIGNATURE,
    FLD.EXT_INFO_VCPU: M.EXT_VCPU_CONTEXT,
}
#: Chunks (§5): these fields have a read of their own ...
_CHUNK_FIELD_MESSAGES: dict[str, str] = {
    FLD.CHUNK_HEADER: M.READING_BATCH_SIZE,
    FLD.BATCH_ENTRIES: M.REGION_PFN_TYPES,
    FLD.BATCH_PAGES: M.READING_PAGES,
    FLD.COMPRESSED_DATA_LENGTH: M.COMPBUF_SIZE,
    FLD.TOOLSTACK_LENGTH: M.TOOLSTACK_SIZE,
}
#: ... the others share their element's message; any other is "reading batch size".
_CHUNK_ELEMENT_MESSAGES: dict[str, str] = {
    Element.VCPU_INFO: M.READING_MAX_VCPU_ID,
    Element.TSC_INFO: M.TSC_INFO,
    Element.TMEM_EXTRA: M.TMEM_EXTRA,
    Element.TMEM: M.TMEM,
    Element.COMPRESSED_DATA: M.COMPBUF_READ,
    Element.TOOLSTACK: M.TOOLSTACK_READ,
}
#: Tails (§7); anything else is the PV vcpu context read.
_TAIL_MESSAGES: dict[str, str] = {
    FLD.PV_TAIL_PFN_COUNT: M.PV_PFN_COUNT,
    FLD.PV_TAIL_PFNS: M.PV_PFNTAB,
    FLD.PV_TAIL_SHARED_INFO: M.PV_SHARED_INFO,
    FLD.HVM_TAIL_MAGIC_PFNS: M.HVM_MAGIC_PFNS,
    FLD.HVM_TAIL_CONTEXT_LENGTH: M.HVM_PARAMS_SIZE,
    FLD.HVM_TAIL_CONTEXT: M.HVM_PARAMS,
}


class _Out(Stop):
    """libxc's ``goto out``: the restore fails and the domain is destroyed."""


class _ReadFailed(Stop):
    """A ``pagebuf_get_one`` / ``buffer_tail`` returned -1 (already logged)."""


@dataclass
class _Staged:
    """One page batch as staged in ``pagebuf`` (raw entries, page data or ``None``).

    ``placed``: the pages already went from the stream into the domain (:meth:`Restore.place`).
    """

    entries: np.ndarray
    data: bytes | memoryview | None
    placed: bool = False


@dataclass(frozen=True, slots=True)
class _Entries:
    """A batch's entries decoded as libxc does when it applies them."""

    types: np.ndarray
    pfns: np.ndarray
    #: Entries that carry a page.
    data_mask: np.ndarray
    #: pfn >= p2m_size (except XTAB) and bogus page types: libxc fails on the first one.
    out_of_range: np.ndarray
    bad: np.ndarray


def _entry_array(entries: bytes, width: int) -> np.ndarray:
    """Raw W-sized entries as uint64, upper half ignored (libxc masks with a 32-bit constant)."""
    dt = "<u8" if width == 8 else "<u4"
    return np.frombuffer(entries, dtype=dt).astype(np.uint64) & np.uint64(0xFFFFFFFF)


@dataclass
class _PageBuf:
    """libxc's ``pagebuf``: per-checkpoint staging plus metadata that persists in it."""

    batches: list[_Staged] = field(default_factory=list)
    nr_pages: int = 0
    compbuf: list[bytes] = field(default_factory=list)
    compbuf_segments: list[tuple[int, int]] = field(default_factory=list)
    # Not reset per checkpoint (pagebuf_get only resets the counters).
    vcpu_info: VcpuInfo | None = None
    params: dict[int, int] = field(default_factory=dict)
    toolstack: bytes | None = None
    verify: bool = False
    compressing: bool = False

    def reset(self) -> None:
        self.batches = []
        self.nr_pages = 0
        self.compbuf = []
        self.compbuf_segments = []


@dataclass
class _Tail:
    """A buffered tail (``tailbuf`` / ``tmptail``) with the QEMU record libxc read."""

    tail: PvTail | HvmTail
    qemu: QemuRecord | None


class Restore:
    """One ``xc_domain_restore`` call plus the toolstack steps around it."""

    def __init__(self, source: ByteSource, request: ReceiveRequest, domain: Domain) -> None:
        self.source = source
        self.request = request
        self.domain = domain
        self.gen = generation(request.generation)
        self.ts = toolstack(request.toolstack)
        if self.gen.takes_checkpointed:
            self.cs: int | None = checkpointed_for(self.ts, request.checkpointed)
        elif request.checkpointed is not None:
            raise UsageError(
                f"{self.gen.name} ({self.gen.label}) has no checkpointed_stream argument"
            )
        else:
            self.cs = None
        if request.heartbeat <= 0:
            raise UsageError("heartbeat must be positive")
        self.log = M.XcLog(self.gen)
        #: Type nibble -> the entry carries a page (this generation's dataless types).
        self._carries_page = np.array([t not in self.gen.dataless_nibbles for t in range(16)])
        self.reader = LegacyReader(
            source, width=request.width, guest=request.guest, reuse_buffers=True
        )
        self.pb = _PageBuf()
        # ctx (§10.1)
        self.completed = False
        self.last_checkpoint = bool(self.cs == 0) if self.gen.takes_checkpointed else False
        self.ctx_compressing = False
        # live state
        self.p2m_size = 0
        self.guest = "pv"
        self.width = 8
        self.guest_width = 8
        self.frame_list: P2mFrameList | None = None
        self.vcpu_info: VcpuInfo | None = None
        self.tailbuf: _Tail | None = None
        self.tdata: bytes | None = None
        self.hvm_params: dict[str, int] = {}
        self.console_pfn: int | None = None
        self.genid_addr: int | None = None
        self.tsc: dict[str, int] | None = None
        self.tmem: dict[str, int] = {}
        #: libxc's ``pfn_type[]``: the type nibble of each pfn's last page, NOTAB (0) left out.
        self.pfn_type: dict[int, int] = {}
        #: A PV guest's xenstore and console pfns, from its start-info page.
        self.pv_store_pfn: int | None = None
        self.pv_console_pfn: int | None = None
        self.broken: set[int] = set()
        #: Pages HVM finish cleared (magic and console pfns).
        self.zeroed: list[int] = []
        self.pages = 0
        self.checkpoints_complete = 0
        self.image_end: int | None = None
        self.consumed_to: int = 0
        #: Logical bytes consumed when libxc returned (before the toolstack reads more).
        self.libxc_consumed = 0
        #: The tail blobs libxc's FINISH keeps (written once the toolstack is done).
        self.files: dict[str, bytes] = {}
        #: The QEMU record: read by libxc with the tail, or by the toolstack after it.
        self.qemu: QemuRecord | None = None
        #: The first QEMU record's signature, where libxc or the toolstack read one.
        self.qemu_seen: bytes | None = None
        self.stop_error: StreamError | None = None
        #: ``log.lines`` when libxc began waiting for the next checkpoint, and how many
        #: lines the read that ended that wait logged.
        self._wait_started = 0
        self.ending_lines = 0
        self._report = RunProgress(
            request.progress, lambda: (self.checkpoints_complete, self.pages, self.source.offset)
        )

    # -- the public step ----------------------------------------------------------------

    def run(self) -> Outcome:
        """Restore, returning the outcome; never raises for stream problems."""
        try:
            self._toolstack_before()
            self._libxc()
        except _Out as e:
            self.libxc_consumed = self._consumed()
            return self._failed(rc=1, error=e.error)
        self.libxc_consumed = self._consumed()
        toolstack_error = self._toolstack_after()
        if toolstack_error is not None:
            self.log.stderr(f"{self.ts.name}: {toolstack_error}")
            return self._failed(rc=0, error=self.stop_error, toolstack_error=toolstack_error)
        self._write_domain()
        self.domain.publish()
        self._report("done", force=True, ended=True)
        return self._result(ok=True, rc=0, error=self.stop_error)

    # -- results ------------------------------------------------------------------------

    def _consumed(self) -> int:
        return max(self.source.offset, self.consumed_to)

    def _result(self, *, ok: bool, rc: int, error: StreamError | None, **kw: Any) -> Outcome:
        consumed = self.libxc_consumed
        past = 0 if self.image_end is None else max(0, consumed - self.image_end)
        return Outcome(
            ok=ok,
            rc=rc,
            committed_checkpoint=self.checkpoints_complete - 1 if ok else None,
            bytes_past_image=past,
            domain_destroyed=not ok,
            messages=list(self.log.lines),
            out=self.request.out if ok else None,
            generation=self.gen.name,
            toolstack=self.ts.name,
            checkpointed=self.cs,
            error=error,
            checkpoints_complete=self.checkpoints_complete,
            bytes_consumed=consumed,
            image_end=self.image_end,
            eaten=self._eaten(),
            framing=framing.FRAMING_XENSERVER_CLASSIC
            if self.qemu_seen == F.XENSERVER_QEMU_SIG
            else self.reader.framing,
            qemu_signature=self.qemu_seen,
            ending_lines=self.ending_lines,
            **kw,
        )

    def _eaten(self) -> bytes:
        """The chunk header libxc gave up on right after its image (``Outcome.eaten``)."""
        e = self.stop_error
        if (
            isinstance(e, StreamMalformed)
            and e.field == FLD.CHUNK_HEADER
            and e.offset == self.image_end
            and e.value is not None
        ):
            return e.value.to_bytes(4, "little", signed=True)
        return b""

    def _failed(self, *, rc: int, error: StreamError | None, **kw: Any) -> Outcome:
        self.domain.destroy()
        self._report("failed", force=True)
        return self._result(ok=False, rc=rc, error=error, **kw)

    # -- toolstack around libxc ------------------------------------------------------------

    def _toolstack_before(self) -> None:
        """The toolstack reads its own header (xl, xend) before handing the fd to libxc."""
        try:
            self.reader.read_framing()
        except StreamError as e:
            self.log.stderr(f"{self.ts.name}: cannot read the save header: {e}")
            raise _Out(e) from None

    def _toolstack_after(self) -> str | None:
        """XenServer-classic: xenopsd reads its own QEMU record after libxc returned (§8.1)."""
        if not (self.ts.reads_foreign_qemu and self.guest == "hvm"):
            return None
        src = self.source
        sig = F.XENSERVER_QEMU_SIG
        start = src.offset
        try:
            got = src.read_exact(len(sig), field="xenserver_qemu.signature")
            # What libxc ate belongs in front: the record as its writer began it.
            eaten = self._eaten()
            past = self.libxc_consumed - (self.image_end or 0)
            self._saw_qemu(eaten + got if past == len(eaten) else got)
            if got != sig:
                return f"bad QEMU record signature {got!r} (expected {sig!r})"
            (n,) = struct.unpack(">I", src.read_exact(4, field="xenserver_qemu.length"))
            data = src.read_exact(n, field="xenserver_qemu.data")
        except StreamError as e:
            return f"cannot read the QEMU record: {e}"
        self.qemu = QemuRecord(offset=start, signature=sig, data=data)
        return None

    def _write_domain(self) -> None:
        """The domain directory's files: libxc's FINISH state plus the QEMU record."""
        if self.tailbuf is None:
            raise AssertionError("no domain without a buffered tail")
        files = dict(self.files)
        if self.qemu is not None:
            files["qemu"] = self.qemu.data
        self.domain.finish(self._state(self.tailbuf.tail, self.qemu), files)

    # -- libxc ----------------------------------------------------------------------------

    def _libxc(self) -> None:
        self._header()
        self.reader.begin_checkpoint(0, False)
        self._report("checkpoint", force=True)
        while True:  # LOADPAGES
            if not self.completed:
                while True:
                    try:
                        self._read_one()
                    except _ReadFailed as f:
                        self.log.perror(M.READING_BATCH)
                        raise _Out(f.error) from None
                    if not self.pb.batches:
                        break
                    self._apply_staged()
            else:
                self._apply_staged()
            self._end_of_body()
            if not self.completed:
                try:
                    self.tailbuf = self._buffer_tail()
                except _ReadFailed as f:
                    self.log.error(M.BUFFERING_TAIL)
                    raise _Out(f.error) from None
                self._tail_complete()
                self.completed = True
                if not self.last_checkpoint:
                    self.source.timeout = self.request.heartbeat
                if self.ctx_compressing:
                    self.pb.compressing = True
            self._after_tail()
            if self.last_checkpoint:
                break
            # Wait for the next checkpoint, buffering it completely.
            self._report("buffering", force=True)
            self._wait_started = len(self.log.lines)
            self.reader.begin_checkpoint(self.checkpoints_complete, self.pb.compressing)
            try:
                self._read_body()
            except _ReadFailed as f:
                self.log.perror(M.BUFFERING_BATCH_FINISHING)
                self._post_completion_failure(f.error)
                break
            try:
                tail = self._buffer_tail()
            except _ReadFailed as f:
                self.log.error(M.BUFFERING_TAIL_FINISHING)
                self._post_completion_failure(f.error)
                break
            self.tailbuf = tail
            self._tail_complete()
        self.source.timeout = self.request.timeout
        self._finish()

    def _tail_complete(self) -> None:
        self.checkpoints_complete += 1
        self.image_end = self.source.offset
        self._report("checkpoint", force=True, ended=True)

    def _post_completion_failure(self, error: StreamError) -> None:
        self.stop_error = error
        self.ending_lines = len(self.log.lines) - self._wait_started
        if self.gen.post_completion_fatal:
            raise _Out(error)

    # -- header (§3) ------------------------------------------------------------------------

    def _header(self) -> None:
        # A guest type the stream cannot tell (UsageError) goes up as it is: libxc's caller
        # always knows it, so without it the toolstack cannot start the restore at all (a
        # usage error, as from every backend), and no libxc failure is staged for it.
        r = self.reader
        try:
            hdr = r.read_header()
        except StreamError as e:
            self._io_failure(e)
            self.log.error(M.READ_P2M_SIZE)
            raise _Out(e) from None
        self.p2m_size = hdr.p2m_size
        self.width = hdr.width
        self.guest = r.guest or "pv"
        if self.guest == "pv":
            try:
                ext = r.read_pv_ext_info()
                self.frame_list = r.read_p2m_frame_list()
            except StreamError as e:
                self._ext_info_failure(e)
                raise _Out(e) from None
            if ext is not None and not self.gen.knows_xcnt:
                # Skipped as an unknown block: later tails are read without xsave records.
                blocks = tuple(b for b in ext.blocks if b.block_id != b"xcnt")
                r.ext_info = dataclasses.replace(ext, blocks=blocks)
        self.guest_width = r.guest_width or self.width
        try:
            self.domain.create(
                guest=self.guest,
                p2m_size=self.p2m_size,
                width=self.width,
                guest_width=self.guest_width,
            )
        except DomainFull as e:
            self.log.errno = M.ENOMEM
            self.log.error(M.MEMORY_ALLOC)
            raise _Out(
                StreamMalformed(str(e), offset=hdr.offset, field="header.p2m_size")
            ) from None

    def _ext_info_failure(self, e: StreamError) -> None:
        f = e.field or ""
        self._io_failure(e)
        if f == FLD.EXT_INFO_VCPU_SIZE:
            self.log.error(M.EXT_CONTEXT_SIZE, n=e.value)
            return
        if element(f) == Element.P2M_FRAME_LIST:
            msg = M.P2M_FL
        else:
            msg = _EXT_INFO_MESSAGES.get(f, M.EXT_DISCARD)
        self.log.perror(msg)

    # -- reading chunks (§10.3) -----------------------------------------------------------

    def _io_failure(self, e: StreamError) -> None:
        """What ``rdexact`` logs for a failed read (nothing for a bad value)."""
        if isinstance(e, StreamTimeout):
            self.log.read_timeout()
        elif isinstance(e, StreamTruncated):
            self.log.read_eof()

    def _read_one(self) -> int:
        """``pagebuf_get_one``: metadata chunks recurse, a batch or -12 returns."""
        r = self.reader
        while True:
            head = b""
            try:
                head = self.source.peek(4)
                rec = r.read_chunk(
                    known_ids=self.gen.known_ids,
                    dataless_nibbles=self.gen.dataless_nibbles,
                    compressed=self.pb.compressing,
                    max_vcpu_id=self.gen.max_vcpu_id,
                    page_sink=None if self.completed else self,
                )
            except StreamError as e:
                self._chunk_failure(e, head)
                raise _ReadFailed(e) from None
            match rec:
                case EndOfBody():
                    return 0
                case PageBatch():
                    self._stage(rec)
                    self._report("checkpoint")
                    return rec.count
                case CompressedData():
                    pos = sum(len(b) for b in self.pb.compbuf)
                    self.pb.compbuf_segments.append((pos, rec.offset + 4 + self.width))
                    self.pb.compbuf.append(bytes(rec.data))
                    return len(rec.data) or 1
                case _:
                    self._metadata(rec)

    def _read_body(self) -> None:
        """``pagebuf_get``: read chunks until the end of a whole body."""
        self.pb.reset()
        while self._read_one() > 0:
            pass

    def _chunk_failure(self, e: StreamError, head: bytes) -> None:
        f = e.field or ""
        if f == FLD.CHUNK_HEADER and isinstance(e, StreamMalformed):
            self.log.error(M.MAX_BATCH_SIZE, n=e.value)
            self.log.errno = M.EMSGSIZE
            if e.offset is not None:
                self.consumed_to = max(self.consumed_to, e.offset + 4)
            return
        if f == FLD.COMPRESSED_DATA_LENGTH and isinstance(e, StreamMalformed):
            # libxc has no bound of its own: it reallocs compbuf by the declared length, and
            # that fails for a hostile one (2^64 - 1 is beyond any address space).  The reader
            # refuses every length beyond the sender's buffer, so they all get this message
            # (libxc would go on to read one that memory could back: a deliberate difference).
            self.log.errno = M.ENOMEM
            self.log.error(M.COMPBUF_ALLOC)
            return
        self._io_failure(e)
        chunk_id = int.from_bytes(head, "little", signed=True) if len(head) == 4 else 0
        el = element(f)
        if el == Element.TOOLSTACK and self.gen.toolstack_errors_ignored:
            # <= 4.3.x ignores both TOOLSTACK reads' errors (f46fa80ec4): after a cut
            # length the blob read fails too (unless the partial length is 0: nothing to
            # read), then the next chunk header read, each on the same EOF / silence.
            if f == FLD.TOOLSTACK_LENGTH and self._partial_length(e) != 0:
                self._io_failure(e)
            self._io_failure(e)
            msg = M.READING_BATCH_SIZE
        elif el == Element.HVM_PARAM:
            msg = M.HVM_PARAM_READ.get(chunk_id, M.READING_BATCH_SIZE)
        elif f in _CHUNK_FIELD_MESSAGES:
            msg = _CHUNK_FIELD_MESSAGES[f]
        else:
            msg = _CHUNK_ELEMENT_MESSAGES.get(el, M.READING_BATCH_SIZE)
        self.log.perror(msg)

    def _partial_length(self, e: StreamError) -> int | None:
        """The u32 libxc's ``RDEXACT`` left behind a cut length (its bytes over zeros);
        ``None`` when unknown (a silent peer: looking would wait another heartbeat)."""
        if not isinstance(e, StreamTruncated):
            return None
        return int.from_bytes(self.source.peek(4), "little")

    def _metadata(self, rec: Record) -> None:
        """A metadata chunk: immediate effect, or staged in ``pagebuf`` (§10.5)."""
        pb = self.pb
        match rec:
            case VcpuInfo():
                pb.vcpu_info = rec
            case HvmParamChunk():
                pb.params[rec.chunk_id] = rec.value
            case Toolstack():
                pb.toolstack = rec.blob
            case TscInfo():
                self.tsc = {
                    "mode": rec.tsc_mode,
                    "nsec": rec.nsec,
                    "khz": rec.khz,
                    "incarnation": rec.incarnation,
                }
            case TmemExtra():
                self.tmem["extra_entries"] = self.tmem.get("extra_entries", 0) + len(rec.entries)
            case LastCheckpoint():
                self.last_checkpoint = True
            case EnableCompression():
                self.ctx_compressing = True
            case EnableVerifyMode():
                pb.verify = True
            case _:  # TMEM (-5): restored at once
                pools = getattr(rec, "pools", ())
                self.tmem["pools"] = self.tmem.get("pools", 0) + len(pools)

    def place(self, entries: bytes, width: int, nbytes: int) -> PagePlacement | None:
        """``PageSink``: where checkpoint 1's pages go, straight from the stream.

        Only for a batch that will apply cleanly (outside verify mode, which compares
        instead of writing): anything else is read first, then fails as libxc does, in
        its order (a truncated batch before a bad entry).
        """
        if self.completed or self.pb.verify or self.pb.compressing:
            return None
        ent = self._classify(_entry_array(entries, width))
        if len(ent.bad):
            return None
        target = self.domain.page_file(ent.pfns[ent.data_mask])
        return None if target is None else PagePlacement(*target)

    def _stage(self, rec: PageBatch) -> None:
        entries = _entry_array(rec.entries, rec.width)
        data = rec.data
        placed = data is None and not self.pb.compressing
        if data is not None and self.completed:
            data = bytes(data)  # buffered until the tail arrives; the reader reuses its buffer
        self.pb.batches.append(_Staged(entries, data, placed))
        self.pb.nr_pages += len(entries)

    # -- applying (§4.3, §6.3) -------------------------------------------------------------

    def _apply_staged(self) -> None:
        decoder: CheckpointDecoder | None = None
        if self.pb.compressing:
            decoder = CheckpointDecoder(b"".join(self.pb.compbuf), self.pb.compbuf_segments)
        for staged in self.pb.batches:
            self._apply_batch(staged, decoder)
        self.pb.reset()

    def _classify(self, ent: np.ndarray) -> _Entries:
        types = (ent >> np.uint64(28)).astype(np.uint8)
        pfns = ent & np.uint64(F.PFN_MASK)
        data_mask = self._carries_page[types]
        out_of_range = (types != 0xF) & (pfns >= np.uint64(self.p2m_size))
        bogus = data_mask & ((types & 7) > 4)
        bad = np.flatnonzero(out_of_range | bogus)
        return _Entries(types, pfns, data_mask, out_of_range, bad)

    def _apply_batch(self, staged: _Staged, decoder: CheckpointDecoder | None) -> None:
        ent = self._classify(staged.entries)
        types, pfns, data_mask = ent.types, ent.pfns, ent.data_mask
        if len(ent.bad):
            i = int(ent.bad[0])
            if ent.out_of_range[i]:
                self._fatal(M.PFN_OUT_OF_RANGE, "batch.entries", int(pfns[i]))
            self._fatal(
                M.BOGUS_PAGE_TYPE.format(
                    type=(int(types[i]) << 28) & F.XEN_DOMCTL_PFINFO_LTABTYPE_MASK,
                    i=i,
                    p2m_size=self.p2m_size,
                ),
                "batch.entries",
                int(types[i]),
            )
        broken = types == 0xD
        if broken.any() and 0xD in self.gen.dataless_nibbles:
            self.broken.update(pfns[broken].tolist())
        dpfns = pfns[data_mask]
        if not len(dpfns):
            return
        self._track_types(dpfns, types[data_mask])
        if decoder is not None:
            data: memoryview | None = self._decode(decoder, dpfns)
        elif staged.placed:
            data = None  # already in the domain
        elif staged.data is None:
            raise AssertionError("format A batch without page data")
        else:
            data = memoryview(staged.data)
        if data is not None and not self.pb.verify:  # verify mode compares instead (-1)
            self.domain.write_pages(dpfns, data)
        self.pages += len(dpfns)

    def _track_types(self, pfns: np.ndarray, types: np.ndarray) -> None:
        """``pfn_type[pfn] = pagetype`` for every page applied (L1296)."""
        typed = types != 0
        if typed.any():
            for p, t in zip(pfns[typed].tolist(), types[typed].tolist(), strict=True):
                self.pfn_type[int(p)] = int(t)
        if self.pfn_type:
            plain = pfns[~typed]
            keys = np.fromiter(self.pfn_type, dtype=np.uint64, count=len(self.pfn_type))
            for p in plain[np.isin(plain, keys)].tolist():
                del self.pfn_type[int(p)]

    def _decode(self, decoder: CheckpointDecoder, pfns: np.ndarray) -> memoryview:
        plist = pfns.tolist()
        pages = np.empty((len(plist), F.PAGE_SIZE), dtype=np.uint8)
        for i, pfn in enumerate(plist):
            pages[i] = np.frombuffer(self.domain.read_page(int(pfn)), dtype=np.uint8)
        try:
            decoder.decode_into(pages, pfns=plist)
        except StreamMalformed as e:
            self.log.error(e.message)
            self.log.error(M.UNCOMPRESS, pfn=e.value or 0)
            raise _Out(e) from None
        return pages.reshape(-1).data

    def _fatal(self, message: str, fieldname: str, value: int | None = None) -> NoReturn:
        self.log.error(message)
        raise _Out(
            StreamMalformed(
                message.rstrip("\n"), offset=self.source.offset, field=fieldname, value=value
            )
        )

    # -- end of body, tails, after the tail (§10.4, §10.5) -----------------------------------

    def _end_of_body(self) -> None:
        pb = self.pb
        if pb.vcpu_info is not None:
            self.vcpu_info = pb.vcpu_info
        for cid, name in END_OF_BODY_PARAMS.items():
            if cid in pb.params:
                self.hvm_params[name] = pb.params[cid]
        if F.XC_SAVE_ID_HVM_CONSOLE_PFN in pb.params:
            self.console_pfn = pb.params[F.XC_SAVE_ID_HVM_CONSOLE_PFN]
        addr = pb.params.get(F.XC_SAVE_ID_HVM_GENERATION_ID_ADDR)
        if addr is not None:
            if self.gen.genid_is_param:
                self.hvm_params["vm_generation_id_addr"] = addr
            else:
                pfn = addr >> F.PAGE_SHIFT
                if pfn >= self.p2m_size or pfn in self.pfn_type:
                    self._fatal(M.GENID_FRAME_BAD, "hvm_param.value", addr)
            self.genid_addr = addr

    def _buffer_tail(self) -> _Tail:
        try:
            tail = self.reader.read_tail(vcpu_info=self.vcpu_info)
        except StreamError as e:
            self._tail_failure(e)
            raise _ReadFailed(e) from None
        qemu = None
        if isinstance(tail, HvmTail) and self.ts.libxc_reads_qemu:
            qemu = self._buffer_qemu()
        return _Tail(tail, qemu)

    def _tail_failure(self, e: StreamError) -> None:
        f = e.field or ""
        self._io_failure(e)
        self.log.perror(_TAIL_MESSAGES.get(f, M.PV_CTXT))

    def _buffer_qemu(self) -> QemuRecord:
        """The QEMU record upstream libxc reads as part of the HVM tail (§7.2, §8.1)."""
        src = self.source
        start = src.offset
        try:
            sig = src.read_exact(F.QEMU_SIGNATURE_LEN, field="qemu.signature")
        except StreamError as e:
            self._io_failure(e)
            self.log.perror(M.QEMU_SIGNATURE_READ)
            raise _ReadFailed(e) from None
        if sig == F.QEMU_SIG_TO_EOF:
            # compat_buffer_qemu: a plain blocking read() loop, no heartbeat (§8.1).
            saved, src.timeout = src.timeout, self.request.timeout
            try:
                data = src.read_to_eof(field="qemu.data")
            finally:
                src.timeout = saved
            self._saw_qemu(sig + data[:1])
            if data[:4] != F.QEMU_MAGIC:
                magic = int.from_bytes(data[:4].ljust(4, b"\0"), "little")
                self.log.error(M.QEMU_MAGIC, magic=magic)
                raise _ReadFailed(StreamMalformed("bad QEMU magic", offset=start, field="qemu"))
        elif sig in (F.QEMU_SIG_0002, F.QEMU_SIG_REMUS):
            self._saw_qemu(sig)
            try:
                raw = src.read_exact(4, field="qemu.length")
            except StreamError as e:
                self._io_failure(e)
                self.log.perror(M.QEMU_LENGTH)
                raise _ReadFailed(e) from None
            try:
                data = src.read_exact(int.from_bytes(raw, "little"), field="qemu.data")
            except StreamError as e:
                self._io_failure(e)
                self.log.perror(M.QEMU_STATE)
                raise _ReadFailed(e) from None
        else:
            self.log.error(M.QEMU_SIGNATURE_BAD, sig=sig[:20].decode("latin-1"))
            raise _ReadFailed(
                StreamMalformed("invalid QEMU signature", offset=start, field="qemu.signature")
            )
        return QemuRecord(offset=start, signature=sig, data=data)

    def _saw_qemu(self, head: bytes) -> None:
        """Note the first QEMU record's signature (the reader's test) from its first bytes."""
        if self.qemu_seen is None:
            self.qemu_seen = framing.qemu_signature(head)

    def _after_tail(self) -> None:
        """Params taken from the staged values once a tail is buffered (L1742-1756)."""
        p = self.pb.params
        acpi = p.get(F.XC_SAVE_ID_HVM_ACPI_IOPORTS_LOCATION)
        if acpi == 1:
            self.hvm_params["acpi_ioports_location"] = 1
        elif acpi not in (None, 0):
            self.log.error(M.ACPI_IOPORT, v=acpi)
        viridian = p.get(F.XC_SAVE_ID_HVM_VIRIDIAN)
        if viridian:
            self.hvm_params["viridian"] = viridian if self.gen.viridian_mask else 1
        pfn = p.get(F.XC_SAVE_ID_HVM_IOREQ_SERVER_PFN)
        nr = p.get(F.XC_SAVE_ID_HVM_NR_IOREQ_SERVER_PAGES)
        if pfn is not None or nr is not None:
            if bool(pfn) != bool(nr):
                self.log.error(M.IOREQ_INCONSISTENT, nr=nr or 0, pfn=pfn or 0)
            elif pfn:
                self.hvm_params["ioreq_server_pfn"] = pfn
                self.hvm_params["nr_ioreq_server_pages"] = nr or 0
        self.tdata = self.pb.toolstack

    # -- FINISH ---------------------------------------------------------------------------

    def _finish(self) -> None:
        self._report("finish", force=True, ended=True)
        if self.tailbuf is None:
            raise AssertionError("finish without a buffered tail")
        tail = self.tailbuf.tail
        files: dict[str, bytes] = {}
        if isinstance(tail, PvTail):
            # libxc indexes p2m with these unchecked; the simulation ignores wild ones.
            unmapped = np.array([p for p in tail.unmapped if p < self.p2m_size], dtype=np.uint64)
            self.domain.zero_pages(unmapped)
            for v in tail.vcpus:
                self._check_vcpu(v.vcpu_id, v.context)
            fl = self.frame_list.entries if self.frame_list is not None else ()
            for i, pfn in enumerate(fl):
                if pfn >= self.p2m_size or pfn in self.pfn_type:
                    self._fatal(M.P2M_FRAME_BAD.format(i=i, pfn=pfn), "p2m_frame_list", pfn)
            for v in tail.vcpus:
                files[f"vcpu{v.vcpu_id}.ctx"] = v.context
                if v.ext is not None:
                    files[f"vcpu{v.vcpu_id}.ext"] = v.ext
                if v.xsave is not None:
                    files[f"vcpu{v.vcpu_id}.xsave"] = v.xsave.data
            files["shared_info"] = tail.shared_info
        else:
            if self.tdata is not None and not self.ts.toolstack_callback:
                self._fatal(M.TOOLSTACK_NO_CALLBACK, "toolstack")
            files["hvm_context"] = tail.context
            self.hvm_params.update(
                ioreq_pfn=tail.ioreq_pfn,
                bufioreq_pfn=tail.bufioreq_pfn,
                store_pfn=tail.store_pfn,
            )
            # HVM finish clears the three magic pages and the console page (§7.2, -8).
            magic = [tail.ioreq_pfn, tail.bufioreq_pfn, tail.store_pfn]
            if self.console_pfn is not None:
                self.hvm_params["console_pfn"] = self.console_pfn
                magic.append(self.console_pfn)
            self.zeroed = sorted({p for p in magic if p < self.p2m_size})
            self.domain.zero_pages(np.array(self.zeroed, dtype=np.uint64))
        self.qemu = self.tailbuf.qemu
        if self.tdata is not None:
            files["toolstack"] = self.tdata
        self.files = files

    def _check_vcpu(self, vcpu_id: int, context: bytes) -> None:
        """PV finish's checks of one vcpu context's canonical frame numbers (§7.1, §11).

        The simulation has no mfns: it checks as libxc does but leaves the start-info
        page and the context as the stream had them (libxc rewrites pfns to mfns).
        """
        gw = self.guest_width
        ctx = pvcontext.read_context(context, gw)
        p2m = self.p2m_size
        if vcpu_id == 0:
            pfn = ctx.edx
            if pfn >= p2m or pfn in self.pfn_type:
                self._fatal(M.SUSPEND_RECORD_BAD, "vcpu0.edx", pfn)
            store, console = pvcontext.read_start_info(self.domain.read_page(pfn), gw)
            # Off by one as in libxc: a frame equal to p2m_size passes.
            if store > p2m:
                self._fatal(M.SUSPEND_XENSTORE_BAD, "start_info.store_mfn", store)
            if console > p2m:
                self._fatal(M.SUSPEND_CONSOLE_BAD, "start_info.console_mfn", console)
            self.pv_store_pfn, self.pv_console_pfn = store, console
        if ctx.gdt_ents > pvcontext.MAX_GDT_ENTRIES:
            self._fatal(M.GDT_COUNT, f"vcpu{vcpu_id}.gdt_ents", ctx.gdt_ents)
        for j in range(-(-ctx.gdt_ents // pvcontext.GDT_ENTRIES_PER_FRAME)):
            pfn = ctx.gdt_frames[j]
            if pfn >= p2m or pfn in self.pfn_type:
                self._fatal(M.GDT_FRAME_BAD.format(j=j, pfn=pfn), f"vcpu{vcpu_id}.gdt_frames", pfn)
        self._check_pt_base(vcpu_id, pvcontext.cr3_to_pfn(ctx.cr3, gw), user="")
        # x86_64 keeps the user page-table base in ctrlreg[1], bit 0 = valid.
        if pvcontext.layout(gw).pt_levels == 4 and ctx.cr1 & 1:
            self._check_pt_base(vcpu_id, pvcontext.cr3_to_pfn(ctx.cr1 & ~1, gw), user="User ")

    def _check_pt_base(self, vcpu_id: int, pfn: int, *, user: str) -> None:
        """The page-table base must be a top-level table: L4 (x86_64) or L3 (PAE)."""
        field_name = f"vcpu{vcpu_id}.ctrlreg[{1 if user else 3}]"
        if pfn >= self.p2m_size:
            # libxc also prints pfn_type[pfn] here, read out of bounds: not reproducible.
            msg = M.PT_BASE_RANGE.format(user=user, pfn=pfn, p2m_size=self.p2m_size)
            if not user:
                msg += " type=00000000"
            self._fatal(msg, field_name, pfn)
        want = pvcontext.layout(self.guest_width).pt_levels
        got = self.pfn_type.get(pfn, 0)
        if got & 7 != want:
            msg = M.PT_BASE_TYPE.format(
                user=user, pfn=pfn, p2m_size=self.p2m_size, type=got << 28, want=want << 28
            )
            self._fatal(msg, field_name, pfn)

    def _state(self, tail: PvTail | HvmTail, qemu: QemuRecord | None) -> dict[str, Any]:
        vi = self.vcpu_info
        online = vi.online_vcpus() if vi is not None else [0]
        ext = self.reader.ext_info
        return {
            "guest": self.guest,
            "width": self.width * 8,
            "guest_width": self.guest_width * 8,
            "p2m_size": self.p2m_size,
            "framing": self.reader.framing,
            "online_vcpus": online,
            "max_vcpu_id": vi.max_vcpu_id if vi is not None else 0,
            "hvm_params": self.hvm_params,
            "tsc_info": self.tsc,
            "tmem": self.tmem or None,
            "console_pfn": self.console_pfn if self.guest == "hvm" else self.pv_console_pfn,
            "store_pfn": tail.store_pfn if isinstance(tail, HvmTail) else self.pv_store_pfn,
            "generation_id_addr": self.genid_addr,
            "unmapped_pfns": len(tail.unmapped) if isinstance(tail, PvTail) else None,
            "pv_ext_info": [b.block_id.decode("latin-1") for b in ext.blocks] if ext else None,
            "broken_pfns": sorted(self.broken),
            "zeroed_pfns": self.zeroed,
            "verify_mode": self.pb.verify,
            "qemu": None
            if qemu is None
            else {
                "signature": qemu.signature.decode("latin-1"),
                "length": len(qemu.data),
            },
            "committed_checkpoint": self.checkpoints_complete - 1,
            "receiver": self.gen.name,
            "receiver_label": self.gen.label,
            "toolstack": self.ts.name,
            "checkpointed_stream": self.cs,
            "outcome": "restored",
            "pages_applied": self.pages,
            "messages": list(self.log.lines),
        }
