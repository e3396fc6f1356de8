"""Summarise a legacy stream: what it contains and, when damaged, exactly where it stops.

Inspection keeps everything read before a fault (hachoir-style) instead of
discarding it: the summary of a damaged stream lists the complete and the
partial checkpoints and carries the error with its offset.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from xlpy.errors import StreamError, StreamMalformed, error_json
from xlpy.stream.legacy import format as F
from xlpy.stream.legacy.reader import SKIP_PAGES, LegacyReader, data_bearing_count
from xlpy.stream.legacy.records import (
    CheckpointBegin,
    CompressedData,
    EndOfBody,
    HvmTail,
    P2mFrameList,
    PageBatch,
    PvExtInfo,
    PvTail,
    QemuRecord,
    StreamHeader,
    Trailer,
    chunk_id_of,
)
from xlpy.stream.source import ByteSource


@dataclass(slots=True)
class CheckpointSummary:
    """Counts for one checkpoint (body + tail + its QEMU record)."""

    offset: int
    compressed: bool
    batches: int = 0
    entries: int = 0
    pages: int = 0
    chunks: dict[str, int] = field(default_factory=dict)
    last_checkpoint: bool = False
    tail: bool = False
    qemu: QemuRecord | None = None

    def to_json(self) -> dict[str, Any]:
        """One element of the ``checkpoints`` list of ``xlpy inspect --json``."""
        return {
            "offset": self.offset,
            "batches": self.batches,
            "entries": self.entries,
            "pages": self.pages,
            "compressed": self.compressed,
            "chunks": dict(self.chunks),
            "last_checkpoint": self.last_checkpoint,
            "qemu": None
            if self.qemu is None
            else {
                "signature": self.qemu.signature.decode("ascii", "replace"),
                "length": len(self.qemu.data) + self.qemu.skipped,
            },
        }


@dataclass(slots=True)
class Summary:
    """What :func:`inspect_stream` found; ``error`` is where reading stopped, if it did."""

    framing: str = "bare"
    guest: str | None = None
    width: int | None = None
    guest_width: int | None = None
    p2m_size: int | None = None
    ext_info: tuple[str, ...] | None = None
    p2m_frames: int | None = None
    checkpoints: list[CheckpointSummary] = field(default_factory=list)
    trailer: Trailer | None = None
    end_offset: int = 0
    error: StreamError | None = None

    @property
    def complete(self) -> bool:
        """Read to the end without error, with at least one whole checkpoint."""
        return self.error is None and bool(self.checkpoints) and self.checkpoints[0].tail

    def to_json(self) -> dict[str, Any]:
        """The ``xlpy inspect --json`` object."""
        return {
            "format": "legacy",
            "framing": self.framing,
            "guest": self.guest,
            "width": self.width,
            "guest_width": self.guest_width,
            "p2m_size": self.p2m_size,
            "complete": self.complete,
            "error": None if self.error is None else error_json(self.error),
            "checkpoints": [c.to_json() for c in self.checkpoints],
            "trailer": None
            if self.trailer is None
            else {
                "offset": self.trailer.offset,
                "length": len(self.trailer.data) + self.trailer.skipped,
            },
            "end_offset": self.end_offset,
        }


class ReadOutcome(Protocol):
    """What every ``xlpy inspect`` summary records about how reading ended."""

    error: StreamError | None
    end_offset: int

    @property
    def complete(self) -> bool:
        """Read to the end without error."""
        ...


@contextmanager
def keeping_error(summary: ReadOutcome, source: ByteSource) -> Iterator[None]:
    """Read inside this block without losing what was read before a fault.

    A stream error raised inside ends up in ``summary.error`` instead of propagating
    (others propagate); ``summary.end_offset`` is where reading stopped.
    """
    try:
        yield
    except StreamError as e:
        # Without its traceback the error holds no frame, hence no cycle back
        # to this summary and the reader's buffers.
        summary.error = e.with_traceback(None)
    summary.end_offset = source.offset


def status_line(summary: ReadOutcome) -> str:
    """The last line of an ``xlpy inspect`` report: the error, or whether all was read."""
    if summary.error is not None:
        return f"ERROR ({summary.error.kind}): {summary.error}"
    return f"complete: {summary.end_offset} bytes" if summary.complete else "incomplete"


def _check_guest(reader: LegacyReader, header: StreamHeader) -> None:
    """A guest type given by the caller must not contradict what the stream says."""
    said = reader.stream_guest
    if said is None or said == reader.guest:
        return
    raise StreamMalformed(
        f"the stream says the guest is {said.upper()} (its toolstack config or the bytes "
        f"after p2m_size), not {str(reader.guest).upper()} as given",
        offset=header.offset + header.width,
        record=header.index,
        field="header.guest",
    )


class _CompressedPages:
    """One checkpoint's -12 payloads, checked page by page once its body is complete."""

    def __init__(self) -> None:
        self.payloads: list[bytes | bytearray] = []
        self.segments: list[tuple[int, int]] = []
        self.records: list[int] = []
        self.size = 0

    def add(self, rec: CompressedData, width: int) -> None:
        # The payload follows the chunk id (int) and its W-sized length.
        self.segments.append((self.size, rec.offset + 4 + width))
        self.records.append(rec.index)
        self.payloads.append(rec.data)
        self.size += len(rec.data)

    def check(self, pages: int) -> None:
        """The run structure of ``pages`` pages, as a receiver applying them would read it.

        A fault names the -12 chunk whose payload the read pointer was in.
        """
        # numpy (~0.1 s) only for streams that have compressed checkpoints.
        from xlpy.stream.legacy.compression import check_structure

        try:
            check_structure(b"".join(self.payloads), pages, segments=self.segments)
        except StreamMalformed as e:
            at = e.offset if e.offset is not None else 0
            for (_, off), index in zip(self.segments, self.records, strict=True):
                if off <= at:
                    e.record = index
            raise


def inspect_stream(
    source: ByteSource,
    *,
    width: int | None = None,
    guest: str | None = None,
    one_image: bool = False,
) -> Summary:
    """Read the whole stream from ``source`` and summarise it.

    Stream errors end up in ``Summary.error``; a :class:`~xlpy.errors.UsageError`
    (guest type undecidable and not given) propagates.  Page data is only counted,
    never read into memory (skipped in the kernel where the source allows).
    ``one_image``: an image embedded in a toolstack's framing (a xenopsd record),
    read up to its own end (:meth:`LegacyReader.records`).
    """
    reader = LegacyReader(source, width=width, guest=guest, keep_blobs=False)
    summary = Summary()
    cp: CheckpointSummary | None = None
    compressed = _CompressedPages()
    with keeping_error(summary, source):
        for rec in reader.records(page_sink=SKIP_PAGES, one_image=one_image):
            if isinstance(rec, PageBatch):
                assert cp is not None
                cp.batches += 1
                cp.entries += rec.count
                cp.pages += data_bearing_count(rec.entries, rec.width)
            elif (cid := chunk_id_of(rec)) is not None:
                assert cp is not None
                name = F.CHUNK_NAMES[cid]
                cp.chunks[name] = cp.chunks.get(name, 0) + 1
                if cid == F.XC_SAVE_ID_LAST_CHECKPOINT:
                    cp.last_checkpoint = True
                elif isinstance(rec, CompressedData):
                    compressed.add(rec, reader.width or 8)
            elif isinstance(rec, EndOfBody):
                assert cp is not None
                if cp.compressed:
                    compressed.check(cp.pages)
            elif isinstance(rec, CheckpointBegin):
                cp = CheckpointSummary(offset=rec.offset, compressed=rec.compressed)
                compressed = _CompressedPages()
                summary.checkpoints.append(cp)
            elif isinstance(rec, StreamHeader):
                summary.width = reader.width
                summary.guest = reader.guest
                summary.p2m_size = rec.p2m_size
                summary.guest_width = reader.guest_width
                _check_guest(reader, rec)
            elif isinstance(rec, PvExtInfo):
                summary.ext_info = tuple(b.block_id.decode("ascii", "replace") for b in rec.blocks)
                summary.guest_width = reader.guest_width
            elif isinstance(rec, P2mFrameList):
                summary.p2m_frames = len(rec.entries)
            elif isinstance(rec, QemuRecord):
                if cp is not None:
                    cp.qemu = rec
            elif isinstance(rec, Trailer):
                summary.trailer = rec
            elif isinstance(rec, PvTail | HvmTail):
                assert cp is not None
                cp.tail = True
    summary.framing = reader.framing
    return summary


def render_text(s: Summary) -> str:
    """The human-readable ``xlpy inspect`` report."""
    lines = []
    bits = f"{s.width * 8}-bit toolstack (W={s.width})" if s.width else "width unknown"
    guest = s.guest.upper() if s.guest else "unknown"
    if s.guest == "pv" and s.guest_width:
        guest += f" {s.guest_width * 8}-bit"
    p2m = f"p2m_size {s.p2m_size} ({s.p2m_size:#x})" if s.p2m_size is not None else "no header"
    lines.append(f"legacy stream, framing {s.framing}, {guest} guest, {bits}, {p2m}")
    if s.ext_info is not None:
        lines.append(f"  ext-info blocks: {' '.join(s.ext_info) or '(none)'}")
    if s.p2m_frames is not None:
        lines.append(f"  p2m frame list: {s.p2m_frames} entries")
    for n, c in enumerate(s.checkpoints):
        fmt = "format B (compressed)" if c.compressed else "format A"
        lines.append(
            f"checkpoint {n} at offset {c.offset}: {c.batches} batches, {c.entries} entries, "
            f"{c.pages} pages, {fmt}"
        )
        if c.chunks:
            lines.append("  chunks: " + ", ".join(f"{k} {v}" for k, v in c.chunks.items()))
        if c.qemu is not None:
            sig = c.qemu.signature.decode("ascii", "replace").strip()
            n = len(c.qemu.data) + c.qemu.skipped
            lines.append(f"  qemu: {sig}, {n} bytes at offset {c.qemu.offset}")
        if not c.tail:
            lines.append("  (no tail)")
    if s.trailer is not None:
        lines.append(
            f"trailer: {len(s.trailer.data) + s.trailer.skipped} bytes at offset {s.trailer.offset}"
        )
    lines.append(status_line(s))
    return "\n".join(lines)
