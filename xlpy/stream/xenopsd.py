"""xenopsd suspend images (xapi, XenServer, XCP-ng): format, reader and writer.

Facts: ``../shared/spec/xenopsd-image.md`` (xapi-project/xen-api
``ocaml/xenopsd/lib/suspend_image.ml``, ``ocaml/xenopsd/xc/domain.ml``).  Two generations:

* **legacy** ``XenSavedDomain\\n``: a legacy libxc image (no QEMU record in its tail:
  XenServer's libxc did not read one), then for HVM the toolstack's
  ``QemuDeviceModelRecord\\n`` + big-endian u32 length + QEMU state;
* **structured** ``XenSavedDomv2-\\n``: records, each a header of two little-endian
  int64 ``(type, length)`` and a body.  Libxc (a v2 stream) and Libxc_legacy (a legacy
  image with, for HVM, the ``DeviceModelRecord0002`` QEMU record libxc reads in its tail)
  declare length 0: their bodies are self-delimiting and read in place from the same
  descriptor, so their readers must stop exactly at their own end.

:class:`XenopsdReader` yields one :class:`XenopsdRecord` per header (a legacy image's two
parts as records without a header) and enforces what xenopsd's ``process_header`` loop
does: an unknown type, a Libxl or Qemu_xen record, a Qemu_trad longer than 1 MiB, a body
cut short and a missing End_of_image are :class:`~xlpy.errors.StreamMalformed` /
:class:`~xlpy.errors.StreamTruncated` with the offset of the header.  The consumer reads
a body (:meth:`XenopsdReader.read_body`, :meth:`~XenopsdReader.copy_body`) or an embedded
image (:meth:`~XenopsdReader.legacy_image`, :meth:`~XenopsdReader.v2_image`, or any
reader on :attr:`XenopsdReader.source`) before asking for the next record; what it leaves
is skipped.  Memory stays bounded: bodies are read only as far as the input backs them,
skipped and copied in steps.

Demu: xenopsd writes length 0 and emu-manager hands the vGPU stream to demu, whose
format only demu knows.  A Demu record with length 0 on the main descriptor is refused
(nothing here can tell where it ends); xlpy's own images (``xlpy gen --demu``) declare
the body length, which this reader honours.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from xlpy.errors import StreamMalformed, StreamTruncated, UsageError
from xlpy.stream.legacy import format as LF
from xlpy.stream.legacy.reader import SKIP_PAGES, LegacyReader, PageSink
from xlpy.stream.legacy.records import Record, XlHeader
from xlpy.stream.source import ByteSource
from xlpy.stream.v2.reader import V2Reader
from xlpy.stream.v2.records import LIBXC as V2_LIBXC
from xlpy.stream.v2.records import Element

SIGNATURE = b"XenSavedDomv2-\n"
LEGACY_SIGNATURE = b"XenSavedDomain\n"
SIGNATURE_SIZE = 15
STRUCTURED = "structured"
LEGACY = "legacy"

#: ``(type, length)``, little-endian int64 each (``Io.read_int64 ~endianness:`little``).
HEADER = struct.Struct("<qq")

XENOPS = 0x000F
LIBXC = 0x00F0
LIBXL = 0x00F1
LIBXC_LEGACY = 0x00F2
QEMU_TRAD = 0x0F00
QEMU_XEN = 0x0F01
DEMU = 0x0F10
VARSTORED = 0x0F11
SWTPM0 = 0x0F12
SWTPM = 0x0F13
END_OF_IMAGE = 0xFFFF

#: Names as xenopsd's ``header_type`` constructors; also the file names restore writes.
NAMES: dict[int, str] = {
    XENOPS: "Xenops",
    LIBXC: "Libxc",
    LIBXL: "Libxl",
    LIBXC_LEGACY: "Libxc_legacy",
    QEMU_TRAD: "Qemu_trad",
    QEMU_XEN: "Qemu_xen",
    DEMU: "Demu",
    VARSTORED: "Varstored",
    SWTPM0: "Swtpm0",
    SWTPM: "Swtpm",
    END_OF_IMAGE: "End_of_image",
}
#: xenopsd's ``process_header`` fails on these (``Suspend_image_failure``).
REFUSED = frozenset({LIBXL, QEMU_XEN})
#: Self-delimiting libxc images read in place (declared length ignored, written 0).
EMBEDDED = frozenset({LIBXC, LIBXC_LEGACY})
#: Records whose length field is the body length.
BODY_TYPES = frozenset({XENOPS, QEMU_TRAD, DEMU, VARSTORED, SWTPM0, SWTPM})
#: ``consume_qemu_record``: "QEMU record length in header too large" above 1 MiB.
QEMU_TRAD_MAX = 1 << 20
#: The legacy image's QEMU record: signature, then a big-endian u32 length.
LEGACY_QEMU_SIGNATURE = LF.XENSERVER_QEMU_SIG
_BE_U32 = struct.Struct(">I")
#: Bodies are skipped and copied in steps of this size (bounded memory).
COPY_STEP = 1 << 20


@dataclass(frozen=True, slots=True)
class XenopsdRecord:
    """One record: where its header starts, its type, declared length and body offset.

    ``legacy``: a part of a ``XenSavedDomain`` image, which has no xenopsd headers: the
    libxc image (type Libxc_legacy, at offset 15) and the QEMU record (type Qemu_trad,
    ``offset`` at its signature).  ``body`` is the Xenops record's S-expression (read and
    checked as xenopsd does); other bodies are left to the consumer.
    """

    offset: int
    index: int
    type: int
    length: int
    body_offset: int
    legacy: bool = False
    body: bytes | None = None

    @property
    def name(self) -> str:
        """xenopsd's name for the type (``Libxc``, ``Qemu_trad``, ...)."""
        return NAMES[self.type]

    @property
    def body_length(self) -> int | None:
        """Bytes of body that follow the header; ``None`` for a self-delimiting image."""
        if self.type in BODY_TYPES:
            return self.length
        return None if self.type in EMBEDDED else 0

    def to_json(self) -> dict[str, Any]:
        """One element of ``records`` in ``xlpy inspect --json``."""
        return {
            "offset": self.offset,
            "type": self.type,
            "name": self.name,
            "length": self.length,
            "body_offset": self.body_offset,
        }


# --- the Xenops record (an S-expression) --------------------------------------------

_ATOM_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:+/@")


def _atom(text: str) -> bytes:
    raw = text.encode()
    if raw and all(b in _ATOM_SAFE for b in raw):
        return raw
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def xenops_record(*, time: str, word_size: int, vm_str: str | None = None) -> bytes:
    """The Xenops record body as xenopsd's sexplib writes it (``xs_subtree`` empty, as
    since CA-248130)."""
    fields = [b"(time " + _atom(time) + b")", b"(word_size " + str(word_size).encode() + b")"]
    if vm_str is not None:
        fields.append(b"(vm_str " + _atom(vm_str) + b")")
    fields.append(b"(xs_subtree())")
    return b"(" + b"".join(fields) + b")"


SExp = bytes | list["SExp"]


def _parse_sexp(data: bytes) -> SExp:
    """One S-expression (atoms, quoted strings with backslash escapes, lists)."""
    pos = 0
    stack: list[list[SExp]] = [[]]
    while pos < len(data):
        c = data[pos]
        if c in b" \t\r\n":
            pos += 1
        elif c == ord("("):
            stack.append([])
            pos += 1
        elif c == ord(")"):
            if len(stack) == 1:
                raise ValueError(f"unbalanced ')' at byte {pos}")
            done = stack.pop()
            stack[-1].append(done)
            pos += 1
        elif c == ord('"'):
            out = bytearray()
            pos += 1
            while True:
                if pos >= len(data):
                    raise ValueError("unterminated string")
                c = data[pos]
                if c == ord("\\") and pos + 1 < len(data):
                    out.append(data[pos + 1])
                    pos += 2
                elif c == ord('"'):
                    pos += 1
                    break
                else:
                    out.append(c)
                    pos += 1
            stack[-1].append(bytes(out))
        else:
            end = pos
            while end < len(data) and data[end] not in b' \t\r\n()"':
                end += 1
            stack[-1].append(data[pos:end])
            pos = end
    if len(stack) != 1:
        raise ValueError("unbalanced '('")
    if len(stack[0]) != 1:
        raise ValueError(f"{len(stack[0])} S-expressions, not one")
    return stack[0][0]


def parse_xenops(body: bytes) -> dict[str, SExp]:
    """The Xenops record's fields; ``ValueError`` where xenopsd's ``t_of_sexp`` fails
    (not a record, ``time`` or ``word_size`` missing, ``word_size`` not an int)."""
    sexp = _parse_sexp(body)
    if not isinstance(sexp, list):
        raise ValueError("not a list of fields")
    fields: dict[str, SExp] = {}
    for item in sexp:
        if not (isinstance(item, list) and item and isinstance(item[0], bytes)):
            raise ValueError("a field is not (name value)")
        fields[item[0].decode("ascii", "replace")] = item[1] if len(item) == 2 else item[1:]
    for need in ("time", "word_size"):
        if need not in fields:
            raise ValueError(f"field {need} missing")
    word = fields["word_size"]
    if not (isinstance(word, bytes) and word.lstrip(b"-").isdigit()):
        raise ValueError("word_size is not an int")
    return fields


# --- the reader -----------------------------------------------------------------------


class XenopsdReader:
    """Reads a xenopsd image from a :class:`ByteSource`; never seeks.

    :meth:`records` reads the signature (:attr:`kind` becomes :data:`STRUCTURED` or
    :data:`LEGACY`) and yields the records in order, up to and including End_of_image
    (legacy: up to the QEMU record, or the end of input after the libxc image).
    """

    def __init__(self, source: ByteSource) -> None:
        self.source = source
        self.kind: str | None = None
        self._open: XenopsdRecord | None = None
        self._index = 0
        #: The guest type of a legacy image, once known (the embedded image read through
        #: :meth:`legacy_image`, or set by a caller that read it otherwise): a PV one
        #: ends with its libxc part, so nothing after it is waited for (a sender may
        #: keep the connection open, as xenopsd itself only reads on for HVM).
        self.guest: str | None = None

    # -- signature and headers ----------------------------------------------------------

    def read_signature(self) -> str:
        """The 15-byte signature: :data:`STRUCTURED` or :data:`LEGACY`."""
        off = self.source.offset
        raw = self.source.read_exact(SIGNATURE_SIZE, field="signature")
        if raw == SIGNATURE:
            self.kind = STRUCTURED
        elif raw == LEGACY_SIGNATURE:
            self.kind = LEGACY
        else:
            raise StreamMalformed(
                f"not a xenopsd image: signature {raw!r}", offset=off, field="signature"
            )
        return self.kind

    def records(self) -> Iterator[XenopsdRecord]:
        """The records; each one's body is skipped unless the consumer read it."""
        if self.kind is None:
            self.read_signature()
        parts = self._legacy() if self.kind == LEGACY else self._structured()
        for rec in parts:
            self._open = rec
            yield rec
            self._finish(rec)
            self._open = None

    def _structured(self) -> Iterator[XenopsdRecord]:
        while True:
            rec = self._read_header()
            yield rec
            if rec.type == END_OF_IMAGE:
                return

    def _read_header(self) -> XenopsdRecord:
        src = self.source
        off = src.offset
        index = self._index
        if src.at_eof():
            raise StreamTruncated(
                "the image ends without an End_of_image record",
                offset=off,
                record=index,
                field="header",
            )
        raw = self._read(HEADER.size, "header", off)
        rtype, length = HEADER.unpack(raw)
        if rtype not in NAMES:
            raise StreamMalformed(
                f"unknown record type {rtype:#x} (xenopsd: Invalid_header_type)",
                offset=off,
                record=index,
                field="header.type",
                value=rtype,
            )
        name = NAMES[rtype]
        if rtype in REFUSED:
            raise StreamMalformed(
                f"{name} record: xenopsd does not accept it (Suspend_image_failure)",
                offset=off,
                record=index,
                field="header.type",
                value=rtype,
            )
        if rtype in BODY_TYPES:
            self._check_length(rtype, length, off, f"{name}.length")
        self._index += 1
        body = None
        if rtype == XENOPS:
            body = self._read(length, "Xenops.body", off)
            try:
                parse_xenops(body)
            except ValueError as e:
                raise StreamMalformed(
                    f"Xenops record: not xenopsd's S-expression ({e})",
                    offset=off + HEADER.size,
                    record=index,
                    field="Xenops.body",
                ) from None
        return XenopsdRecord(
            offset=off,
            index=index,
            type=rtype,
            length=length,
            body_offset=off + HEADER.size,
            body=body,
        )

    def _check_length(self, rtype: int, length: int, off: int, field: str) -> None:
        name = NAMES[rtype]
        problem = None
        if length < 0:
            problem = f"{name} record: negative length {length}"
        elif rtype == QEMU_TRAD and length > QEMU_TRAD_MAX:
            problem = (
                f"Qemu_trad record: length {length} above xenopsd's limit of {QEMU_TRAD_MAX} "
                "(QEMU record length in header too large)"
            )
        elif rtype == DEMU and length == 0:
            problem = (
                "Demu record of length 0: a self-delimiting vGPU stream that only demu can "
                "frame (xenopsd hands it to demu; give it its own descriptor)"
            )
        if problem is not None:
            raise StreamMalformed(
                problem, offset=off, record=self._index, field=field, value=length
            )

    def _legacy(self) -> Iterator[XenopsdRecord]:
        src = self.source
        off = src.offset
        yield XenopsdRecord(
            offset=off, index=0, type=LIBXC_LEGACY, length=0, body_offset=off, legacy=True
        )
        off = src.offset
        if self.guest == "pv":
            return
        head = src.peek(len(LEGACY_QEMU_SIGNATURE))
        if not head:
            return  # PV: the image ends with libxc's
        if head != LEGACY_QEMU_SIGNATURE:
            raise StreamMalformed(
                f"after the libxc image: {head!r}, not the legacy QEMU record signature "
                "(xenopsd: Read invalid legacy qemu save signature)",
                offset=off,
                record=1,
                field="qemu.signature",
            )
        self._read(len(head), "qemu.signature", off)
        (length,) = _BE_U32.unpack(self._read(_BE_U32.size, "qemu.length", off))
        self._index = 1
        self._check_length(QEMU_TRAD, length, off, "qemu.length")
        yield XenopsdRecord(
            offset=off,
            index=1,
            type=QEMU_TRAD,
            length=length,
            body_offset=src.offset,
            legacy=True,
        )

    def _read(self, n: int, field: str, off: int) -> bytes:
        try:
            return self.source.read_exact(n, field=field)
        except StreamTruncated as e:
            raise StreamTruncated(
                f"{e.message}; the image ends at offset {self.source.end_offset}",
                offset=off,
                record=self._index,
                field=field,
            ) from None

    # -- bodies ---------------------------------------------------------------------

    def _check_open(self, rec: XenopsdRecord, embedded: bool) -> None:
        if rec is not self._open:
            raise UsageError(f"record {rec.index} ({rec.name}) is not the current record")
        if (rec.type in EMBEDDED) != embedded:
            what = "an embedded libxc image" if rec.type in EMBEDDED else "a body"
            raise UsageError(f"record {rec.index} ({rec.name}) holds {what}")

    def _remaining(self, rec: XenopsdRecord) -> int:
        n = rec.body_length or 0
        done = self.source.offset - rec.body_offset
        return n - done if 0 <= done <= n else 0

    def copy_body(self, rec: XenopsdRecord, write: Callable[[bytes], object]) -> None:
        """Pass the rest of the current record's body to ``write`` in steps of at most
        :data:`COPY_STEP` bytes; a body cut short raises :class:`StreamTruncated` at the
        record's header."""
        self._check_open(rec, embedded=False)
        if rec.body is not None:  # the Xenops record, read with its header
            write(rec.body)
            return
        left = self._remaining(rec)
        while left:
            step = min(left, COPY_STEP)
            write(self._read(step, f"{rec.name}.body", rec.offset))
            left -= step

    def read_body(self, rec: XenopsdRecord) -> bytes:
        """The rest of the current record's body (grown only as far as the input backs it)."""
        self._check_open(rec, embedded=False)
        if rec.body is not None:
            return rec.body
        return self._read(self._remaining(rec), f"{rec.name}.body", rec.offset)

    def legacy_image(
        self,
        rec: XenopsdRecord,
        *,
        guest: str | None = None,
        width: int | None = None,
        keep_blobs: bool = False,
        page_sink: PageSink | None = SKIP_PAGES,
    ) -> Iterator[Record]:
        """The current Libxc_legacy record's image, as legacy records, up to its end."""
        self._check_open(rec, embedded=True)
        if rec.type != LIBXC_LEGACY:
            raise UsageError(f"record {rec.index} is {rec.name}, not Libxc_legacy")
        reader = LegacyReader(self.source, guest=guest, width=width, keep_blobs=keep_blobs)
        yield from reader.records(page_sink=page_sink, one_image=True)
        self.guest = reader.guest

    def v2_image(self, rec: XenopsdRecord) -> Iterator[Element | XlHeader]:
        """The current Libxc record's v2 stream, as v2 elements, up to its END."""
        self._check_open(rec, embedded=True)
        if rec.type != LIBXC:
            raise UsageError(f"record {rec.index} is {rec.name}, not Libxc")
        yield from V2Reader(self.source, xl=False, fmt=V2_LIBXC).elements()

    def _finish(self, rec: XenopsdRecord) -> None:
        """Skip what the consumer left of ``rec``."""
        if rec.type in EMBEDDED:
            if self.source.offset == rec.body_offset:
                images = self.legacy_image(rec) if rec.type == LIBXC_LEGACY else self.v2_image(rec)
                for _ in images:
                    pass
            return
        left = self._remaining(rec)
        while left:
            step = min(left, COPY_STEP)
            try:
                self.source.skip(step, field=f"{rec.name}.body")
            except StreamTruncated as e:
                raise StreamTruncated(
                    f"{rec.name} record cut short: {e.message}",
                    offset=rec.offset,
                    record=rec.index,
                    field=f"{rec.name}.body",
                ) from None
            left -= step


def is_xenopsd(head: bytes) -> bool:
    """``head`` (the first 15 bytes or fewer) starts a xenopsd image of either kind."""
    return len(head) >= SIGNATURE_SIZE and head[:SIGNATURE_SIZE] in (SIGNATURE, LEGACY_SIGNATURE)


# --- the writer -----------------------------------------------------------------------


class XenopsdWriter:
    """Writes a xenopsd image to ``out``; an embedded image is written by the caller
    straight to ``out`` after :meth:`header` (flush this writer's ``out`` first if the
    caller writes through another object)."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out

    def _put(self, data: bytes) -> None:
        self.out.write(data)

    def signature(self, kind: str = STRUCTURED) -> None:
        """``XenSavedDomv2-\\n`` or, for :data:`LEGACY`, ``XenSavedDomain\\n``."""
        if kind not in (STRUCTURED, LEGACY):
            raise UsageError(f"unknown xenopsd image kind {kind!r}")
        self._put(SIGNATURE if kind == STRUCTURED else LEGACY_SIGNATURE)

    def header(self, rtype: int, length: int = 0) -> None:
        """One ``(type, length)`` header."""
        if rtype not in NAMES:
            raise UsageError(f"unknown xenopsd record type {rtype:#x}")
        self._put(HEADER.pack(rtype, length))

    def record(self, rtype: int, body: bytes) -> None:
        """A header declaring ``len(body)`` and the body."""
        if rtype not in BODY_TYPES:
            raise UsageError(f"{NAMES.get(rtype, hex(rtype))} records have no length-framed body")
        if rtype == QEMU_TRAD and len(body) > QEMU_TRAD_MAX:
            raise UsageError(f"a Qemu_trad body above {QEMU_TRAD_MAX} bytes: xenopsd refuses it")
        self.header(rtype, len(body))
        self._put(body)

    def legacy_qemu(self, data: bytes) -> None:
        """The legacy image's QEMU record: signature, big-endian length, data."""
        self._put(LEGACY_QEMU_SIGNATURE + _BE_U32.pack(len(data)) + data)

    def end(self) -> None:
        """The End_of_image footer."""
        self.header(END_OF_IMAGE, 0)
