"""Legacy → migration v2 conversion (what Xen's ``convert-legacy-stream`` does, and more).

:func:`legacy_to_v2` reads a legacy stream with :class:`LegacyReader` and writes
the v2 stream with :class:`V2Writer`.  On every stream Xen's tool converts, the
output is byte-identical to it: the same records in the same order, image
version 3, ``xen_major`` 0 / ``xen_minor`` 1 ("converted"), the libxl header with
the LEGACY option, HVM params of the body in one HVM_PARAMS record at the end of
the body, the magic pfns in a second one, the libxl physmap from ``-18`` as
EMULATOR_XENSTORE_DATA, the ``DeviceModelRecord0002`` record as
EMULATOR_CONTEXT (libxl) or copied raw after the libxc END (libxc format).

Beyond it:

* every QEMU record (``QemuDeviceModelRecord`` to EOF, ``DeviceModelRecord0002``,
  ``RemusDeviceModelState``, the XenServer-classic ``QemuDeviceModelRecord\\n``)
  becomes the emulator record; in libxc format it is written in the
  ``DeviceModelRecord0002`` form;
* Remus streams: each checkpoint ends with CHECKPOINT (libxc) followed, in
  libxl format, by that checkpoint's libxl records and CHECKPOINT_END, the
  layering libxl's stream reader follows; after the last complete checkpoint
  come the libxc END and the libxl END.  A checkpoint from the second on is
  spooled (in one unlinked temporary file, rewritten by each checkpoint) until
  its tail and QEMU record are complete: when the input then ends or breaks, as
  it does at a Remus failover, that abandoned checkpoint is dropped, as libxc's
  receiver drops it, and the stream is ended cleanly (:attr:`ConvertReport.abandoned`);
* compressed checkpoints (format B) are decoded.  A RUN/SKIP/EMPTY page is a
  delta against the receiver's copy, and libxc's sender only makes one against
  a page in its own delta cache (an LRU of 8192 pages that starts empty at the
  first compressed checkpoint and never holds page tables); the converter
  replays that cache from the stream's entries and keeps those pages, so
  decoding needs 32 MiB of RAM whatever the guest size (:class:`_PageStore`).
  A stream that deltas against any other page was not made by libxc's
  compressor and is decoded against zeros;
* verify mode (``-1``), ``-9`` and ``-13`` are accepted (they carry nothing v2
  needs); tmem (``-5``/``-6``) raises :class:`NotRepresentable`;
* the xend header and bytes after the image (xl's handshake) are dropped.

Deliberate differences from Xen's tool: a batch made only of bare XTAB entries
gives no PAGE_DATA record (Xen's tool writes one with count 0, which libxc's
receiver and verify-stream-v2 reject); Remus streams with several checkpoints,
PV and HVM alike, are converted whole, with their CHECKPOINT records (Xen's
tool keeps only the first: silently for PV; for HVM it then fails on the
second, "Unrecognised Qemu sig", exit 2).  So a receiver restoring the output as a
plain stream (``xl restore``, a plain migration) fails with libxc's "Found
checkpoint in non-checkpointed stream", where Xen's tool's output restores
checkpoint 1; a REMUS/COLO receiver restores the last committed checkpoint
(tests/receiver/test_receiver_v2.py pins both).

Memory: a plain stream is converted one batch at a time (one 4 MiB page
buffer, reused).  When the output is a descriptor (a file object straight over
one) and the input a pipe or file, page data of batches written straight to the
output do not pass through Python at all: the PAGE_DATA header and entries are
written and flushed, then the source moves the page bytes, verbatim, in the
kernel (splice).  A Remus stream adds one checkpoint's spooled records (in the
temporary file: page cache, not the process's RAM), and a compressed one the
32 MiB delta cache and one checkpoint's compressed payloads.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, BinaryIO

from xlpy.errors import NotRepresentable, StreamError, StreamMalformed
from xlpy.outfile import output_fd, output_name
from xlpy.progress import ProgressFn, RunProgress
from xlpy.stream.hvm_params import (
    CHUNK_TO_HVM_PARAM,
    HVM_PARAM_BUFIOREQ_PFN,
    HVM_PARAM_IOREQ_PFN,
    HVM_PARAM_STORE_PFN,
)
from xlpy.stream.legacy import format as LF
from xlpy.stream.legacy.reader import LegacyReader, PagePlacement, PayloadBuffer
from xlpy.stream.legacy.records import (
    CheckpointBegin,
    CompressedData,
    EnableCompression,
    EndOfBody,
    HvmParamChunk,
    HvmTail,
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
    XendHeader,
    XlHeader,
)
from xlpy.stream.source import ByteSource
from xlpy.stream.v2 import format as F
from xlpy.stream.v2.writer import V2Writer

if TYPE_CHECKING:  # numpy costs ~0.1 s of start-up: only compressed checkpoints need it
    import numpy as np

FORMATS = ("libxc", "libxl")

#: ``xen_minor`` of converted images: Xen's converter writes its ``__version__``.
CONVERTED_XEN_MINOR = 1
#: Pages of the compressed checkpoints kept in RAM (the sender's delta cache size).
STORE_RAM_PAGES = LF.DELTA_CACHE_SIZE
_COPY_SIZE = 1 << 20
_LOW_NIBBLE = bytes(b & 0x0F for b in range(256))
_HIGH_NIBBLE = bytes(b & 0xF0 for b in range(256))
_PHYSMAP_HEAD = struct.Struct("<QQQI")
_U32 = struct.Struct("<I")

LogFn = Callable[[str], None]


@dataclass
class ConvertReport:
    """What a conversion did: guest, width, checkpoints, pages, and any abandoned checkpoint."""

    guest: str = ""
    width: int = 0
    framing: str = ""
    checkpoints: int = 0
    pages: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    #: Pages decoded from compressed checkpoints, and the seconds spent decoding them.
    decoded_pages: int = 0
    decode_seconds: float = 0.0
    #: The error that ended an incomplete last checkpoint (Remus failover), if any.
    abandoned: StreamError | None = None
    #: The QEMU record of the last committed checkpoint (HVM), also when it was left out
    #: of the output: a toolstack framing the image carries it in its own record.
    qemu: QemuRecord | None = None
    warnings: list[str] = field(default_factory=list)


def physmap_xenstore(blob: bytes, width: int, *, offset: int | None = None) -> bytes:
    """libxl's ``-18`` toolstack blob (§8.4) as EMULATOR_XENSTORE_DATA key/value pairs.

    ``width`` is the toolstack width in bytes: a 64-bit libxl leaked 4 bytes of
    structure padding after each name.  Keys and values as Xen's converter makes
    them (``physmap/<phys>/{start_addr,size,name}``, hex values).
    """

    def bad(message: str) -> StreamMalformed:
        return StreamMalformed(message, offset=offset, field="toolstack.physmap")

    if len(blob) < 8:
        raise bad("overly short libxl toolstack data")
    version, count = struct.unpack_from("<II", blob)
    if version != 1:
        raise bad(f"cannot decode libxl toolstack version {version}")
    pos = 8
    out = bytearray()
    pad = 4 if width == 8 else 0
    for _ in range(count):
        if len(blob) - pos < _PHYSMAP_HEAD.size:
            raise bad("remaining data too short for physmap header")
        phys, start, size, namelen = _PHYSMAP_HEAD.unpack_from(blob, pos)
        pos += _PHYSMAP_HEAD.size
        if namelen == 0:
            raise bad("no physmap info name")
        if len(blob) - pos < namelen + pad:
            raise bad("remaining data too short for physmap name")
        name = blob[pos : pos + namelen]
        pos += namelen + pad
        if name[-1] != 0:
            raise bad("physmap name not NUL terminated")
        root = b"physmap/%x" % phys
        for key, val in (
            (root + b"/start_addr", b"%x" % start),
            (root + b"/size", b"%x" % size),
            (root + b"/name", name[:-1]),
        ):
            out += key + b"\0" + val + b"\0"
    return bytes(out)


def v2_entries(entries: bytes, width: int) -> bytes:
    """Legacy W-sized batch entries as v2 PAGE_DATA entries, bare XTAB entries dropped.

    As Xen's converter: the type nibble (bits 28-31) moves to bits 60-63, the pfn
    is bits 0-27; the upper half of a W=8 entry is ignored, as by the receiver.
    Byte-wise (strided slices and translations), one batch at a time.
    """
    low = _drop_bare_xtab(entries, width)
    out = bytearray(8 * (len(low) // width))
    for k in range(3):
        out[k::8] = low[k::width]
    top = low[3::width]
    out[3::8] = top.translate(_LOW_NIBBLE)
    out[7::8] = top.translate(_HIGH_NIBBLE)
    return bytes(out)


def _drop_bare_xtab(entries: bytes, width: int) -> bytes:
    """``entries`` without the bare ``0xF0000000`` ones (low 32 bits; found by their top byte)."""
    top = entries[3::width]
    drop = []
    i = top.find(0xF0)
    while i >= 0:
        if entries[i * width : i * width + 3] == b"\0\0\0":
            drop.append(i)
        i = top.find(0xF0, i + 1)
    if not drop:
        return entries
    parts = []
    prev = 0
    for i in drop:
        parts.append(entries[prev * width : i * width])
        prev = i + 1
    parts.append(entries[prev * width :])
    return b"".join(parts)


def _data_pfns(v2: bytes) -> tuple[np.ndarray, list[bool]]:
    """pfns of the data-bearing v2 entries (type below 0xD), and which are page tables."""
    import numpy as np

    ent = np.frombuffer(v2, dtype="<u8")
    types = ent >> np.uint64(60)
    data = types < 0xD
    kinds = types[data] & np.uint64(7)
    pagetable = ((kinds >= 1) & (kinds <= 4)).tolist()
    return (ent[data] & np.uint64(LF.PFN_MASK)).astype(np.int64), pagetable


class _PageStore:
    """The pages a compressed checkpoint may be a delta against: the sender's cache.

    libxc's compressor deltas a page only against its own copy in an LRU cache
    of ``DELTA_CACHE_SIZE`` pages that starts empty at the first compressed
    checkpoint, takes every page it sends except page tables (evicted, always
    sent FULL) and drops the least recently used page when full; any page not
    in it goes FULL.  This store replays the same cache from the entries of
    the stream, so it holds exactly the bases the sender can use, in bounded
    RAM (32 MiB), whatever the guest size or number of checkpoints.
    """

    def __init__(self) -> None:
        self.capacity = STORE_RAM_PAGES
        #: pfn → slot in ``slab``, least recently sent first.
        self._lru: OrderedDict[int, int] = OrderedDict()
        import numpy as np

        self._slab = np.empty((self.capacity, LF.PAGE_SIZE), dtype=np.uint8)
        self._free = list(range(self.capacity - 1, -1, -1))

    def fill(self, pfns: list[int], pages: np.ndarray) -> None:
        """Copy the cached content of ``pfns`` into the rows of ``pages`` (others untouched)."""
        lru = self._lru
        rows = [i for i, pfn in enumerate(pfns) if pfn in lru]
        if rows:
            pages[rows] = self._slab[[lru[pfns[i]] for i in rows]]

    def store(self, pfns: list[int], pagetable: list[bool], pages: np.ndarray) -> None:
        """The sender's cache update for the pages just sent, in send order."""
        lru, free = self._lru, self._free
        if not any(pagetable) and lru.keys().isdisjoint(pfns) and len(set(pfns)) == len(pfns):
            # Pages new to the cache (a dirty set larger than it): each takes a free
            # slot, then the least recently sent page's, in send order, as one by one.
            new = min(len(free), len(pfns))
            slots = free[len(free) - new :][::-1]
            del free[len(free) - new :]
            evict = lru.popitem
            slots += [evict(last=False)[1] for _ in range(len(pfns) - new)]
            lru.update(zip(pfns, slots, strict=True))
            self._slab[slots] = pages
            return
        if not any(pagetable):  # the common case, in one tight loop
            get, move, evict = lru.get, lru.move_to_end, lru.popitem
            slots = []
            for pfn in pfns:
                slot = get(pfn)
                if slot is None:
                    slot = free.pop() if free else evict(last=False)[1]
                    lru[pfn] = slot
                else:
                    move(pfn)
                slots.append(slot)
            self._slab[slots] = pages
            return
        rows: list[int] = []
        slots = []
        for i, pfn in enumerate(pfns):
            slot = lru.get(pfn)
            if pagetable[i]:
                if slot is not None:
                    del lru[pfn]
                    free.append(slot)
                continue
            if slot is None:
                slot = free.pop() if free else lru.popitem(last=False)[1]
                lru[pfn] = slot
            else:
                lru.move_to_end(pfn)
            rows.append(i)
            slots.append(slot)
        if len(rows) == len(pfns):
            self._slab[slots] = pages
        elif rows:
            self._slab[slots] = pages[rows]

    def close(self) -> None:
        self._lru.clear()


def _copies_at_once(fd: int) -> bool:
    """The kernel copies (or drops) bytes sent to ``fd`` before ``sendfile`` returns."""
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode):
        return True
    try:
        null = os.stat(os.devnull)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == null.st_rdev


class _ForwardPages:
    """PageSink of the converter: a batch bound for the output (not a spooled
    checkpoint) gets its PAGE_DATA header and entries written and the output
    flushed, then the source forwards its page bytes to the output descriptor."""

    def __init__(self, conv: _Converter, fd: int, name: str) -> None:
        self.conv = conv
        self.fd = fd
        #: The output a write error names.
        self.name = name
        #: The page bytes of the batch just placed (its PageBatch then has no data).
        self.placed = 0

    def place(self, entries: bytes, width: int, nbytes: int) -> PagePlacement | None:
        conv = self.conv
        if conv.w is not conv.out:
            return None
        ent = v2_entries(entries, width)
        conv.out.write_record_head(
            F.REC_TYPE_PAGE_DATA, nbytes, F.PAGE_DATA_HDR_FORMAT.pack(len(ent) // 8, 0), ent
        )
        conv._raw.flush()
        self.placed = nbytes
        return PagePlacement(self.fd, ((None, nbytes),), self.name)


class _Converter:
    def __init__(
        self,
        source: ByteSource,
        out: BinaryIO,
        *,
        fmt: str,
        width: int | None,
        guest: str | None,
        require_xl: bool,
        qemu: bool,
        progress: ProgressFn | None,
        log: LogFn | None,
        one_image: bool = False,
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"format must be libxc or libxl, not {fmt!r}")
        self.source = source
        #: The checkpoint's -12 payloads back to back (libxc's compbuf), read straight
        #: into memory reused by every checkpoint.
        self._payloads = PayloadBuffer()
        self.reader = LegacyReader(source, guest=guest, reuse_buffers=True, payloads=self._payloads)
        self.want_width = width
        self._raw = out
        self.out = V2Writer(out)
        self.w = self.out
        self.libxl = fmt == "libxl"
        self.require_xl = require_xl
        self.qemu = qemu
        self.one_image = one_image
        self._tick = RunProgress(
            progress,
            lambda: (self.report.checkpoints, self.report.pages, self.source.offset),
            first=1,
        )
        self.log = log
        self.report = ConvertReport()
        fd = output_fd(out) if source.kernel_moves else None
        self._forward = None if fd is None else _ForwardPages(self, fd, output_name(out))
        self._static_done = False
        self._pv_info_done = False
        # per checkpoint
        #: Where checkpoints 2.. are spooled (created at the first), and the one in progress.
        self._spool_file: IO[bytes] | None = None
        self._spool: IO[bytes] | None = None
        self._hvm_params: list[int] = []
        self._xenstore = b""
        self._qemu_rec: QemuRecord | None = None
        #: The checkpoint's -12 payloads up to ``_comp_len`` and where each came from.
        self._comp_len = 0
        self._comp_segments: list[tuple[int, int]] = []
        self._pending: list[bytes] = []
        #: Pages of the batch being decoded (reused: no fresh memory per batch).
        self._decoded: np.ndarray | None = None
        self._store: _PageStore | None = None
        #: The QEMU record of the last committed checkpoint (libxc format appends it).
        self._committed_qemu: QemuRecord | None = None

    def info(self, message: str) -> None:
        if self.log is not None:
            self.log(message)

    # -- driver -----------------------------------------------------------------------

    def run(self) -> ConvertReport:
        records = self.reader.records(page_sink=self._forward, one_image=self.one_image)
        number = -1
        try:
            for rec in records:
                if isinstance(rec, CheckpointBegin):
                    if rec.number > 0:
                        self._commit(final=False)
                        self._spool_to()
                    number = rec.number
                    self._start_checkpoint()
                else:
                    self._record(rec)
        except NotRepresentable:
            raise
        except StreamError as e:
            if number < 1:
                raise
            self._abandon(e)
            return self._finish(number)
        if number < 0:
            raise StreamMalformed(
                "the stream ends before its first checkpoint", offset=self.source.offset
            )
        if number == 0:
            self._commit(final=True)
        else:
            self._commit(final=False)
        return self._finish(number)

    def _finish(self, number: int) -> ConvertReport:
        if number > 0 or self.report.abandoned is not None:
            self.out.end()
            self._raw_qemu(self._committed_qemu)
            if self.libxl:
                self.out.end()
        self.close()
        r = self.report
        r.width = self.reader.width or 0
        r.guest = self.reader.guest or ""
        r.framing = self.reader.framing
        r.bytes_in = self.source.offset
        r.bytes_out = self.out.offset
        self._tick("done", force=True, ended=True)
        return r

    def _spool_to(self) -> None:
        """Write the checkpoint starting now into the spool file, over the previous one's.

        Rewriting the same file (never truncated) reuses its page cache: each
        checkpoint costs one copy in and one kernel copy out.
        """
        if self._spool_file is None:
            self._spool_file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self._spool_file.seek(0)
        self._spool = self._spool_file
        self.w = V2Writer(self._spool)  # type: ignore[arg-type]

    def close(self) -> None:
        """Release the delta cache and the spool file."""
        if self._store is not None:
            self._store.close()
        if self._spool_file is not None:
            self._spool_file.close()
            self._spool_file = None

    def _abandon(self, error: StreamError) -> None:
        """Remus failover: drop the incomplete checkpoint, keep the committed ones."""
        self._spool = None
        self.w = self.out
        self.report.abandoned = error
        self.report.warnings.append(f"incomplete last checkpoint dropped: {error}")
        self.info(f"Incomplete checkpoint abandoned: {error}")

    def _start_checkpoint(self) -> None:
        self._hvm_params = []
        self._xenstore = b""
        self._qemu_rec = None
        self._comp_len = 0
        self._comp_segments = []
        self._payloads.clear()
        self._pending = []

    def _commit(self, *, final: bool) -> None:
        """The checkpoint just read is complete: emit it, then END or CHECKPOINT."""
        if self._spool is not None:
            self._unspool(self._spool)
            self._spool = None
        self.w = self.out
        self.report.checkpoints += 1
        qemu = self._qemu_rec
        self.report.qemu = qemu
        if final:
            self.out.end()
            if self.libxl:
                self._libxl_records(qemu)
            else:
                self._raw_qemu(qemu)
            if self.libxl:
                self.out.end()
        else:
            self.out.checkpoint()
            if self.libxl:
                self._libxl_records(qemu)
                self.out.checkpoint_end()
            self._committed_qemu = qemu
            # A live Remus receiver (libxl piping us into libxc) acts on a
            # checkpoint only once it has all of it: it must not wait in our
            # output buffer for the next checkpoint or EOF.
            self._raw.flush()
        self._tick("checkpoint", force=True, ended=True)

    def _libxl_records(self, qemu: QemuRecord | None) -> None:
        if self._xenstore:
            self.out.emulator_xenstore_data(self._xenstore)
        if qemu is not None:
            self.out.emulator_context(qemu.data)

    def _raw_qemu(self, qemu: QemuRecord | None) -> None:
        """libxc format: the QEMU record after the image, as ``DeviceModelRecord0002``."""
        if qemu is None or self.libxl or not self.qemu or self.reader.guest != "hvm":
            return
        self._emit_raw(LF.QEMU_SIG_0002 + _U32.pack(len(qemu.data)) + qemu.data)

    def _unspool(self, spool: IO[bytes]) -> None:
        """Copy the spooled checkpoint to the output: in the kernel when it takes the
        bytes at once (a file, the null device).  Not into a pipe or socket: they would
        hold references to the spool's pages, which the next checkpoint overwrites."""
        size = spool.tell()
        spool.flush()
        done = 0
        fd = output_fd(self._raw)
        if fd is not None and _copies_at_once(fd):
            self._raw.flush()
            try:
                while done < size:
                    n = os.sendfile(fd, spool.fileno(), done, min(size - done, _COPY_SIZE))
                    if n == 0:
                        break  # the spool is shorter than written: the loop below says so
                    done += n
            except OSError:
                # No kernel path (EINVAL, ENOSYS), or a failure that does not say whose it is
                # (ENOSPC): nothing more was sent, the loop below writes it, naming the output.
                pass
            self.out.offset += done
        while done < size:
            chunk = os.pread(spool.fileno(), min(size - done, _COPY_SIZE), done)
            if not chunk:
                raise OSError(errno.EIO, "the checkpoint spool file lost its data")
            self._emit_raw(chunk)
            done += len(chunk)

    def _emit_raw(self, data: bytes) -> None:
        """Bytes that are no v2 record of their own (spooled records, a raw QEMU record)."""
        mv = memoryview(data)
        while mv:
            n = self._raw.write(mv)
            mv = mv[len(mv) if n is None else n :]
        self.out.offset += len(data)

    # -- records --------------------------------------------------------------------------

    def _record(self, rec: Record) -> None:
        w = self.w
        match rec:
            case PageBatch():
                if rec.data is None and self._forward is not None and self._forward.placed:
                    self.report.pages += self._forward.placed // LF.PAGE_SIZE
                    self._forward.placed = 0
                    self._tick("pages")
                    return
                if rec.data is None:
                    self._pending.append(v2_entries(rec.entries, rec.width))
                    return
                ent = v2_entries(rec.entries, rec.width)
                if ent:
                    w.write_record(
                        F.REC_TYPE_PAGE_DATA,
                        F.PAGE_DATA_HDR_FORMAT.pack(len(ent) // 8, 0),
                        ent,
                        rec.data,
                    )
                    self.report.pages += len(rec.data) // LF.PAGE_SIZE
                self._tick("pages")
            case CompressedData():
                self._add_payload(rec)
            case EnableCompression():
                # Compressed checkpoints follow: numpy's import (a one-off ~0.1 s) and the
                # delta cache now, not in the first of them (a live Remus receiver waits).
                self._decoding_store()
            case TscInfo():
                w.tsc_info(rec.tsc_mode, rec.khz, rec.nsec, rec.incarnation)
            case HvmParamChunk():
                if self.reader.guest != "hvm":
                    raise StreamMalformed(
                        f"HVM-only param (chunk {rec.chunk_id}) in a PV stream",
                        offset=rec.offset,
                        record=rec.index,
                        field="hvm_param",
                        value=rec.chunk_id,
                    )
                self._hvm_params += [CHUNK_TO_HVM_PARAM[rec.chunk_id], rec.value]
            case Toolstack():
                if self.libxl and rec.blob:
                    self._xenstore += physmap_xenstore(
                        rec.blob, self.reader.width or 8, offset=rec.offset
                    )
            case Tmem() | TmemExtra():
                raise NotRepresentable(
                    "tmem is not representable in v2 (migration v2 has no tmem record)",
                    offset=rec.offset,
                    record=rec.index,
                    field="tmem",
                )
            case EndOfBody():
                if self._pending:
                    self._decode_compressed()
                if self._hvm_params:
                    pairs = list(zip(self._hvm_params[::2], self._hvm_params[1::2], strict=True))
                    w.hvm_params(pairs)
            case PvTail():
                for v in rec.vcpus:
                    w.x86_pv_vcpu_basic(v.vcpu_id, v.context)
                    if v.ext is not None:
                        w.x86_pv_vcpu_extended(v.vcpu_id, v.ext)
                    if v.xsave is not None:
                        w.x86_pv_vcpu_xsave(v.vcpu_id, v.xsave.data)
                w.shared_info(rec.shared_info)
            case HvmTail():
                w.hvm_params(
                    [
                        (HVM_PARAM_IOREQ_PFN, rec.ioreq_pfn),
                        (HVM_PARAM_BUFIOREQ_PFN, rec.bufioreq_pfn),
                        (HVM_PARAM_STORE_PFN, rec.store_pfn),
                    ]
                )
                w.hvm_context(rec.context)
            case QemuRecord():
                self._qemu_rec = rec
            case StreamHeader():
                self._header(rec)
            case PvExtInfo():
                for b in rec.blocks:
                    if b.block_id == b"vcpu":
                        self._pv_info(8 if len(b.data) == LF.VCPU_CONTEXT_SIZE_64 else 4)
                self._static_data_end()
            case P2mFrameList():
                if not self._pv_info_done:
                    self._pv_info(self.reader.guest_width or 8)
                self._static_data_end()
                p2m = self.reader.p2m_size or 0
                w.x86_pv_p2m_frames(0, max(p2m - 1, 0), rec.entries)
            case XlHeader():
                flags = rec.mandatory_flags
                if self.libxl:
                    flags |= LF.XL_MANDATORY_FLAG_STREAMv2
                w.xl_header(
                    mandatory_flags=flags,
                    optional_flags=rec.optional_flags,
                    optional_data=rec.optional_data,
                )
            case XendHeader():
                self.info("xend header dropped (v2 has no place for its configuration)")
            case Trailer():
                self.info(f"{len(rec.data)} bytes after the image ignored")
            case _:
                pass  # -1, -2, -9, -13: nothing v2 needs

    def _header(self, rec: StreamHeader) -> None:
        if self.require_xl and self.reader.framing != "xl":
            raise StreamMalformed("No xl header", offset=0, field="xl_header.magic")
        if self.want_width is not None and self.want_width != rec.width:
            msg = (
                f"the stream was written by a {rec.width * 8}-bit toolstack, not "
                f"{self.want_width * 8}-bit as given: using {rec.width * 8}"
            )
            self.report.warnings.append(msg)
        w = self.w
        if self.libxl:
            w.libxl_header(options=F.LIBXL_OPT_LEGACY)
            w.libxc_context()
        w.image_header(version=3)
        pv = self.reader.guest == "pv"
        w.domain_header(
            F.DHDR_TYPE_X86_PV if pv else F.DHDR_TYPE_X86_HVM,
            xen_major=0,
            xen_minor=CONVERTED_XEN_MINOR,
        )
        if not pv:
            self._static_data_end()

    def _pv_info(self, guest_width: int) -> None:
        self.w.x86_pv_info(guest_width, 4 if guest_width == 8 else 3)
        self._pv_info_done = True

    def _static_data_end(self) -> None:
        if not self._static_done:
            self.w.static_data_end()
            self._static_done = True

    # -- compressed checkpoints -----------------------------------------------------------

    def _add_payload(self, rec: CompressedData) -> None:
        """The reader appended the payload to ``_payloads``: note where it came from."""
        # the payload starts after the chunk id and the W-sized length
        self._comp_segments.append((self._comp_len, rec.offset + 4 + (self.reader.width or 8)))
        self._comp_len = self._payloads.used

    def _decoding_store(self) -> _PageStore:
        if self._store is None:
            self._store = _PageStore()  # imports numpy
        return self._store

    def _decode_compressed(self) -> None:
        """Decode the checkpoint's pages against the stored copies, write PAGE_DATA."""
        import numpy as np

        from xlpy.stream.legacy.compression import CheckpointDecoder

        t0 = time.perf_counter()
        p2m = self.reader.p2m_size or 0
        store = self._decoding_store()
        dec = CheckpointDecoder(self._payloads.view(), self._comp_segments)
        if self._decoded is None:
            self._decoded = np.empty((LF.MAX_BATCH_SIZE, LF.PAGE_SIZE), dtype=np.uint8)
        decode_s = time.perf_counter() - t0
        for ent in self._pending:
            t0 = time.perf_counter()
            pfns, pagetable = _data_pfns(ent)
            if pfns.size and int(pfns.max()) >= max(p2m, 1):
                raise StreamMalformed(
                    f"pfn {int(pfns.max()):#x} beyond p2m_size {p2m:#x}",
                    offset=self.source.offset,
                    field="batch.entries",
                    value=int(pfns.max()),
                )
            pfn_list = pfns.tolist()
            pages = self._decoded[: len(pfn_list)]
            pages.fill(0)
            store.fill(pfn_list, pages)
            dec.decode_into(pages, pfns=pfn_list)
            store.store(pfn_list, pagetable, pages)
            decode_s += time.perf_counter() - t0
            self.w.write_record(
                F.REC_TYPE_PAGE_DATA,
                F.PAGE_DATA_HDR_FORMAT.pack(len(ent) // 8, 0),
                ent,
                pages.reshape(-1).data,
            )
            self.report.pages += pfns.size
            self.report.decoded_pages += pfns.size
            self._tick("pages")
        # decoding only: spooling the records is the checkpoint buffering's cost
        self.report.decode_seconds += decode_s
        self._pending = []
        self._comp_len = 0
        self._comp_segments = []
        self._payloads.clear()


def legacy_to_v2(
    source: ByteSource,
    out: BinaryIO,
    *,
    fmt: str = "libxc",
    width: int | None = None,
    guest: str | None = None,
    xl: bool = False,
    qemu: bool = True,
    progress: ProgressFn | None = None,
    log: LogFn | None = None,
    one_image: bool = False,
) -> ConvertReport:
    """Convert the legacy stream on ``source`` into a v2 stream written to ``out``.

    ``fmt`` is ``"libxc"`` (a bare libxc image) or ``"libxl"`` (libxl stream with
    the libxc image inside).  ``width`` (4/8) is the toolstack width the caller
    believes in: the stream's own (octets 4-7 of the image) wins, with a warning.
    ``guest`` (``"pv"``/``"hvm"``) overrides detection; ``xl`` insists on an xl
    header (one is always recognised and carried over, STREAMv2 set for libxl).
    ``qemu=False`` leaves the QEMU record out of a libxc-format output
    (``--skip-qemu``).  Raises :class:`StreamError` (an incomplete or bad first
    checkpoint), :class:`NotRepresentable` (tmem) or :class:`UsageError`.
    ``one_image``: the image is embedded in a toolstack's framing and ends after its
    first checkpoint (:meth:`LegacyReader.records`); the source is left right after it.
    """
    conv = _Converter(
        source,
        out,
        fmt=fmt,
        width=width,
        guest=guest,
        require_xl=xl,
        qemu=qemu,
        progress=progress,
        log=log,
        one_image=one_image,
    )
    try:
        return conv.run()
    except BaseException:
        conv._tick("failed", force=True)
        conv.close()
        raise
