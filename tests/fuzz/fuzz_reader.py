#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris) of the legacy reader through ``inspect``.

The first input byte picks the ``--width``/``--guest`` overrides, the rest is
the stream.  Any exception that is not an :class:`~xlpy.errors.XlpyError` is a
bug (libFuzzer then writes the input as ``crash-*``): fix it and add the input
to ``tests/streams/``.  Seeds: every crafted stream in ``tests/streams/`` plus
complete generated images, written to the corpus folder on first use.

Usage (``make fuzz`` does this): ``python tests/fuzz/fuzz_reader.py [libFuzzer flags]``;
the corpus folder defaults to ``.cache/fuzz/reader``.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports():
    from xlpy.errors import XlpyError
    from xlpy.inspect import inspect_stream, render_text
    from xlpy.stream.source import ByteSource

WIDTHS = (None, 4, 8)
GUESTS = (None, "pv", "hvm")


def one_input(data: bytes) -> None:
    if not data:
        return
    mode = data[0]
    width, guest = WIDTHS[mode % 3], GUESTS[(mode // 3) % 3]
    try:
        summary = inspect_stream(ByteSource(io.BytesIO(data[1:])), width=width, guest=guest)
    except XlpyError:
        return
    render_text(summary)
    json.dumps(summary.to_json())


def seeds() -> list[bytes]:
    from streams import build as B

    images = [
        B.hvm_image(),
        B.hvm_image(4),
        B.xl_header() + B.hvm_image(),
        B.xend_header() + B.hvm_image(qemu=B.qemu_to_eof()),
        B.hvm_image(qemu=B.qemu_xenserver()) + b"trailer",
        B.pv_image(),
        B.pv_image(4, 4),
        B.pv_image(8, 4, xcnt=48),
    ]
    out = [b"\0" + img for img in images]
    out += [b"\0" + p.read_bytes() for p in sorted((TESTS / "streams").glob("*.bin"))]
    return out


def main() -> None:
    args = list(sys.argv)
    if not any(not a.startswith("-") for a in args[1:]):
        corpus = ROOT / ".cache" / "fuzz" / "reader"
        if not corpus.is_dir():
            corpus.mkdir(parents=True)
            for i, s in enumerate(seeds()):
                (corpus / f"seed-{i:03d}").write_bytes(s)
        args.append(str(corpus))
    if not any(a.startswith("-timeout=") for a in args):
        args.append("-timeout=10")
    atheris.Setup(args, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
