#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris) of the simulated legacy receivers.

The first input byte picks the receiver generation (every legacy one, 4.0 to 4.5) and
the guest override; the rest is the stream, restored into an in-memory domain
(:class:`~xlpy.receiver.domains.mem.MemDomain`).  A failed restore is a verdict (the
receiver reports it in its outcome); the crash rule, corpus folder and main are
:mod:`tests.fuzz.harness`'s.  Seeds: the crafted streams and complete legacy images.

Usage (``make fuzz`` runs every target): ``python tests/fuzz/fuzz_receiver.py
[libFuzzer flags]``; the corpus folder defaults to ``.cache/fuzz/receiver``.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.fuzz import harness

with harness.instrumented_imports():
    from xlpy.receiver.domains import ReceiveRequest
    from xlpy.receiver.domains.mem import MemDomain
    from xlpy.receiver.generations import GENERATIONS
    from xlpy.receiver.legacy import Restore
    from xlpy.stream.legacy import compression  # noqa: F401  (reached through Restore)
    from xlpy.stream.source import ByteSource

GENERATIONS_LEGACY = [g.name for g in GENERATIONS.values() if g.stream_format == "legacy"]
GUESTS = (None, "pv", "hvm")
MODES = len(GENERATIONS_LEGACY) * len(GUESTS)


@harness.stream_errors_allowed
def one_input(data: bytes) -> None:
    """Restore ``data[1:]`` with the generation and guest that ``data[0]`` picks."""
    if not data:
        return
    mode = data[0] % MODES
    request = ReceiveRequest(
        generation=GENERATIONS_LEGACY[mode % len(GENERATIONS_LEGACY)],
        out=Path("unused"),  # the in-memory domain writes nothing
        guest=GUESTS[mode // len(GENERATIONS_LEGACY)],
    )
    Restore(ByteSource(io.BytesIO(data[1:])), request, MemDomain()).run()


def seeds() -> list[bytes]:
    """Every image for a 4.0 and a 4.3.1 receiver (detected guest), and the crafted streams."""
    images = [*harness.legacy_images(), *harness.crafted_streams()]
    picks = [bytes([GENERATIONS_LEGACY.index(g)]) for g in ("xen-4.0", "xen-4.3.1")]
    return [p + img for img in images for p in picks]


if __name__ == "__main__":
    harness.main("receiver", one_input, seeds)
