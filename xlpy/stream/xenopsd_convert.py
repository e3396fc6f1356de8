"""Upgrade a xenopsd suspend image to a structured one with a v2 Libxc record.

What xenopsd does at restore time through Xen's ``convert-legacy-stream --skip-qemu``,
done once, in one pass and streaming (pipe in, pipe out):

* ``XenSavedDomain\\n`` (legacy) → ``XenSavedDomv2-\\n``, a Xenops record (written now,
  with this writer's word size, as xenopsd's ``Xenops_record.make``), Libxc holding the
  libxc part converted to v2 (libxc format, no QEMU record: byte-identical to Xen's
  converter with ``--skip-qemu``), the ``QemuDeviceModelRecord\\n`` record as Qemu_trad,
  End_of_image;
* structured with Libxc_legacy → the same records with Libxc in its place; the
  ``DeviceModelRecord0002`` record libxc read inside the legacy image becomes a
  Qemu_trad record right after it (xenopsd's restore loop takes records in any order);
* every other record (Xenops, Qemu_trad, Demu, Varstored, Swtpm, a Libxc record that is
  already v2) is copied byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import BinaryIO

from xlpy.errors import StreamMalformed
from xlpy.stream import xenopsd as X
from xlpy.stream.convert import ConvertReport, legacy_to_v2
from xlpy.stream.legacy.records import XlHeader
from xlpy.stream.source import ByteSource
from xlpy.stream.v2 import format as V2F
from xlpy.stream.v2.records import DomainHeader, Element, ImageHeader, V2Record

#: The word size xenopsd writes in its Xenops record (``Sys.word_size`` of the writer).
WORD_SIZE = 64


@dataclass(slots=True)
class UpgradeReport:
    """What :func:`upgrade` did: the input's kind, the libxc conversion, the records."""

    kind: str = ""
    libxc: ConvertReport | None = None
    records: list[str] = field(default_factory=list)


def _v2_bytes(el: Element | XlHeader) -> bytes:
    """The wire bytes of one element of a bare libxc v2 stream (read as it was)."""
    if isinstance(el, ImageHeader):
        return V2F.IHDR_FORMAT.pack(
            el.marker, el.id, el.version, el.options, el.reserved1, el.reserved2
        )
    if isinstance(el, DomainHeader):
        return V2F.DHDR_FORMAT.pack(el.type, el.page_shift, el.reserved, el.xen_major, el.xen_minor)
    assert isinstance(el, V2Record)
    return V2F.RHDR_FORMAT.pack(el.type, len(el.body)) + el.body + el.padding


def upgrade(
    source: ByteSource,
    out: BinaryIO,
    *,
    width: int | None = None,
    guest: str | None = None,
    time: str | None = None,
) -> UpgradeReport:
    """Convert the xenopsd image on ``source`` into a structured image with a Libxc record.

    ``width``/``guest`` as for :func:`~xlpy.stream.convert.legacy_to_v2` (xenopsd passes
    ``--width 32``; the stream's own width wins).  ``time`` is the Xenops record's time
    for a legacy input (default: now, RFC 3339).  Raises the reader's typed errors; a
    QEMU record xenopsd would refuse (over 1 MiB) is :class:`StreamMalformed`.
    """
    reader = X.XenopsdReader(source)
    w = X.XenopsdWriter(out)
    report = UpgradeReport(kind=reader.read_signature())
    w.signature(X.STRUCTURED)
    if report.kind == X.LEGACY:
        stamp = time or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        w.record(X.XENOPS, X.xenops_record(time=stamp, word_size=WORD_SIZE))
        report.records.append("Xenops")
    for rec in reader.records():
        if rec.type == X.LIBXC_LEGACY:
            w.header(X.LIBXC)
            out.flush()
            conv = legacy_to_v2(
                source, out, fmt="libxc", qemu=False, width=width, guest=guest, one_image=True
            )
            report.libxc = conv
            report.records.append("Libxc")
            if conv.qemu is not None:
                if len(conv.qemu.data) > X.QEMU_TRAD_MAX:
                    raise StreamMalformed(
                        f"the QEMU record inside Libxc_legacy has {len(conv.qemu.data)} bytes, "
                        f"above xenopsd's Qemu_trad limit of {X.QEMU_TRAD_MAX}",
                        offset=conv.qemu.offset,
                        field="Libxc_legacy.qemu.length",
                    )
                w.record(X.QEMU_TRAD, conv.qemu.data)
                report.records.append("Qemu_trad")
            continue
        report.records.append(rec.name)
        if rec.type == X.LIBXC:
            w.header(X.LIBXC)
            for el in reader.v2_image(rec):
                out.write(_v2_bytes(el))
        elif rec.type == X.END_OF_IMAGE:
            w.end()
        else:
            w.header(rec.type, rec.length)
            reader.copy_body(rec, out.write)
    if report.kind == X.LEGACY:
        w.end()
        report.records.append("End_of_image")
    out.flush()
    return report
