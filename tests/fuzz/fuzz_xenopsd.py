#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris) of the xenopsd image reader and ``xlpy convert``'s
xenopsd upgrade.

The first input byte picks the consumer and the guest override: even, the image's
records are read one by one (embedded libxc images as legacy records or v2 elements,
other bodies read whole); odd, the image is upgraded to a structured one with a v2
Libxc record, into a :class:`io.BytesIO`.  The crash rule, corpus folder and main are
:mod:`tests.fuzz.harness`'s.  Seeds: small xenopsd images of both generations.

Usage (``make fuzz`` runs every target): ``python tests/fuzz/fuzz_xenopsd.py
[libFuzzer flags]``; the corpus folder defaults to ``.cache/fuzz/xenopsd``.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.fuzz import harness

with harness.instrumented_imports():
    from xlpy.stream import xenopsd as X
    from xlpy.stream.source import ByteSource
    from xlpy.stream.xenopsd_convert import upgrade

GUESTS = (None, "pv", "hvm")


def _read_records(source: ByteSource, guest: str | None) -> None:
    reader = X.XenopsdReader(source)
    for rec in reader.records():
        if rec.type == X.LIBXC_LEGACY:
            for _ in reader.legacy_image(rec, guest=guest, keep_blobs=True):
                pass
        elif rec.type == X.LIBXC:
            for _ in reader.v2_image(rec):
                pass
        elif rec.body_length:
            reader.read_body(rec)


@harness.stream_errors_allowed
def one_input(data: bytes) -> None:
    """Read or upgrade the image ``data[1:]`` as ``data[0]`` picks."""
    if not data:
        return
    mode = data[0] % (2 * len(GUESTS))
    source, guest = ByteSource(io.BytesIO(data[1:])), GUESTS[mode // 2]
    if mode % 2 == 0:
        _read_records(source, guest)
    else:
        upgrade(source, io.BytesIO(), guest=guest, time="2024-01-01T00:00:00Z")


def seeds() -> list[bytes]:
    """Every image read and upgraded (guest detected)."""
    return harness.with_modes(list(harness.xenopsd_images()), 2)


if __name__ == "__main__":
    harness.main("xenopsd", one_input, seeds)
