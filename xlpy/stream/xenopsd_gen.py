"""Generated xenopsd suspend images (``xlpy gen --toolstack xenopsd|xenopsd-legacy``).

What each xenopsd generation wrote for a seeded guest, from a legacy sender profile
(:mod:`xlpy.stream.legacy.senders`):

* ``xenopsd-legacy``: ``XenSavedDomain\\n``, the XenServer-classic libxc image (no QEMU
  record in libxc's tail) and, for HVM, ``QemuDeviceModelRecord\\n`` + big-endian length;
* ``xenopsd`` with the legacy libxc (``libxc="legacy"``, xenopsd on Xen < 4.5,
  CP-8988): ``XenSavedDomv2-\\n``, Xenops, Libxc_legacy holding the bare image with the
  ``DeviceModelRecord0002`` QEMU record libxc reads in its tail, extras, End_of_image;
* ``xenopsd`` with a v2 libxc (``libxc="v2"``): Xenops, Libxc holding the image
  converted by :func:`xlpy.stream.convert.legacy_to_v2`, extras, for HVM Qemu_trad,
  End_of_image, in the order xenopsd's ``suspend`` writes them.

Extras (Demu, Varstored, Swtpm) are seeded bytes of the sizes asked for, written in
steps; Demu declares its body length (see :mod:`xlpy.stream.xenopsd`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from typing import BinaryIO

import numpy as np

from xlpy.errors import UsageError
from xlpy.guest import Guest, GuestSpec
from xlpy.stream import xenopsd as X
from xlpy.stream.convert import legacy_to_v2
from xlpy.stream.legacy import format as LF
from xlpy.stream.legacy.records import HvmTail, QemuRecord, Record
from xlpy.stream.legacy.senders import SenderProfile, stream_records
from xlpy.stream.legacy.writer import LegacyWriter
from xlpy.stream.source import ByteSource

KINDS = ("xenopsd", "xenopsd-legacy")
LIBXC_KINDS = ("legacy", "v2")
#: Records of given sizes ``xlpy gen`` can add, in xenopsd's writing order.
EXTRAS = (X.DEMU, X.VARSTORED, X.SWTPM)
#: The Xenops record's ``time``: fixed, so a seed always gives the same bytes.
GEN_TIME = "2026-01-01T00:00:00Z"


def extra_body(rtype: int, size: int, seed: int) -> Iterator[bytes]:
    """The seeded body of an extra record, in steps of at most :data:`X.COPY_STEP`."""
    rng = np.random.default_rng((seed, rtype))
    left = size
    while left:
        step = min(left, X.COPY_STEP)
        yield rng.bytes(step)
        left -= step


def _libxc_records(
    profile: SenderProfile, spec: GuestSpec, qemu_sig: bytes | None
) -> Iterator[Record]:
    """The bare image, with a QEMU record after the HVM tail when ``qemu_sig`` is set."""
    guest = Guest(spec)
    for rec in stream_records(profile, spec, reuse_buffers=True):
        yield rec
        if isinstance(rec, HvmTail) and qemu_sig is not None:
            yield QemuRecord(signature=qemu_sig, data=guest.qemu_data(0))


def _write_v2(profile: SenderProfile, spec: GuestSpec, out: BinaryIO) -> None:
    """The bare image converted to a v2 libxc stream, through a pipe (bounded memory)."""
    r, w = os.pipe()
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            with open(w, "wb", closefd=True) as pipe:
                LegacyWriter(pipe, width=profile.width).write_all(
                    _libxc_records(profile, spec, None)
                )
        except BaseException as e:  # re-raised below, in the caller's thread
            failure.append(e)

    t = threading.Thread(target=produce, name="xlpy-gen-xenopsd", daemon=True)
    t.start()
    try:
        with open(r, "rb", buffering=0, closefd=True) as pipe:
            legacy_to_v2(ByteSource(pipe), out, fmt="libxc", qemu=False, width=profile.width)
    finally:
        t.join()
    if failure:
        raise failure[0]


def generate_image(
    profile: SenderProfile,
    spec: GuestSpec,
    out: BinaryIO,
    *,
    kind: str = "xenopsd",
    libxc: str = "legacy",
    extras: Mapping[int, int] | None = None,
) -> None:
    """Write the xenopsd image of ``kind`` for the guest ``spec`` to ``out``.

    ``profile`` is the libxc sender (its toolstack is ignored: bare, plus xenopsd's
    framing); ``extras`` maps Demu/Varstored/Swtpm to body sizes.  Raises
    :class:`UsageError` for what xenopsd never wrote (Remus, extras in a legacy image).
    """
    extras = dict(extras or {})
    if kind not in KINDS:
        raise UsageError(f"unknown xenopsd image kind {kind!r} (known: {', '.join(KINDS)})")
    if libxc not in LIBXC_KINDS:
        raise UsageError(f"libxc must be legacy or v2, not {libxc!r}")
    if profile.remus:
        raise UsageError("xenopsd images hold one plain libxc image (no Remus)")
    if any(t not in EXTRAS for t in extras) or any(n < 0 for n in extras.values()):
        raise UsageError("extras are Demu, Varstored and Swtpm records of non-negative sizes")
    guest = Guest(spec)
    hvm = spec.kind == "hvm"
    w = X.XenopsdWriter(out)
    if kind == "xenopsd-legacy":
        if extras or libxc != "legacy":
            raise UsageError("a legacy (XenSavedDomain) image holds the legacy libxc image only")
        bare = SenderProfile(sender=profile.sender, toolstack="bare", width=profile.width)
        bare.check(spec)
        w.signature(X.LEGACY)
        LegacyWriter(out, width=profile.width).write_all(_libxc_records(bare, spec, None))
        if hvm:
            w.legacy_qemu(guest.qemu_data(0))
        out.flush()
        return
    bare = SenderProfile(sender=profile.sender, toolstack="bare", width=profile.width)
    bare.check(spec)
    w.signature(X.STRUCTURED)
    w.record(X.XENOPS, X.xenops_record(time=GEN_TIME, word_size=profile.width * 8))
    if libxc == "legacy":
        w.header(X.LIBXC_LEGACY)
        LegacyWriter(out, width=profile.width).write_all(
            _libxc_records(bare, spec, LF.QEMU_SIG_0002 if hvm else None)
        )
    else:
        w.header(X.LIBXC)
        out.flush()
        _write_v2(bare, spec, out)
    for rtype in EXTRAS:
        if rtype in extras:
            w.header(rtype, extras[rtype])
            for part in extra_body(rtype, extras[rtype], spec.seed):
                out.write(part)
    if hvm and libxc == "v2":
        w.record(X.QEMU_TRAD, guest.qemu_data(0))
    w.end()
    out.flush()
