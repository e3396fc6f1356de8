"""Legacy stream reader.

Two levels:
* element readers (``read_framing``, ``read_header``, ``read_pv_ext_info``,
  ``read_p2m_frame_list``, ``read_chunk``, ``read_tail``, ``read_qemu_record``)
  that read exactly one element and nothing more; the reference receiver drives
  them with libxc's own control flow (known ids per generation, heartbeat on
  the source, stale vcpu map for later PV tails);
* ``records()``, the whole grammar (framing, header, checkpoints, tails, QEMU
  record, trailer) for inspect and convert.

Errors: :class:`StreamTruncated` when the input ends inside an element,
:class:`StreamMalformed` when its content is impossible.  Both carry the offset
where the element starts, the index the record would have had and a dotted
``field`` naming what was being read (``"batch.pages"``, ``"pv_tail.pfn_count"``,
``"chunk_header"`` …), so a receiver can map each failure to libxc's message.
Every count and size is checked against its limit before anything is sized by
it, and variable-length payloads are read through :meth:`ByteSource.read_exact`,
which only grows its buffer as far as the stream actually delivers bytes.

Page data need not pass through Python: a :class:`PageSink` given to ``read_chunk``
or ``records`` decides, batch by batch once the entries are parsed, whether the pages
are skipped (:data:`SKIP_PAGES`, for inspect) or moved by the source straight into a
file (a receiver's memory image).  Parsing, checks and errors are the same either way;
such a batch has ``data=None``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn, Protocol

from xlpy.errors import StreamMalformed, StreamTruncated, UsageError
from xlpy.stream import xlheader
from xlpy.stream.legacy import fields as FLD
from xlpy.stream.legacy import format as F
from xlpy.stream.legacy import framing
from xlpy.stream.legacy.fields import Element
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
    Record,
    StreamHeader,
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
from xlpy.stream.legacy.records import Tmem as TmemRecord
from xlpy.stream.source import APPEND_STEP, ByteSource, truncated

if TYPE_CHECKING:  # numpy costs start-up time: only compressed checkpoints need it
    import numpy as np

_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_HVM_PARAM = struct.Struct("<IQ")  # pad, value
_TSC_INFO = struct.Struct("<IQII")
_TMEM_HEAD = struct.Struct("<IIIIIII")
_TMEM_POOL = struct.Struct("<III2Q")
_OID = struct.Struct("<3Q")
_TMEM_EXTRA = struct.Struct("<I3QI")
_HVM_TAIL = struct.Struct("<3QI")
_XSAVE_HEAD = struct.Struct("<QQ")
_U32_ALL_ONES = 0xFFFFFFFF
#: ``struct tmem_oid`` of all-ones: ends a pool's page list early (§5.2).
_TMEM_OID_END = ((1 << 64) - 1,) * 3
#: Migration v2 image header: all-ones marker, then "XenF" (big-endian id).
_V2_IHDR_START = b"\xff" * 8 + b"XenF"
#: Bytes looked at after an embedded image's HVM tail: enough to tell a QEMU signature
#: from the toolstack's next 16-byte header without waiting for bytes beyond it.
_QEMU_PREFIX = 16


def _nibble_table(dataless_nibbles: frozenset[int]) -> bytes:
    """Byte translation: top byte of an entry → 1 if its type nibble carries a page."""
    return bytes(0 if b >> 4 in dataless_nibbles else 1 for b in range(256))


_DATA_TABLES = {
    nibbles: _nibble_table(nibbles) for nibbles in (F.DATALESS_NIBBLES, F.DATALESS_NIBBLES_4_0)
}


def data_bearing_count(
    entries: bytes, width: int, dataless_nibbles: frozenset[int] = F.DATALESS_NIBBLES
) -> int:
    """How many pages follow a batch with these raw W-sized entries (§4.2).

    The type nibble is the top of bits 31..28, i.e. of byte 3 of each
    little-endian entry; on W=8 the upper half is ignored, as by the receiver
    (its mask is a 32-bit constant).  Pure bytes work: no numpy on this path.
    """
    table = _DATA_TABLES.get(dataless_nibbles) or _nibble_table(dataless_nibbles)
    return entries[3::width].translate(table).count(1)


@dataclass(frozen=True, slots=True)
class PagePlacement:
    """Where a batch's page data go instead of a buffer.

    ``fd`` None: nowhere (skipped).  Otherwise ``pieces`` are ``(file offset, length)``
    of ``fd``, in stream order, covering exactly the batch's page bytes; offset ``None``
    writes at ``fd``'s current position (a pipe or a sequentially written output).
    ``name`` is the output a write error names (``None``: ``fd N``).
    """

    fd: int | None
    pieces: Sequence[tuple[int | None, int]] = ()
    name: str | None = None


class PageSink(Protocol):
    """Takes format-A page data straight from the source (see the module docstring)."""

    def place(self, entries: bytes, width: int, nbytes: int) -> PagePlacement | None:
        """Where the ``nbytes`` (> 0) of page data after these raw entries go;
        ``None`` reads them into memory as without a sink."""
        ...


def place_pages(source: ByteSource, placement: PagePlacement, n: int, field: str) -> None:
    """Move the next ``n`` page bytes of ``source`` where ``placement`` says."""
    if placement.fd is None:
        source.skip(n, field=field)
    elif sum(length for _, length in placement.pieces) != n:
        raise ValueError(f"page placement does not cover the {n} page bytes")
    else:
        source.transfer(placement.fd, placement.pieces, field=field, out_name=placement.name)


class _SkipPages:
    def place(self, entries: bytes, width: int, nbytes: int) -> PagePlacement:
        return _SKIP


_SKIP = PagePlacement(None)
#: A sink for readers that never look at page bytes (inspect): they are skipped.
SKIP_PAGES: PageSink = _SkipPages()


#: The room a :class:`PayloadBuffer` starts with: a checkpoint of 13,000 FULL pages
#: (a 256 MiB guest at 20 % dirty) fits without a copy.
PAYLOAD_RESERVE = 64 << 20


class PayloadBuffer:
    """Where a reader puts -12 payloads instead of a new buffer each: back to back, as
    libxc's ``compbuf``, read straight from the source into memory kept across
    checkpoints (the caller calls :meth:`clear` when a checkpoint's are decoded).

    The memory is a numpy array, made at the first payload (plain streams never
    import numpy) with room for :data:`PAYLOAD_RESERVE` bytes and doubled when full:
    numpy asks for huge pages on large arrays, so the first checkpoint's reads fault
    in 2 MiB at a time, into memory nobody zeroed first, and room not yet read into
    costs no RAM.
    """

    def __init__(self) -> None:
        self._mem: np.ndarray | None = None
        #: Bytes of the memory in use (it never shrinks, so refilling it finds warm memory).
        self.used = 0

    def view(self) -> memoryview:
        """The payloads so far, back to back."""
        if self._mem is None:
            return memoryview(b"")
        return self._mem.data[: self.used]

    def clear(self) -> None:
        """Start over (the next checkpoint's payloads), keeping the memory."""
        self.used = 0

    def read(self, source: ByteSource, n: int, field: str) -> None:
        """Append the next ``n`` bytes of ``source``, read straight into the memory.

        It is reserved at most :data:`~xlpy.stream.source.APPEND_STEP` ahead of the bytes
        that arrived, so a hostile length costs memory only as far as the stream backs
        it; truncation raises as :meth:`ByteSource.read_append` does.
        """
        start = source.offset
        done = 0
        try:
            while done < n:
                k = min(n - done, APPEND_STEP)
                at = self.used + done
                mem = self._reserve(at, at + k)
                source.readinto_exact(mem.data[at : at + k], field=field)
                done += k
        except StreamTruncated:
            raise truncated(field, n, source.offset - start, start) from None
        self.used += n

    def _reserve(self, keep: int, size: int) -> np.ndarray:
        """Memory of at least ``size`` bytes whose first ``keep`` are those read so far."""
        mem = self._mem
        if mem is not None and mem.size >= size:
            return mem
        import numpy as np

        # doubling: copies of the kept bytes stay below the size reached
        grown = np.empty(max(size, 2 * (0 if mem is None else mem.size), PAYLOAD_RESERVE), np.uint8)
        if mem is not None:
            grown[:keep] = mem[:keep]
        self._mem = grown
        return grown


def _uwords(raw: bytes, width: int) -> tuple[int, ...]:
    """Little-endian W-sized words."""
    return struct.unpack(f"<{len(raw) // width}{'I' if width == 4 else 'Q'}", raw)


class LegacyReader:
    """Reads a legacy stream from a :class:`ByteSource`; never seeks.

    ``width`` (4/8) and ``guest`` ("pv"/"hvm") override detection.  After
    ``read_header`` the attributes ``width``, ``guest``, ``stream_guest``, ``p2m_size`` are set;
    after ``read_pv_ext_info`` also ``ext_info`` and ``guest_width``.
    With ``reuse_buffers`` page data of a batch is a view valid only until the
    next element is read.

    A ``page_sink`` (:class:`PageSink`) may take page data of format-A batches
    instead; ``PageBatch.data`` is then ``None``.  Without ``keep_blobs`` the blobs of
    :class:`~xlpy.stream.legacy.records.BlobRecord` (toolstack data, HVM context, QEMU
    data, trailer) are skipped as they arrive, so a hostile length costs no memory.
    With ``payloads`` (:class:`PayloadBuffer`) -12 payloads are appended there and
    ``CompressedData.data`` is empty (``payloads.used`` grew by the payload's length).

    ``framing`` is ``"bare"``, ``"xl"``, ``"xend"`` or, once its trailer has
    been read, ``"xenserver-classic"``.  ``compression_enabled`` and
    ``last_checkpoint`` record whether -13 / -9 have been read.
    """

    def __init__(
        self,
        source: ByteSource,
        *,
        width: int | None = None,
        guest: str | None = None,
        reuse_buffers: bool = False,
        keep_blobs: bool = True,
        payloads: PayloadBuffer | None = None,
    ) -> None:
        if width not in (None, 4, 8):
            raise UsageError(f"width must be 4 or 8 bytes, not {width}")
        if guest not in (None, "pv", "hvm"):
            raise UsageError(f"guest must be 'pv' or 'hvm', not {guest!r}")
        self.source = source
        self.width: int | None = width
        self.guest: str | None = guest
        #: What the stream itself says the guest is (set by ``read_header``; None: it
        #: does not say), even when ``guest`` was given.
        self.stream_guest: str | None = None
        self.p2m_size: int | None = None
        self.ext_info: PvExtInfo | None = None
        self.guest_width: int | None = None
        self.framing = framing.FRAMING_BARE
        self.framing_header: XlHeader | XendHeader | None = None
        self.compression_enabled = False
        self.last_checkpoint = False
        self._reuse = reuse_buffers
        self._keep_blobs = keep_blobs
        self._payloads = payloads
        self._pages: bytearray | None = None
        self._index = 0
        self._start = source.offset

    # -- plumbing ----------------------------------------------------------------

    def _begin(self) -> int:
        """Mark the start of an element (for error offsets) and return it."""
        self._start = self.source.offset
        return self._start

    def begin_checkpoint(self, number: int, compressed: bool) -> CheckpointBegin:
        """The marker of checkpoint ``number``'s body, numbered as a record.

        No bytes are read: a caller that reads chunks itself (the receiver) calls this
        where :meth:`records` yields the marker, so both number every later record, and
        any fault in it, the same.
        """
        return CheckpointBegin(
            offset=self.source.offset, index=self._emit(), number=number, compressed=compressed
        )

    def _emit(self) -> int:
        """The index of the record being completed (and advance it)."""
        idx = self._index
        self._index += 1
        return idx

    def _read(self, n: int, field: str) -> bytes:
        try:
            return self.source.read_exact(n, field=field)
        except StreamTruncated as e:
            raise self._truncated(e, field) from None

    def _readinto(self, mv: memoryview, field: str) -> None:
        try:
            self.source.readinto_exact(mv, field=field)
        except StreamTruncated as e:
            raise self._truncated(e, field) from None

    def _blob(self, n: int, field: str) -> tuple[bytes, int]:
        """A blob of ``n`` bytes: ``(bytes, 0)``, or ``(b"", n)`` skipped without keeping it."""
        if self._keep_blobs:
            return self._read(n, field), 0
        try:
            self.source.skip(n, field=field)
        except StreamTruncated as e:
            raise self._truncated(e, field) from None
        return b"", n

    def _blob_to_eof(self, field: str) -> tuple[bytes, int]:
        """Everything up to EOF, as :meth:`_blob`."""
        if self._keep_blobs:
            return self.source.read_to_eof(field=field), 0
        return b"", self.source.skip_to_eof(field=field)

    def _truncated(self, e: StreamTruncated, field: str) -> StreamTruncated:
        end = self.source.end_offset
        return StreamTruncated(
            f"{e.message}; the stream ends at offset {end}" if end is not None else e.message,
            offset=self._start,
            record=self._index,
            field=field,
        )

    def _malformed(self, message: str, field: str, value: int | None = None) -> NoReturn:
        raise StreamMalformed(
            message, offset=self._start, record=self._index, field=field, value=value
        )

    def _u32(self, field: str) -> int:
        return int(_U32.unpack(self._read(4, field))[0])

    def _uw(self, field: str) -> int:
        return int.from_bytes(self._read(self._w, field), "little")

    @property
    def _w(self) -> int:
        if self.width is None:
            raise UsageError("read_header() must come first: the width is not known yet")
        return self.width

    # -- framing and header (§3, §8) ---------------------------------------------

    def read_framing(self) -> XlHeader | XendHeader | None:
        """Consume an xl or xend header if one starts here; ``None`` for bare."""
        kind = framing.detect_framing(self.source.peek(len(F.XL_MAGIC)))
        if kind == framing.FRAMING_XL:
            rec: XlHeader | XendHeader = self._read_xl_header()
        elif kind == framing.FRAMING_XEND:
            rec = self._read_xend_header()
        else:
            return None
        self.framing = kind
        self.framing_header = rec
        return rec

    def _read_xl_header(self) -> XlHeader:
        start = self._begin()
        self._read(len(F.XL_MAGIC), "xl_header.magic")
        fixed = xlheader.parse_fixed(self._read(16, "xl_header"), self._start, self._index)
        mandatory, optional, n = fixed.mandatory_flags, fixed.optional_flags, fixed.optional_length
        if mandatory & F.XL_MANDATORY_FLAG_STREAMv2:
            self._malformed(
                "xl header: the image is a migration v2 stream, not legacy",
                "xl_header.mandatory_flags",
                mandatory,
            )
        if mandatory & ~F.XL_MANDATORY_FLAG_JSON:
            self._malformed(
                f"xl header: unknown mandatory flag(s) {mandatory:#x}",
                "xl_header.mandatory_flags",
                mandatory,
            )
        data = self._read(n, "xl_header.optional_data")
        return XlHeader(
            offset=start,
            index=self._emit(),
            mandatory_flags=mandatory,
            optional_flags=optional,
            optional_data=data,
        )

    def _read_xend_header(self) -> XendHeader:
        start = self._begin()
        self._read(len(F.XEND_SIGNATURE), "xend_header.signature")
        (n,) = struct.unpack(">i", self._read(4, "xend_header.config_length"))
        if n < 0:
            self._malformed(
                f"xend header: negative config length {n}", "xend_header.config_length", n
            )
        config = self._read(n, "xend_header.config")
        return XendHeader(offset=start, index=self._emit(), config=config)

    def read_header(self) -> StreamHeader:
        """``p2m_size`` (detecting W and the guest type unless given)."""
        start = self._begin()
        head = self.source.peek(16)
        if head[:12] == _V2_IHDR_START:
            self._malformed(
                "a migration v2 stream, not a legacy one (try xlpy verify)", "header.p2m_size"
            )
        if self.width is None:
            # Fewer than 8 bytes: either width fails on p2m_size or just after it.
            self.width = framing.detect_width(head) or 8
        w = self.width
        p2m_size = self._uw("header.p2m_size")
        self.stream_guest = self._guest_said(head[w:])
        if self.guest is None:
            self.guest = self._guess_guest(head[w:])
        self.p2m_size = p2m_size
        self.guest_width = w
        return StreamHeader(offset=start, index=self._emit(), p2m_size=p2m_size, width=w)

    def _guest_said(self, after: bytes) -> str | None:
        """The guest type the toolstack config or the image's first bytes say, if any."""
        hdr = self.framing_header
        config = hdr.config if hdr is not None else None
        guest = framing.guest_from_config(config) if config else None
        return guest if guest is not None else framing.guest_from_image(after, self._w)

    def _guess_guest(self, after: bytes) -> str:
        guest = self.stream_guest
        if guest is None and len(after) < 4:
            raise StreamTruncated(
                f"end of stream {len(after)} bytes after p2m_size, before anything that "
                "tells the guest type",
                offset=self._start,
                record=self._index,
                field="header.guest",
            )
        if guest is None:
            raise UsageError(
                f"cannot tell whether the image at offset {self._start} is a PV or an HVM "
                "guest (no ext-info signature, no chunk header after p2m_size): "
                "pass the guest type (--guest pv|hvm)"
            )
        return guest

    def read_pv_ext_info(self) -> PvExtInfo | None:
        """PV ext-info, or ``None`` when the first W bytes are not ``~0``."""
        w = self._w
        start = self._begin()
        if self.source.peek(w) != b"\xff" * w:
            return None
        self._read(w, FLD.EXT_INFO_SIGNATURE)
        remaining = self._u32(FLD.EXT_INFO_TOTAL_BYTES)
        blocks: list[ExtInfoBlock] = []
        while remaining:
            if remaining < 8:
                self._malformed(
                    f"ext-info: {remaining} bytes left, too few for a block header",
                    FLD.EXT_INFO_TOTAL_BYTES,
                    remaining,
                )
            block_id = self._read(4, FLD.EXT_INFO_BLOCK_ID)
            size = self._u32(FLD.EXT_INFO_BLOCK_SIZE)
            remaining -= 8
            if size > remaining:
                self._malformed(
                    f"ext-info block {block_id!r} of {size} bytes overruns the "
                    f"{remaining} bytes left",
                    FLD.EXT_INFO_BLOCK_SIZE,
                    size,
                )
            if block_id == b"vcpu" and size not in (F.VCPU_CONTEXT_SIZE_32, F.VCPU_CONTEXT_SIZE_64):
                self._malformed(
                    f"bad extended-info context size {size}", FLD.EXT_INFO_VCPU_SIZE, size
                )
            if block_id == b"xcnt" and size < 4:
                self._malformed(
                    f"ext-info xcnt block of {size} bytes (needs 4)", "ext_info.xcnt_size", size
                )
            data = self._read(size, f"{Element.EXT_INFO}.{_block_name(block_id)}")
            remaining -= size
            if block_id == b"xcnt":
                xcnt = int(_U32.unpack_from(data)[0])
                if xcnt < _XSAVE_HEAD.size:
                    self._malformed(
                        f"xsave record size {xcnt} is smaller than its header",
                        "ext_info.xcnt",
                        xcnt,
                    )
            blocks.append(ExtInfoBlock(block_id=block_id, data=data))
        rec = PvExtInfo(offset=start, index=self._emit(), blocks=tuple(blocks))
        self.ext_info = rec
        gw = rec.guest_width
        if gw is not None:
            self.guest_width = gw
        return rec

    def read_p2m_frame_list(self) -> P2mFrameList:
        """The PV p2m frame list: W-sized entries, counted with the *guest* width."""
        w = self._w
        start = self._begin()
        if self.p2m_size is None:
            raise UsageError("read_header() must come first: p2m_size is not known yet")
        fpp = F.PAGE_SIZE // (self.guest_width or w)
        count = -(-self.p2m_size // fpp)
        raw = self._read(count * w, FLD.P2M_FRAME_LIST_ENTRIES)
        return P2mFrameList(offset=start, index=self._emit(), entries=_uwords(raw, w))

    # -- body (§4, §5) --------------------------------------------------------------

    def read_chunk(
        self,
        *,
        known_ids: frozenset[int] = F.ALL_CHUNK_IDS,
        dataless_nibbles: frozenset[int] = F.DATALESS_NIBBLES,
        compressed: bool = False,
        max_vcpu_id: int = F.XC_SR_MAX_VCPUS - 1,
        page_sink: PageSink | None = None,
    ) -> Record:
        """One chunk header and its payload: a ``PageBatch``, a chunk record or
        ``EndOfBody``.  An unknown id or a count outside 1..1024 raises
        ``StreamMalformed(field=FLD.CHUNK_HEADER, value=<the int>)``.  ``page_sink``
        may take the page data of a format-A batch."""
        self._begin()
        (header,) = _I32.unpack(self._read(4, FLD.CHUNK_HEADER))
        if header == 0:
            return EndOfBody(offset=self._start, index=self._emit())
        if 0 < header <= F.MAX_BATCH_SIZE:
            return self._read_batch(header, dataless_nibbles, compressed, page_sink)
        if header > 0 or header not in known_ids:
            self._malformed(
                f"chunk header {header} is neither a page count 1..{F.MAX_BATCH_SIZE} "
                "nor a known XC_SAVE_ID",
                FLD.CHUNK_HEADER,
                header,
            )
        return self._read_save_id(header, max_vcpu_id)

    def _read_batch(
        self, count: int, dataless: frozenset[int], compressed: bool, sink: PageSink | None
    ) -> PageBatch:
        w = self._w
        entries = self._read(count * w, FLD.BATCH_ENTRIES)
        data: bytes | memoryview | None = None
        if not compressed:
            n = data_bearing_count(entries, w, dataless) * F.PAGE_SIZE
            placement = sink.place(entries, w, n) if sink is not None and n else None
            if placement is not None:
                self._place(placement, n)
            elif self._reuse:
                if self._pages is None or len(self._pages) < n:
                    self._pages = bytearray(n)  # the largest batch so far, not 4 MiB up front
                mv = memoryview(self._pages)[:n]
                self._readinto(mv, FLD.BATCH_PAGES)
                data = mv
            else:
                buf = bytearray(n)
                self._readinto(memoryview(buf), FLD.BATCH_PAGES)
                data = memoryview(buf).toreadonly()
        return PageBatch(
            offset=self._start, index=self._emit(), width=w, entries=entries, data=data
        )

    def _place(self, placement: PagePlacement, n: int) -> None:
        """Move a batch's ``n`` page bytes where ``placement`` says, without reading them."""
        try:
            place_pages(self.source, placement, n, FLD.BATCH_PAGES)
        except StreamTruncated as e:
            raise self._truncated(e, FLD.BATCH_PAGES) from None

    def _read_save_id(self, chunk_id: int, max_vcpu_id: int) -> Record:
        start = self._start
        if chunk_id in F.HVM_PARAM_CHUNKS:
            pad, value = _HVM_PARAM.unpack(self._read(_HVM_PARAM.size, FLD.HVM_PARAM_VALUE))
            return HvmParamChunk(
                offset=start, index=self._emit(), chunk_id=chunk_id, value=value, pad=pad
            )
        if chunk_id == F.XC_SAVE_ID_VCPU_INFO:
            return self._read_vcpu_info(max_vcpu_id)
        if chunk_id == F.XC_SAVE_ID_TSC_INFO:
            mode, nsec, khz, inc = _TSC_INFO.unpack(self._read(_TSC_INFO.size, FLD.TSC_INFO))
            return TscInfo(
                offset=start, index=self._emit(), tsc_mode=mode, nsec=nsec, khz=khz, incarnation=inc
            )
        if chunk_id == F.XC_SAVE_ID_TMEM:
            return self._read_tmem()
        if chunk_id == F.XC_SAVE_ID_TMEM_EXTRA:
            return self._read_tmem_extra()
        if chunk_id == F.XC_SAVE_ID_COMPRESSED_DATA:
            n = self._uw(FLD.COMPRESSED_DATA_LENGTH)
            limit = F.max_compressed_chunk(self._w)
            if n > limit:
                # refused before any payload is read or buffered: a hostile length costs
                # nothing, not even the growth step of a read that the stream cannot back
                self._malformed(
                    f"compressed chunk length {n} exceeds {limit},"
                    " the most a sender's 16 MiB buffer holds",
                    FLD.COMPRESSED_DATA_LENGTH,
                    n,
                )
            # up to 16 MiB per chunk: read straight into its buffer (one copy)
            payload = bytearray()
            try:
                if self._payloads is not None:
                    self._payloads.read(self.source, n, FLD.COMPRESSED_DATA_DATA)
                else:
                    self.source.read_append(payload, n, field=FLD.COMPRESSED_DATA_DATA)
            except StreamTruncated as e:
                raise self._truncated(e, FLD.COMPRESSED_DATA_DATA) from None
            return CompressedData(offset=start, index=self._emit(), data=payload)
        if chunk_id == F.XC_SAVE_ID_TOOLSTACK:
            n = self._u32(FLD.TOOLSTACK_LENGTH)
            blob, skipped = self._blob(n, FLD.TOOLSTACK_DATA)
            return Toolstack(offset=start, index=self._emit(), blob=blob, skipped=skipped)
        if chunk_id == F.XC_SAVE_ID_ENABLE_VERIFY_MODE:
            return EnableVerifyMode(offset=start, index=self._emit())
        if chunk_id == F.XC_SAVE_ID_LAST_CHECKPOINT:
            self.last_checkpoint = True
            return LastCheckpoint(offset=start, index=self._emit())
        if chunk_id == F.XC_SAVE_ID_ENABLE_COMPRESSION:
            self.compression_enabled = True
            return EnableCompression(offset=start, index=self._emit())
        raise AssertionError(f"XC_SAVE_ID {chunk_id} has no reader")  # ALL_CHUNK_IDS covered

    def _read_vcpu_info(self, max_vcpu_id: int) -> VcpuInfo:
        (max_id,) = _I32.unpack(self._read(4, FLD.VCPU_INFO_MAX_VCPU_ID))
        if not 0 <= max_id <= max_vcpu_id:
            self._malformed(
                f"VCPU_INFO max vcpu id {max_id} outside 0..{max_vcpu_id}",
                FLD.VCPU_INFO_MAX_VCPU_ID,
                max_id,
            )
        words = max_id // 64 + 1
        raw = self._read(8 * words, FLD.VCPU_INFO_ONLINE_MAP)
        return VcpuInfo(
            offset=self._start,
            index=self._emit(),
            max_vcpu_id=max_id,
            online_map=struct.unpack(f"<{words}Q", raw),
        )

    def _read_tmem(self) -> TmemRecord:
        version, max_pools, m1, flags, weight, cap, m2 = _TMEM_HEAD.unpack(
            self._read(_TMEM_HEAD.size, "tmem.header")
        )
        if m1 != _U32_ALL_ONES or m2 != _U32_ALL_ONES:
            self._malformed(
                "tmem: missing 0xffffffff field marker",
                "tmem.marker",
                m1 if m1 != _U32_ALL_ONES else m2,
            )
        pools: list[TmemPool] = []
        for pool_id, pflags, n_pages, uuid0, uuid1 in self._pool_list(
            _TMEM_POOL, "tmem.pool_id", "tmem.pool"
        ):
            shift = (pflags >> F.TMEM_POOL_PAGESIZE_SHIFT) & F.TMEM_POOL_PAGESIZE_MASK
            pagesize = F.PAGE_SIZE << shift
            pages: list[TmemPage] = []
            terminated = False
            for _ in range(n_pages):
                oid = _OID.unpack(self._read(_OID.size, "tmem.page_oid"))
                if oid == _TMEM_OID_END:
                    terminated = True
                    break
                index = self._u32("tmem.page_index")
                data = self._read(pagesize, "tmem.page_data")
                pages.append(TmemPage(oid=oid, index=index, data=data))
            pools.append(
                TmemPool(
                    pool_id=pool_id,
                    flags=pflags,
                    n_pages=n_pages,
                    uuid=(uuid0, uuid1),
                    pages=tuple(pages),
                    terminated=terminated,
                )
            )
        return TmemRecord(
            offset=self._start,
            index=self._emit(),
            version=version,
            max_pools=max_pools,
            client_flags=flags,
            weight=weight,
            cap=cap,
            pools=tuple(pools),
        )

    def _pool_list(
        self, entry: struct.Struct, id_field: str, entry_field: str
    ) -> Iterator[tuple[int, ...]]:
        """The ``entry`` structs of a list that ends with pool id ``0xffffffff`` (§5.2).

        Each entry opens with its u32 pool id, so the id is read alone first: the
        terminator is only those four bytes.  Lazy, so that what follows an entry (a
        pool's pages) is read before the next id.
        """
        while True:
            pool_id = self._u32(id_field)
            if pool_id == _U32_ALL_ONES:
                return
            yield entry.unpack(_U32.pack(pool_id) + self._read(entry.size - 4, entry_field))

    def _read_tmem_extra(self) -> TmemExtra:
        entries: list[TmemExtraEntry] = []
        for pool_id, o0, o1, o2, index in self._pool_list(
            _TMEM_EXTRA, "tmem_extra.pool_id", "tmem_extra.entry"
        ):
            entries.append(TmemExtraEntry(pool_id=pool_id, oid=(o0, o1, o2), index=index))
        return TmemExtra(offset=self._start, index=self._emit(), entries=tuple(entries))

    # -- tails (§7) -----------------------------------------------------------------

    def read_tail(self, *, vcpu_info: VcpuInfo | None = None) -> PvTail | HvmTail:
        """The PV or HVM tail; a PV tail is sized by ``vcpu_info`` (default {vcpu0})."""
        if self.guest == "hvm":
            return self._read_hvm_tail()
        return self._read_pv_tail(vcpu_info)

    def _read_pv_tail(self, vcpu_info: VcpuInfo | None) -> PvTail:
        w = self._w
        start = self._begin()
        n = self._u32(FLD.PV_TAIL_PFN_COUNT)
        if n > F.MAX_UNMAPPED_PFNS:
            self._malformed(
                f"PV tail: {n} unmapped pfns (more than 2^28)", FLD.PV_TAIL_PFN_COUNT, n
            )
        unmapped = _uwords(self._read(n * w, FLD.PV_TAIL_PFNS), w)
        ext = self.ext_info
        ctx_size = (
            F.VCPU_CONTEXT_SIZE_32 if (self.guest_width or w) == 4 else F.VCPU_CONTEXT_SIZE_64
        )
        extv = ext is not None and ext.extv
        xcnt = ext.xcnt if ext is not None else None
        online = vcpu_info.online_vcpus() if vcpu_info is not None else [0]
        vcpus: list[VcpuState] = []
        for vcpu_id in online:
            context = self._read(ctx_size, "pv_tail.vcpu_context")
            ext_ctx = self._read(F.EXT_VCPU_CONTEXT_SIZE, "pv_tail.vcpu_ext") if extv else None
            xsave = None
            if xcnt is not None:
                mask, size = _XSAVE_HEAD.unpack(
                    self._read(_XSAVE_HEAD.size, "pv_tail.xsave_header")
                )
                if size != xcnt - _XSAVE_HEAD.size:
                    self._malformed(
                        f"PV tail: vcpu {vcpu_id} xsave size {size}, the xcnt "
                        f"block says {xcnt - _XSAVE_HEAD.size}",
                        "pv_tail.xsave_size",
                        size,
                    )
                xsave = XsaveRecord(xfeature_mask=mask, data=self._read(size, "pv_tail.xsave"))
            vcpus.append(VcpuState(vcpu_id=vcpu_id, context=context, ext=ext_ctx, xsave=xsave))
        shared = self._read(F.SHARED_INFO_SIZE, FLD.PV_TAIL_SHARED_INFO)
        return PvTail(
            offset=start,
            index=self._emit(),
            unmapped=unmapped,
            vcpus=tuple(vcpus),
            shared_info=shared,
        )

    def _read_hvm_tail(self) -> HvmTail:
        start = self._begin()
        ioreq, bufioreq, store, n = _HVM_TAIL.unpack(
            self._read(_HVM_TAIL.size - 4, FLD.HVM_TAIL_MAGIC_PFNS)
            + self._read(4, FLD.HVM_TAIL_CONTEXT_LENGTH)
        )
        context, skipped = self._blob(n, FLD.HVM_TAIL_CONTEXT)
        return HvmTail(
            offset=start,
            index=self._emit(),
            ioreq_pfn=ioreq,
            bufioreq_pfn=bufioreq,
            store_pfn=store,
            context=context,
            skipped=skipped,
        )

    # -- after the libxc image (§8.1) ------------------------------------------------

    def qemu_signature_ahead(self) -> bytes | None:
        """The QEMU record signature the next bytes start with, if any (peek only)."""
        return framing.qemu_signature(self.source.peek(len(F.XENSERVER_QEMU_SIG)))

    def _libxc_qemu_ahead(self) -> bool:
        """A QEMU record libxc reads in its tail starts here (peeks 16 bytes only)."""
        head = self.source.peek(_QEMU_PREFIX)
        return len(head) == _QEMU_PREFIX and any(
            sig.startswith(head) for sig in (F.QEMU_SIG_0002, F.QEMU_SIG_REMUS)
        )

    def read_qemu_record(self, *, required: bool = False) -> QemuRecord | None:
        """A QEMU record if one of the known signatures starts here, else ``None``.

        With ``required`` (libxc's HVM tail, which always reads one) anything
        else is an error in field ``qemu.signature``: truncated when fewer than
        21 bytes are left, malformed otherwise (libxc's "Invalid QEMU signature").
        """
        sig = self.qemu_signature_ahead()
        start = self._begin()
        if sig is None:
            if not required:
                return None
            head = self._read(F.QEMU_SIGNATURE_LEN, "qemu.signature")
            self._malformed(f"invalid QEMU signature {head!r}", "qemu.signature")
        self._read(len(sig), "qemu.signature")
        if sig == F.QEMU_SIG_TO_EOF:
            data, skipped = self._blob_to_eof("qemu.data")
        else:
            raw = self._read(4, "qemu.length")
            n = int.from_bytes(raw, "big" if sig == F.XENSERVER_QEMU_SIG else "little")
            data, skipped = self._blob(n, "qemu.data")
            if sig == F.XENSERVER_QEMU_SIG:
                self.framing = framing.FRAMING_XENSERVER_CLASSIC
        return QemuRecord(
            offset=start, index=self._emit(), signature=sig, data=data, skipped=skipped
        )

    # -- the whole grammar ---------------------------------------------------------

    def records(
        self, *, page_sink: PageSink | None = None, one_image: bool = False
    ) -> Iterator[Record]:
        """The whole stream as records, in wire order (``page_sink`` as for ``read_chunk``).

        After each tail the next bytes decide (look-ahead only): EOF ends the
        stream; a QEMU signature is a QEMU record; after -9 anything else is a
        ``Trailer``; otherwise a valid chunk header starts the next checkpoint
        (Remus: body+tail repeated, format B once -13 was seen in checkpoint 1)
        and anything else is a ``Trailer``.

        ``one_image``: the image is embedded in a toolstack's framing (a xenopsd
        record) and ends after the first checkpoint's tail and, for HVM, the QEMU
        record libxc reads there (``DeviceModelRecord0002``, ``RemusDeviceModelState``);
        the bytes after it are the toolstack's and are neither read nor waited for
        beyond the 16 bytes that tell (a xenopsd header is 16 bytes).
        """
        hdr = self.read_framing()
        if hdr is not None:
            yield hdr
        yield self.read_header()
        if self.guest == "pv":
            ext = self.read_pv_ext_info()
            if ext is not None:
                yield ext
            yield self.read_p2m_frame_list()
        vcpu_info: VcpuInfo | None = None
        number = 0
        compressed = False
        while True:
            yield self.begin_checkpoint(number, compressed)
            while True:
                rec = self.read_chunk(compressed=compressed, page_sink=page_sink)
                yield rec
                if isinstance(rec, VcpuInfo):
                    vcpu_info = rec
                elif isinstance(rec, EndOfBody):
                    break
            yield self.read_tail(vcpu_info=vcpu_info)
            if one_image:
                if self.guest == "hvm" and self._libxc_qemu_ahead():
                    # 16 bytes of a signature: the rest must follow (an error otherwise)
                    qemu = self.read_qemu_record(required=True)
                    assert qemu is not None
                    yield qemu
                return
            compressed = self.compression_enabled
            if self.source.at_eof():
                return
            qemu = self.read_qemu_record()
            if qemu is not None:
                yield qemu
                if self.source.at_eof():
                    return
            if not self.last_checkpoint:
                head = self.source.peek(4)
                if len(head) == 4 and framing.is_chunk_header(_I32.unpack(head)[0]):
                    number += 1
                    continue
            start = self._begin()
            data, skipped = self._blob_to_eof("trailer")
            yield Trailer(offset=start, index=self._emit(), data=data, skipped=skipped)
            return


def _block_name(block_id: bytes) -> str:
    """A printable name for an ext-info block id, for error fields."""
    text = block_id.decode("ascii", "replace")
    return text if text.isalnum() else block_id.hex()
