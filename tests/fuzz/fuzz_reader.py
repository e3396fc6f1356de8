#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris) of the legacy reader through ``inspect``.

Input that starts (after the mode byte) with a xenopsd signature goes through
``xlpy inspect``'s xenopsd path instead: the record reader and the libxc streams inside.

The first input byte picks the target: below 0x80 it picks the
``--width``/``--guest`` overrides and the rest is the stream for ``inspect`` (which
checks compressed checkpoints with the compression decoder); from 0x80 on the
second byte is a page count and the rest a compressed payload for the decoder
itself (``check_structure``), where short inputs explore run lists quickly.
The crash rule, corpus folder and main are :mod:`tests.fuzz.harness`'s.
Seeds: every crafted stream in ``tests/streams/`` plus complete generated images.

Usage (``make fuzz`` runs every target): ``python tests/fuzz/fuzz_reader.py [libFuzzer
flags]``; the corpus folder defaults to ``.cache/fuzz/reader``.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.fuzz import harness

with harness.instrumented_imports():
    from xlpy.stream import xenopsd_inspect

    # inspect imports the decoder lazily: import it here so that it is instrumented.
    from xlpy.stream.legacy.compression import check_structure
    from xlpy.stream.legacy.inspect import inspect_stream, render_text
    from xlpy.stream.source import ByteSource
    from xlpy.stream.xenopsd import SIGNATURE_SIZE, is_xenopsd

WIDTHS = (None, 4, 8)
GUESTS = (None, "pv", "hvm")


@harness.stream_errors_allowed
def one_input(data: bytes) -> None:
    """Fuzz inspect (legacy or xenopsd) or, from mode byte 0x80 on, the decoder alone."""
    if not data:
        return
    mode = data[0]
    if mode >= 0x80:
        if len(data) > 1:
            check_structure(data[2:], data[1] % 16 + 1)
        return
    width, guest = WIDTHS[mode % 3], GUESTS[(mode // 3) % 3]
    source = ByteSource(io.BytesIO(data[1:]))
    if is_xenopsd(data[1 : 1 + SIGNATURE_SIZE]):
        image = xenopsd_inspect.inspect_image(source, width=width, guest=guest)
        xenopsd_inspect.render_text(image)
        json.dumps(image.to_json())
        return
    summary = inspect_stream(source, width=width, guest=guest)
    render_text(summary)
    json.dumps(summary.to_json())


def seeds() -> list[bytes]:
    """Complete images and crafted streams behind mode 0, and decoder inputs."""
    images = [*harness.legacy_images(), *harness.xenopsd_images(), *harness.crafted_streams()]
    out = [b"\0" + img for img in images]
    # The decoder alone: EMPTY, FULL and run-list pages.
    out += [b"\x80\x02\x00\x80" + bytes(4096), b"\x80\x00" + b"\x7f" + bytes(508) + b"\xff" * 7]
    return out


if __name__ == "__main__":
    harness.main("reader", one_input, seeds)
