"""Summarise a xenopsd suspend image: its records and the libxc stream inside.

The table of records (offset, type, declared length) is what xenopsd's own
``suspend_image_viewer`` lists; inside a Libxc_legacy record (or a legacy image's
libxc part) the legacy stream summary of :mod:`xlpy.stream.legacy.inspect`, inside a
Libxc record the tolerant v2 check of :mod:`xlpy.stream.v2.verify`.  As
:func:`xlpy.stream.legacy.inspect.inspect_stream`, a damaged image keeps everything read
before the fault, and the error says where.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from xlpy.errors import StreamError, error_json
from xlpy.stream import xenopsd as X
from xlpy.stream.legacy.inspect import Summary, inspect_stream, keeping_error, status_line
from xlpy.stream.legacy.inspect import render_text as render_legacy
from xlpy.stream.source import ByteSource
from xlpy.stream.v2.records import LIBXC
from xlpy.stream.v2.verify import VerifyReport, verify_stream


@dataclass(slots=True)
class RecordSummary:
    """One record, with the summary of the libxc stream it holds, if any."""

    record: X.XenopsdRecord
    legacy: Summary | None = None
    v2: VerifyReport | None = None

    def to_json(self) -> dict[str, Any]:
        """One element of ``records`` in ``xlpy inspect --json``."""
        out = self.record.to_json()
        if self.record.type == X.XENOPS and self.record.body is not None:
            out["xenops"] = _xenops_fields(self.record.body)
        if self.legacy is not None:
            out["stream"] = self.legacy.to_json()
        elif self.v2 is not None:
            out["stream"] = self.v2.to_json()
        return out


def _xenops_fields(body: bytes) -> dict[str, str]:
    """The Xenops record's atom fields (``time``, ``word_size``, ``vm_str``) as text."""
    fields = X.parse_xenops(body)
    return {k: v.decode("utf-8", "replace") for k, v in fields.items() if isinstance(v, bytes)}


@dataclass(slots=True)
class ImageSummary:
    """What :func:`inspect_image` found; ``error`` is where reading stopped, if it did."""

    kind: str | None = None
    records: list[RecordSummary] = field(default_factory=list)
    end_offset: int = 0
    error: StreamError | None = None

    @property
    def complete(self) -> bool:
        """Read to the end without error (structured: through End_of_image)."""
        if self.error is not None or not self.records:
            return False
        return self.kind == X.LEGACY or self.records[-1].record.type == X.END_OF_IMAGE

    def to_json(self) -> dict[str, Any]:
        """The ``xlpy inspect --json`` object of a xenopsd image."""
        e = self.error
        return {
            "format": "xenopsd",
            "kind": self.kind,
            "complete": self.complete,
            "error": None if e is None else error_json(e),
            "records": [r.to_json() for r in self.records],
            "end_offset": self.end_offset,
        }


def inspect_image(
    source: ByteSource, *, width: int | None = None, guest: str | None = None
) -> ImageSummary:
    """Read the xenopsd image on ``source`` and summarise it (errors in ``error``).

    ``width``/``guest`` are for the legacy libxc stream, as for ``inspect_stream``; a
    :class:`~xlpy.errors.UsageError` from there (guest undecidable) propagates.
    """
    reader = X.XenopsdReader(source)
    summary = ImageSummary()
    with keeping_error(summary, source):
        for rec in reader.records():
            part = RecordSummary(rec)
            summary.records.append(part)
            error: StreamError | None = None
            if rec.type == X.LIBXC_LEGACY:
                part.legacy = inspect_stream(source, width=width, guest=guest, one_image=True)
                error = part.legacy.error
            elif rec.type == X.LIBXC:
                part.v2 = verify_stream(source, xl=False, fmt=LIBXC)
                error = part.v2.error if isinstance(part.v2.error, StreamError) else None
            if error is not None:
                summary.error = error
                break
    summary.kind = reader.kind
    return summary


def render_text(s: ImageSummary) -> str:
    """The human-readable ``xlpy inspect`` report of a xenopsd image."""
    sig = {X.STRUCTURED: X.SIGNATURE, X.LEGACY: X.LEGACY_SIGNATURE}.get(s.kind or "", b"")
    lines = [f"xenopsd image, {s.kind or 'unknown'} ({sig!r}), {len(s.records)} records"]
    lines.append(f"{'offset':>12}  {'type':>6}  {'length':>12}  record")
    for part in s.records:
        rec = part.record
        note = "" if not rec.legacy else "  (legacy image part, no header)"
        lines.append(f"{rec.offset:>12}  {rec.type:#06x}  {rec.length:>12}  {rec.name}{note}")
        if rec.type == X.XENOPS and rec.body is not None:
            fields = _xenops_fields(rec.body)
            lines.append("      " + ", ".join(f"{k} {v}" for k, v in fields.items()))
        if part.legacy is not None:
            lines += ["      " + line for line in render_legacy(part.legacy).splitlines()]
        elif part.v2 is not None:
            r = part.v2
            state = "valid" if r.valid else "INVALID"
            lines.append(
                f"      {state} v2 libxc stream: guest {r.guest or '?'}, image version "
                f"{r.version or '?'}, {r.records} records, {r.pages} pages"
            )
    lines.append(status_line(s))
    return "\n".join(lines)
