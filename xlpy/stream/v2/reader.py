"""Pull-based reader of migration v2 streams over a :class:`ByteSource`.

Handles a bare libxc image, a libxl stream (the libxc image embedded after
its LIBXC_CONTEXT record) and an ``xl save`` file (xl header, then libxl or
libxc depending on the STREAMv2 mandatory flag).  It frames the stream and
nothing more: every header and record is yielded as read, and judging the
values is the verifier's job (:mod:`xlpy.stream.v2.verify`), so one reader
serves the strict and tolerant verifiers, the converter and the receiver.

Checkpointed libxl streams interleave the layers: after a libxc CHECKPOINT
record libxl reads its own records up to CHECKPOINT_END, then hands the
stream back to libxc.  The reader follows the same switch.

A ``page_sink`` (the legacy reader's :class:`~xlpy.stream.legacy.reader.PageSink`)
may take the page bytes of libxc PAGE_DATA records: it is shown the raw entries
and the number of bytes after them, and where it gives a
:class:`~xlpy.stream.legacy.reader.PagePlacement` the source moves those bytes
there (in the kernel where it can); the record's ``body`` then ends after the
entries and ``placed`` counts the bytes moved.

Never seeks; stops right after the outermost END record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from xlpy.errors import StreamError, StreamMalformed, StreamTruncated
from xlpy.stream import xlheader
from xlpy.stream.legacy.reader import PageSink, place_pages
from xlpy.stream.legacy.records import XlHeader
from xlpy.stream.source import ByteSource, truncated
from xlpy.stream.v2 import format as F
from xlpy.stream.v2.records import (
    LIBXC,
    LIBXL,
    DomainHeader,
    Element,
    ImageHeader,
    LibxlHeader,
    V2Record,
)
from xlpy.stream.xlheader import XL_MAGIC, XL_MANDATORY_FLAG_STREAMv2

FORMATS = (LIBXC, LIBXL)
_LIBXL_MAGIC = F.LIBXL_HDR_IDENT.to_bytes(8, "big")
_LIBXC_MAGIC = F.IHDR_MARKER.to_bytes(8, "big")


def detect(source: ByteSource) -> tuple[bool, str | None]:
    """(has xl header, format or ``None`` when the xl flags decide) from the first bytes."""
    head = source.peek(len(XL_MAGIC))
    if head == XL_MAGIC:
        return True, None
    if head[:8] == _LIBXL_MAGIC:
        return False, LIBXL
    if head[:8] == _LIBXC_MAGIC:
        return False, LIBXC
    raise StreamMalformed(
        "not a migration v2 stream: no xl header, libxl ident or libxc marker",
        offset=source.offset,
        field="header",
        value=int.from_bytes(head[:8].ljust(8, b"\0"), "big"),
    )


class V2Reader:
    """Yields the elements of one v2 stream; see :meth:`elements`.

    ``xl``: ``True`` expects an xl header, ``False`` forbids one, ``None``
    detects.  ``fmt`` (``"libxc"``/``"libxl"``) overrides detection and the xl
    STREAMv2 flag.  After iteration :attr:`framing` is ``"xl"`` or ``"bare"``
    and :attr:`format` the format read; :attr:`records` counts records.
    """

    def __init__(
        self,
        source: ByteSource,
        *,
        xl: bool | None = None,
        fmt: str | None = None,
        page_sink: PageSink | None = None,
    ):
        """Read from ``source`` (nothing is read until :meth:`elements` is iterated)."""
        if fmt is not None and fmt not in FORMATS:
            raise ValueError(f"unknown v2 format {fmt!r}")
        self.source = source
        self.page_sink = page_sink
        self._xl = xl
        self.format = fmt
        self.framing = "xl" if xl else "bare"
        self.records = 0

    # -- elements ------------------------------------------------------------

    def elements(self) -> Iterator[Element | XlHeader]:
        """Headers and records in stream order, up to and including the outer END.

        Raises :class:`~xlpy.errors.StreamTruncated` at EOF inside an element
        and :class:`~xlpy.errors.StreamMalformed` where the stream cannot be
        framed (wrong xl magic, record longer than libxc's 128 MiB limit).
        """
        xl, fmt = self._xl, self.format
        if xl is None:
            xl = self.source.peek(len(XL_MAGIC)) == XL_MAGIC
        if not xl and fmt is None:
            fmt = detect(self.source)[1]
        if xl:
            self.framing = "xl"
            hdr = self.read_xl_header()
            yield hdr
            if fmt is None:
                fmt = LIBXL if hdr.mandatory_flags & XL_MANDATORY_FLAG_STREAMv2 else LIBXC
        self.format = fmt or LIBXC
        if self.format == LIBXL:
            yield from self._libxl()
        else:
            yield from self._libxc(in_libxl=False)

    def _libxl(self) -> Iterator[Element]:
        yield self.read_libxl_header()
        yield from self._records(
            LIBXL,
            ends=(F.REC_TYPE_LIBXL_END,),
            switch=F.REC_TYPE_LIBXC_CONTEXT,
            switched=lambda: self._libxc(in_libxl=True),
        )

    def _libxc(self, *, in_libxl: bool) -> Iterator[Element]:
        yield self.read_image_header()
        yield self.read_domain_header()
        yield from self._records(
            LIBXC,
            ends=(F.REC_TYPE_END,),
            switch=F.REC_TYPE_CHECKPOINT,
            switched=self._libxl_checkpoint if in_libxl else None,
        )

    def _libxl_checkpoint(self) -> Iterator[Element]:
        """libxl's records after a libxc CHECKPOINT, up to CHECKPOINT_END (or the END)."""
        return self._records(LIBXL, ends=(F.REC_TYPE_CHECKPOINT_END, F.REC_TYPE_LIBXL_END))

    def _records(
        self,
        layer: str,
        *,
        ends: tuple[int, ...],
        switch: int | None = None,
        switched: Callable[[], Iterator[Element]] | None = None,
    ) -> Iterator[Element]:
        """``layer``'s records up to one of ``ends``; after each ``switch`` record, what
        ``switched`` yields (the other layer's part of the stream) comes first."""
        while True:
            rec = self.read_record(layer)
            yield rec
            if rec.type in ends:
                return
            if rec.type == switch and switched is not None:
                yield from switched()

    # -- single elements ----------------------------------------------------------

    def read_xl_header(self) -> XlHeader:
        """The ``xl save`` header: 32-byte magic, byte order, mandatory and optional flags,
        optional data length (u32 each), then the optional data (xl's JSON config)."""
        src = self.source
        off = src.offset
        fixed = xlheader.parse(src.read_exact(xlheader.XL_HEADER_SIZE, field="xl_header"), off)
        opt = src.read_exact(fixed.optional_length, field="xl_header.optional_data")
        return XlHeader(
            offset=off,
            mandatory_flags=fixed.mandatory_flags,
            optional_flags=fixed.optional_flags,
            optional_data=opt,
        )

    def read_libxl_header(self) -> LibxlHeader:
        """The 16-byte libxl stream header (big-endian ident, version, options), unchecked."""
        off = self.source.offset
        raw = self.source.read_exact(F.LIBXL_HDR_SIZE, field="libxl_header")
        ident, version, options = F.LIBXL_HDR_FORMAT.unpack(raw)
        return LibxlHeader(offset=off, ident=ident, version=version, options=options)

    def read_image_header(self) -> ImageHeader:
        """The 24-byte libxc image header (big-endian marker, id, version, options,
        reserved), unchecked: :mod:`xlpy.stream.v2.verify` judges the values."""
        off = self.source.offset
        raw = self.source.read_exact(F.IHDR_SIZE, field="image_header")
        marker, ident, version, options, r1, r2 = F.IHDR_FORMAT.unpack(raw)
        return ImageHeader(
            offset=off,
            marker=marker,
            id=ident,
            version=version,
            options=options,
            reserved1=r1,
            reserved2=r2,
        )

    def read_domain_header(self) -> DomainHeader:
        """The 16-byte libxc domain header (type, page_shift, reserved, xen_major/minor)."""
        off = self.source.offset
        raw = self.source.read_exact(F.DHDR_SIZE, field="domain_header")
        gtype, shift, res, major, minor = F.DHDR_FORMAT.unpack(raw)
        return DomainHeader(
            offset=off, type=gtype, page_shift=shift, reserved=res, xen_major=major, xen_minor=minor
        )

    def read_record(self, layer: str) -> V2Record:
        """One record of ``layer``'s numbering; the length is checked before allocating."""
        src = self.source
        off = src.offset
        index = self.records
        try:
            rtype, length = F.RHDR_FORMAT.unpack(src.read_exact(F.RHDR_SIZE, field="record.header"))
            if length > F.REC_LENGTH_MAX:
                raise StreamMalformed(
                    f"record length {length} exceeds the maximum {F.REC_LENGTH_MAX}",
                    offset=off,
                    field="record.length",
                    value=length,
                )
            placed = 0
            if layer == LIBXC and rtype == F.REC_TYPE_PAGE_DATA and self.page_sink is not None:
                body, placed = self._page_data_body(length)
            else:
                body = src.read_exact(length, field="record.body")
            padding = src.read_exact(F.padding_for(length), field="record.padding")
        except StreamError as e:
            if e.record is None:
                e.record = index
            raise
        self.records += 1
        return V2Record(
            offset=off,
            index=index,
            layer=layer,
            type=rtype,
            body=body,
            padding=padding,
            placed=placed,
        )

    def _page_data_body(self, length: int) -> tuple[bytes, int]:
        """A PAGE_DATA body whose pages the sink may take: ``(body read, bytes placed)``.

        Nothing is consumed before the sink decides, and truncation raises as reading
        the whole body would (its length, what was left, where it starts).
        """
        src, sink = self.source, self.page_sink
        assert sink is not None
        start = src.offset
        hdr = F.PAGE_DATA_HDR_FORMAT.size
        head = src.peek(hdr)
        fixed = hdr + 8 * F.PAGE_DATA_HDR_FORMAT.unpack(head)[0] if len(head) == hdr else length
        placement = None
        if fixed < length:
            head = src.peek(fixed)
            if len(head) == fixed:
                placement = sink.place(head[hdr:], 8, length - fixed)
        if placement is None:
            return src.read_exact(length, field="record.body"), 0
        src.read_exact(fixed, field="record.body")
        try:
            place_pages(src, placement, length - fixed, "record.body")
        except StreamTruncated:
            raise truncated("record.body", length, src.offset - start, start) from None
        return head, length - fixed
