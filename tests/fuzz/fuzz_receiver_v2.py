#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris) of the simulated migration-v2 receiver (``xen-4.17``).

The first input byte picks libxc's ``checkpointed_stream`` (the toolstack's default,
PLAIN, REMUS, COLO); the rest is the stream, restored into an in-memory domain
(:class:`~xlpy.receiver.domains.mem.MemDomain`).  A failed restore is a verdict; the
crash rule, corpus folder and main are :mod:`tests.fuzz.harness`'s.  Seeds: small
written and converted v2 streams.

Usage (``make fuzz`` runs every target): ``python tests/fuzz/fuzz_receiver_v2.py
[libFuzzer flags]``; the corpus folder defaults to ``.cache/fuzz/receiver_v2``.
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
    from xlpy.receiver.v2 import V2Restore
    from xlpy.stream.source import ByteSource

CHECKPOINTED = (None, 0, 1, 2)


@harness.stream_errors_allowed
def one_input(data: bytes) -> None:
    """Restore ``data[1:]`` as xen-4.17 with the stream type ``data[0]`` picks."""
    if not data:
        return
    request = ReceiveRequest(
        generation="xen-4.17",
        out=Path("unused"),  # the in-memory domain writes nothing
        checkpointed=CHECKPOINTED[data[0] % len(CHECKPOINTED)],
    )
    V2Restore(ByteSource(io.BytesIO(data[1:])), request, MemDomain()).run()


def seeds() -> list[bytes]:
    """Every v2 stream with the default and the REMUS stream type."""
    return [bytes([m]) + s for s in harness.v2_images() for m in (0, 2)]


if __name__ == "__main__":
    harness.main("receiver_v2", one_input, seeds)
