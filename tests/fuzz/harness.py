"""What every fuzz target shares: the crash rule, the seed corpora and the atheris main.

A target module (``tests/fuzz/fuzz_*.py``, run as a script: it puts the checkout on
``sys.path`` first) imports what it fuzzes inside :func:`instrumented_imports` and
defines ``one_input(data)`` and ``seeds()``; its ``__main__`` calls :func:`main`.  This
module imports no xlpy code but the errors at import time (the seed builders import
theirs when called, after the target's instrumented imports), so everything a target
reaches is instrumented.

The crash rule (:func:`stream_errors_allowed`): hostile input may fail with any
:class:`~xlpy.errors.XlpyError`; any other exception is a bug (libFuzzer then writes
the input as ``crash-*``): fix it and add the input to ``tests/streams/``.

:func:`main` runs libFuzzer on ``.cache/fuzz/<target>`` (seeded on first use, seeds
named by content so that what was found is kept) with a 10 s per-input timeout;
``tests/test_fuzz_targets.py`` runs every target's ``one_input`` over its seeds without
atheris, so that no target rots.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

# Loaded before a target's instrumented imports, so never instrumented: numpy's own
# code is coverage noise to the fuzzer and instrumenting it took seconds per target.
import numpy  # noqa: F401

from xlpy.errors import XlpyError  # cheap: imports nothing else of xlpy

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"

OneInput = Callable[[bytes], None]


def instrumented_imports() -> AbstractContextManager[object]:
    """atheris's coverage instrumentation of the modules first imported inside; nothing
    without atheris (the suite runs the targets' ``one_input`` without it)."""
    try:
        import atheris
    except ImportError:
        return contextlib.nullcontext()
    return atheris.instrument_imports()  # type: ignore[no-any-return]


def stream_errors_allowed(body: OneInput) -> OneInput:
    """``body`` as a fuzz target: an :class:`XlpyError` is a verdict, anything else a crash."""

    @functools.wraps(body)
    def one_input(data: bytes) -> None:
        with contextlib.suppress(XlpyError):
            body(data)

    return one_input


def crafted_streams() -> list[bytes]:
    """Every crafted broken stream in ``tests/streams/``."""
    return [p.read_bytes() for p in sorted((TESTS / "streams").glob("*.bin"))]


@functools.cache
def legacy_images() -> tuple[bytes, ...]:
    """Hand-built and generated legacy streams (what ``xlpy gen`` writes), complete."""
    from tests.streams import build as B
    from xlpy.guest import MIN_PAGES, GuestSpec
    from xlpy.stream.legacy.senders import SenderProfile, generate

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
    for prof, kind, gw in cases:
        buf = io.BytesIO()
        spec = GuestSpec(kind=kind, pages=MIN_PAGES[kind] + 3, seed=3, guest_width=gw)  # type: ignore[arg-type]
        generate(prof, spec, buf)
        images.append(buf.getvalue())
    return tuple(images)


@functools.cache
def v2_images() -> tuple[bytes, ...]:
    """Small valid v2 streams of every framing, written and converted from legacy ones."""
    from tests.helpers.v2_streams import v2_sample
    from xlpy.stream.convert import legacy_to_v2
    from xlpy.stream.source import ByteSource

    out = [
        v2_sample(guest=guest, width=width, version=version, framing=framing,
                  xenstore=framing != "libxc", checkpoints=checkpoints).data
        for guest, width, version, framing, checkpoints in (
            ("pv", 8, 3, "libxc", 0),
            ("pv", 4, 2, "libxl", 0),
            ("hvm", 8, 3, "xl", 0),
            ("hvm", 8, 3, "libxl", 2),
        )
    ]  # fmt: skip
    for legacy in legacy_images()[5:8]:
        for fmt in ("libxc", "libxl"):
            buf = io.BytesIO()
            legacy_to_v2(ByteSource(io.BytesIO(legacy)), buf, fmt=fmt)
            out.append(buf.getvalue())
    return tuple(out)


@functools.cache
def xenopsd_images() -> tuple[bytes, ...]:
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
    return tuple(out)


def with_modes(streams: list[bytes], modes: int) -> list[bytes]:
    """Each stream once per mode byte ``0..modes-1`` (targets whose first byte picks options)."""
    return [bytes([m]) + s for s in streams for m in range(modes)]


def main(target: str, one_input: OneInput, seeds: Callable[[], list[bytes]]) -> None:
    """Run libFuzzer on ``target`` with the command line's flags (``make fuzz`` passes
    ``-max_total_time``); the corpus folder defaults to ``.cache/fuzz/<target>``."""
    import atheris

    args = list(sys.argv)
    if not any(not a.startswith("-") for a in args[1:]):
        corpus = ROOT / ".cache" / "fuzz" / target
        corpus.mkdir(parents=True, exist_ok=True)
        for seed in seeds():
            name = corpus / f"seed-{hashlib.sha1(seed).hexdigest()}"
            if not name.exists():
                name.write_bytes(seed)
        args.append(str(corpus))
    if not any(a.startswith("-timeout=") for a in args):
        args.append("-timeout=10")
    atheris.Setup(args, one_input)
    atheris.Fuzz()
