#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris) of the legacy reader through ``inspect``.

Input that starts (after the mode byte) with a xenopsd signature goes through
``xlpy inspect``'s xenopsd path instead: the record reader and the libxc streams inside.

The first input byte picks the target: below 0x80 it picks the
``--width``/``--guest`` overrides and the rest is the stream for ``inspect`` (which
checks compressed checkpoints with the compression decoder); from 0x80 on the
second byte is a page count and the rest a compressed payload for the decoder
itself (``check_structure``), where short inputs explore run lists quickly.
Any exception that is not an :class:`~xlpy.errors.XlpyError` is a bug (libFuzzer
then writes the input as ``crash-*``): fix it and add the input to ``tests/streams/``.
Seeds: every crafted stream in ``tests/streams/`` plus complete generated images,
written to the corpus folder on first use.

Usage (``make fuzz`` does this): ``python tests/fuzz/fuzz_reader.py [libFuzzer flags]``;
the corpus folder defaults to ``.cache/fuzz/reader``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sys
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports():
    from xlpy.errors import StreamMalformed, XlpyError
    from xlpy.stream import xenopsd_inspect

    # inspect imports the decoder lazily: import it here so that it is instrumented.
    from xlpy.stream.legacy.compression import check_structure
    from xlpy.stream.legacy.inspect import inspect_stream, render_text
    from xlpy.stream.source import ByteSource
    from xlpy.stream.xenopsd import SIGNATURE_SIZE, is_xenopsd

WIDTHS = (None, 4, 8)
GUESTS = (None, "pv", "hvm")


def one_input(data: bytes) -> None:
    if not data:
        return
    mode = data[0]
    if mode >= 0x80:
        if len(data) > 1:
            with contextlib.suppress(StreamMalformed):
                check_structure(data[2:], data[1] % 16 + 1)
        return
    width, guest = WIDTHS[mode % 3], GUESTS[(mode // 3) % 3]
    source = ByteSource(io.BytesIO(data[1:]))
    try:
        if is_xenopsd(data[1 : 1 + SIGNATURE_SIZE]):
            image = xenopsd_inspect.inspect_image(source, width=width, guest=guest)
            xenopsd_inspect.render_text(image)
            json.dumps(image.to_json())
            return
        summary = inspect_stream(source, width=width, guest=guest)
    except XlpyError:
        return
    render_text(summary)
    json.dumps(summary.to_json())


def seeds() -> list[bytes]:
    from tests.streams import build as B

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
    images += generated()
    out = [b"\0" + img for img in images]
    out += [b"\0" + p.read_bytes() for p in sorted((TESTS / "streams").glob("*.bin"))]
    # The decoder alone: EMPTY, FULL and run-list pages.
    out += [b"\x80\x02\x00\x80" + bytes(4096), b"\x80\x00" + b"\x7f" + bytes(508) + b"\xff" * 7]
    return out


def generated() -> list[bytes]:
    """Small streams from the sender profiles (what ``xlpy gen`` writes)."""
    from xlpy.guest import MIN_PAGES, GuestSpec
    from xlpy.stream.legacy.senders import SenderProfile, generate

    cases = [
        (SenderProfile(sender="xen-4.3", toolstack="xl"), "hvm", 8),
        (SenderProfile(sender="xen-4.0", toolstack="xend", width=4), "pv", 4),
        (SenderProfile(sender="xen-4.5", toolstack="xenserver-classic", trailer="foreign"),
         "hvm", 8),
        (SenderProfile(sender="xen-4.3", toolstack="xl", mode="remus", checkpoints=3,
                       compress=True), "pv", 8),
        (SenderProfile(sender="xen-4.2", toolstack="xend", mode="remus", checkpoints=2),
         "hvm", 8),
    ]  # fmt: skip
    out = []
    for prof, kind, gw in cases:
        buf = io.BytesIO()
        generate(prof, GuestSpec(kind=kind, pages=MIN_PAGES[kind] + 3, seed=3, guest_width=gw),
                 buf)  # fmt: skip
        out.append(buf.getvalue())
    return out + xenopsd_images()


def xenopsd_images() -> list[bytes]:
    """Small xenopsd images of both generations (what ``xlpy gen --toolstack xenopsd``)."""
    from xlpy.guest import MIN_PAGES, GuestSpec
    from xlpy.stream.legacy.senders import SenderProfile
    from xlpy.stream.xenopsd import SWTPM, VARSTORED
    from xlpy.stream.xenopsd_gen import generate_image

    out = []
    for kind, libxc, guest in (
        ("xenopsd", "legacy", "hvm"),
        ("xenopsd", "v2", "pv"),
        ("xenopsd-legacy", "legacy", "hvm"),
    ):
        buf = io.BytesIO()
        spec = GuestSpec(kind=guest, pages=MIN_PAGES[guest] + 3, seed=4)  # type: ignore[arg-type]
        extras = {VARSTORED: 40, SWTPM: 8} if kind == "xenopsd" else {}
        generate_image(SenderProfile(sender="xen-4.0"), spec, buf, kind=kind, libxc=libxc,
                       extras=extras)  # fmt: skip
        out.append(buf.getvalue())
    return out


def main() -> None:
    args = list(sys.argv)
    if not any(not a.startswith("-") for a in args[1:]):
        corpus = ROOT / ".cache" / "fuzz" / "reader"
        corpus.mkdir(parents=True, exist_ok=True)
        for seed in seeds():  # named by content: adds new seeds, keeps what was found
            name = corpus / f"seed-{hashlib.sha1(seed).hexdigest()}"
            if not name.exists():
                name.write_bytes(seed)
        args.append(str(corpus))
    if not any(a.startswith("-timeout=") for a in args):
        args.append("-timeout=10")
    atheris.Setup(args, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
