#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris) of the migration-v2 verifier (``xlpy verify``).

The first input byte picks tolerant or strict checking and the framing the caller
asserts; the rest is the stream, verified whole and its report rendered as JSON.  A
fault the verifier reports is a verdict; the crash rule, corpus folder and main are
:mod:`tests.fuzz.harness`'s.  Seeds: small written and converted v2 streams.

Usage (``make fuzz`` runs every target): ``python tests/fuzz/fuzz_v2_verify.py
[libFuzzer flags]``; the corpus folder defaults to ``.cache/fuzz/v2_verify``.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.fuzz import harness

with harness.instrumented_imports():
    from xlpy.stream.source import ByteSource
    from xlpy.stream.v2.verify import verify_stream

XL = (None, True, False)


@harness.stream_errors_allowed
def one_input(data: bytes) -> None:
    """Verify ``data[1:]`` in the mode and framing ``data[0]`` picks."""
    if not data:
        return
    mode = data[0] % (2 * len(XL))
    report = verify_stream(ByteSource(io.BytesIO(data[1:])), strict=mode % 2 == 1, xl=XL[mode // 2])
    json.dumps(report.to_json())


def seeds() -> list[bytes]:
    """Every v2 stream, tolerant and strict (framing detected)."""
    return harness.with_modes(list(harness.v2_images()), 2)


if __name__ == "__main__":
    harness.main("v2_verify", one_input, seeds)
