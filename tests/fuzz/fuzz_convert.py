#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris) of ``xlpy convert``: legacy to v2, into memory.

The first input byte picks the output format (libxc, libxl), whether the QEMU record
is kept and the guest override; the rest is the legacy stream, converted into a
:class:`io.BytesIO`.  A stream the converter refuses is a verdict; the crash rule,
corpus folder and main are :mod:`tests.fuzz.harness`'s.  Seeds: complete legacy images
and the crafted streams.

Usage (``make fuzz`` runs every target): ``python tests/fuzz/fuzz_convert.py
[libFuzzer flags]``; the corpus folder defaults to ``.cache/fuzz/convert``.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.fuzz import harness

with harness.instrumented_imports():
    from xlpy.stream.convert import legacy_to_v2
    from xlpy.stream.legacy import compression  # noqa: F401  (reached through convert)
    from xlpy.stream.source import ByteSource

FORMATS = ("libxc", "libxl")
GUESTS = (None, "pv", "hvm")


@harness.stream_errors_allowed
def one_input(data: bytes) -> None:
    """Convert ``data[1:]`` with the options ``data[0]`` picks."""
    if not data:
        return
    mode = data[0] % (len(FORMATS) * 2 * len(GUESTS))
    legacy_to_v2(
        ByteSource(io.BytesIO(data[1:])),
        io.BytesIO(),
        fmt=FORMATS[mode % 2],
        qemu=(mode // 2) % 2 == 0,
        guest=GUESTS[mode // 4],
    )


def seeds() -> list[bytes]:
    """Every legacy image to both formats (guest detected), and the crafted streams."""
    return harness.with_modes([*harness.legacy_images(), *harness.crafted_streams()], 2)


if __name__ == "__main__":
    harness.main("convert", one_input, seeds)
