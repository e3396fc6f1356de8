#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris) of the migration-v2 reader and its record decoders.

The first input byte picks the framing the caller asserts (``xl``: detect, yes, no)
and the format (detect, libxc, libxl); the rest is the stream, read element by element
with every record's body decoded (:meth:`~xlpy.stream.v2.records.V2Record.decode`).
The crash rule, corpus folder and main are :mod:`tests.fuzz.harness`'s.  Seeds: small
written and converted v2 streams and the crafted legacy streams.

Usage (``make fuzz`` runs every target): ``python tests/fuzz/fuzz_v2_reader.py
[libFuzzer flags]``; the corpus folder defaults to ``.cache/fuzz/v2_reader``.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.fuzz import harness

with harness.instrumented_imports():
    from xlpy.stream.source import ByteSource
    from xlpy.stream.v2.reader import V2Reader
    from xlpy.stream.v2.records import V2Record

XL = (None, True, False)
FORMATS = (None, "libxc", "libxl")


@harness.stream_errors_allowed
def one_input(data: bytes) -> None:
    """Read ``data[1:]`` as v2 with the framing and format ``data[0]`` picks."""
    if not data:
        return
    mode = data[0] % (len(XL) * len(FORMATS))
    reader = V2Reader(
        ByteSource(io.BytesIO(data[1:])), xl=XL[mode % len(XL)], fmt=FORMATS[mode // len(XL)]
    )
    for el in reader.elements():
        if isinstance(el, V2Record):
            el.decode()


def seeds() -> list[bytes]:
    """The v2 streams detected (mode 0) and the crafted streams."""
    return [b"\0" + s for s in (*harness.v2_images(), *harness.crafted_streams())]


if __name__ == "__main__":
    harness.main("v2_reader", one_input, seeds)
