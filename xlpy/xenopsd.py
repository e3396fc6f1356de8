"""Restoring xenopsd suspend images, for xapi-style Python toolstacks.

:class:`Image` reads an image from a descriptor the way xenopsd's ``process_header``
loop does: one record at a time, the toolstack deciding what to do with each.  A
Libxc or Libxc_legacy record goes to :meth:`Image.restore`, which hands exactly that
record to :func:`xlpy.restore` and returns its result; the next header is then read
from the same descriptor, right after the record::

    image = xlpy.xenopsd.Image(fd)
    for rec in image:
        if rec.type in (xenopsd.LIBXC, xenopsd.LIBXC_LEGACY):
            done = image.restore(rec, operation="restore", backend="libxc", domid=7)
            if not done.ok:
                raise done.error
        elif rec.type == xenopsd.QEMU_TRAD:
            image.copy_body(rec, qemu_file.write)

Why "exactly": xenopsd's xenguest reads the libxc stream straight from the image's
descriptor, and a receiver that reads one byte past its image breaks the next header
(the LAST_CHECKPOINT lesson: a 4.1-4.3.1 libxc given a legacy image from an older
sender reads the next header as a page count).  Here the record is parsed as it is
read and forwarded, verbatim, into a pipe that ends where the record ends; whatever
libxc (real or simulated, any release) reads, it cannot read further.  A receiver that
only reads migration v2 (the sim's ``xen-4.17``, a real libxenguest 4.6+) given a
legacy record gets it converted on the way, as xenopsd does through Xen's
``convert-legacy-stream``; the QEMU record inside a Libxc_legacy record is then kept
(:attr:`Image.libxc_qemu`).

:meth:`Image.receive_in_place` is the other way, as xenguest does it: the simulated
receiver reads the image's own stream, and what it reads past the record is gone (the
xenopsd rows of ``xlpy repro`` show which receivers break the next header so).

:func:`restore_image` is ``xlpy restore`` of a xenopsd image: the libxc record restored
as above, every other record written to the domain directory as a file named by its
type (``Xenops``, ``Qemu_trad``, ``Varstored``, ``Swtpm``, ``Demu``), as xenopsd hands
them on to QEMU, varstored, swtpm and demu.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xlpy import api, binding
from xlpy.backends import RestoreResult
from xlpy.backends.sim import default_sim_release
from xlpy.errors import StreamError, UsageError, XlpyError, error_json
from xlpy.receiver import restore as receiver_restore
from xlpy.receiver.domains import Outcome
from xlpy.receiver.generations import ALIASES
from xlpy.receiver.generations import generation as receiver_generation
from xlpy.stream import xenopsd as X
from xlpy.stream.convert import legacy_to_v2
from xlpy.stream.legacy.records import QemuRecord
from xlpy.stream.source import ByteSource
from xlpy.stream.tap import Tap

#: The receiving toolstack models (:mod:`xlpy.receiver.toolstacks`): the libxc part of a
#: legacy image has no QEMU record in its tail; a Libxc_legacy record's does.
TOOLSTACK_LEGACY_IMAGE = "xenopsd"
TOOLSTACK_LIBXC_LEGACY = "xc_restore"


class _Tap(Tap):
    """A :class:`Tap` that, while ``floor`` is set, forgets the bytes below it before
    each read: only a record being forwarded verbatim keeps its bytes (bounded memory
    for everything else, a whole converted image included)."""

    floor: Callable[[], int] | None = None

    def readinto(self, b: memoryview, /) -> int:
        if self.floor is not None:
            self.take(self.floor())
        return super().readinto(b)


class _Writer:
    """Writes forwarded bytes to the receiver's pipe; a closed pipe ends the forwarding."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
        return len(data)

    def flush(self) -> None:
        """Nothing is buffered."""


class Image:
    """A xenopsd image on a descriptor (or path, or file object with a descriptor).

    Iterating yields :class:`~xlpy.stream.xenopsd.XenopsdRecord` s in order, up to
    End_of_image; a body or image the caller leaves is skipped (read, never kept) before
    the next record.  Errors are the reader's typed ones, with the offset in the image.
    """

    def __init__(self, source: api.Source) -> None:
        self._fd, self._owned = api.open_source(source)
        self._tap = _Tap(self._fd)
        self.source = ByteSource(self._tap)
        self._tap.floor = lambda: self.source.offset
        self.reader = X.XenopsdReader(self.source)
        self._current: X.XenopsdRecord | None = None
        self._handled = False
        #: The QEMU record a Libxc_legacy record held, once converted for a v2 receiver.
        self.libxc_qemu: QemuRecord | None = None

    def close(self) -> None:
        """Close the file opened for a path (a descriptor stays the caller's)."""
        if self._owned is not None:
            self._owned.close()
            self._owned = None

    def __enter__(self) -> Image:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def kind(self) -> str | None:
        """:data:`~xlpy.stream.xenopsd.STRUCTURED` or :data:`~xlpy.stream.xenopsd.LEGACY`."""
        return self.reader.kind

    def _drop(self) -> None:
        """Forget the bytes read so far (only look-ahead stays in the tap)."""
        self._tap.take(self.source.offset)

    def __iter__(self) -> Iterator[X.XenopsdRecord]:
        for rec in self.reader.records():
            self._drop()
            self._current, self._handled = rec, False
            yield rec
            if not self._handled:
                if rec.type in X.EMBEDDED:
                    self._pump(rec, None)
                else:
                    self.copy_body(rec, lambda _: None)
            self._current = None
            self._drop()

    def _claim(self, rec: X.XenopsdRecord) -> None:
        if rec is not self._current or self._handled:
            raise UsageError(f"record {rec.index} ({rec.name}) is not the one to read now")
        self._handled = True

    # -- bodies -------------------------------------------------------------------------

    def copy_body(self, rec: X.XenopsdRecord, write: Callable[[bytes], object]) -> None:
        """Pass the record's body to ``write`` in steps (bounded memory)."""
        self._claim(rec)

        def step(data: bytes) -> None:
            write(data)
            self._drop()

        self.reader.copy_body(rec, step)

    def read_body(self, rec: X.XenopsdRecord) -> bytes:
        """The record's body in memory (Xenops, Varstored, ...: as xenopsd reads them)."""
        self._claim(rec)
        return self.reader.read_body(rec)

    # -- the libxc record -----------------------------------------------------------------

    def _pump(self, rec: X.XenopsdRecord, out: _Writer | None, *, convert: bool = False) -> None:
        """Read the embedded image, forwarding its exact bytes to ``out`` (or nowhere),
        or with ``convert`` its v2 conversion."""
        if convert:
            assert out is not None
            conv = legacy_to_v2(self.source, out, fmt="libxc", qemu=False, one_image=True)  # type: ignore[arg-type]
            self.libxc_qemu = conv.qemu
            self.reader.guest = conv.guest
            self._drop()
            return
        images = (
            self.reader.legacy_image(rec)
            if rec.type == X.LIBXC_LEGACY
            else self.reader.v2_image(rec)
        )
        if out is None:
            for _ in images:
                pass
            return
        self._drop()
        floor, self._tap.floor = self._tap.floor, None
        try:
            for _ in images:
                out.write(self._tap.take(self.source.offset))
        finally:
            self._tap.floor = floor

    def restore(self, rec: X.XenopsdRecord, **kwargs: Any) -> RestoreResult:
        """Hand exactly this Libxc/Libxc_legacy record to :func:`xlpy.restore`.

        ``kwargs`` are :func:`xlpy.restore`'s (``operation`` required).  The toolstack
        model defaults to the one the record needs (libxc reads the QEMU record inside a
        Libxc_legacy record, not after a legacy image's libxc part).  A record the
        receiver cannot read (legacy for a v2-only receiver) is converted on the way; a
        v2 record for a legacy receiver is a :class:`UsageError`.  An image broken inside
        the record raises its typed error after the receiver has stopped.
        """
        if rec.type not in X.EMBEDDED:
            raise UsageError(f"record {rec.index} is {rec.name}, not a libxc image")
        self._claim(rec)
        legacy = rec.type == X.LIBXC_LEGACY
        wants_v2 = _receiver_reads_v2(kwargs.get("backend", "sim"), kwargs.get("release"))
        if not legacy and not wants_v2:
            raise UsageError("a Libxc (migration v2) record needs a 4.6+ receiver")
        if legacy and not wants_v2:
            ts = TOOLSTACK_LEGACY_IMAGE if rec.legacy else TOOLSTACK_LIBXC_LEGACY
            kwargs.setdefault("toolstack", ts)
        read_fd, write_fd = os.pipe()
        failure: list[BaseException] = []

        def pump() -> None:
            try:
                self._pump(rec, _Writer(write_fd), convert=legacy and wants_v2)
            except BrokenPipeError:
                pass  # the receiver stopped reading: its own error says why
            except BaseException as e:  # re-raised below, in the caller's thread
                failure.append(e)
            finally:
                os.close(write_fd)

        t = threading.Thread(target=pump, name="xlpy-xenopsd-record", daemon=True)
        t.start()
        try:
            done = api.restore(read_fd, **kwargs)
        finally:
            os.close(read_fd)  # a receiver that stopped early unblocks the pump
            t.join()
        if failure:
            raise failure[0]
        return done

    def receive_in_place(self, rec: X.XenopsdRecord, **kwargs: Any) -> Outcome:
        """The simulated receiver reads the record from the image's own stream, as
        xenguest reads xenopsd's descriptor: what it reads past the record is consumed.

        ``kwargs`` are :func:`xlpy.receiver.restore`'s (``generation``, ``out`` required).
        """
        if rec.type not in X.EMBEDDED:
            raise UsageError(f"record {rec.index} is {rec.name}, not a libxc image")
        self._claim(rec)
        if rec.type == X.LIBXC_LEGACY:
            kwargs.setdefault(
                "toolstack", TOOLSTACK_LEGACY_IMAGE if rec.legacy else TOOLSTACK_LIBXC_LEGACY
            )
        result = receiver_restore(self.source, **kwargs)
        self.reader.guest = kwargs.get("guest")  # the caller knows the domain type
        self._drop()
        return result


def _receiver_reads_v2(backend: str, gen: str | None) -> bool:
    """The receiver reads migration v2 only (sim ``xen-4.17``, libxenguest 4.6+)."""
    if backend == "libxc":
        major, minor = (int(x) for x in binding.detect().release.split(".")[:2])
        return (major, minor) >= (4, 6)
    name = default_sim_release() if gen is None else gen
    return receiver_generation(ALIASES.get(name, name)).stream_format == "v2"


@dataclass(slots=True)
class ImageRestored:
    """What :func:`restore_image` did."""

    kind: str
    #: The result for the libxc record (``None`` if the image had none).
    libxc: RestoreResult | None = None
    #: The other records, by file written (name → path).
    files: dict[str, Path] = field(default_factory=dict)
    error: XlpyError | None = None

    @property
    def ok(self) -> bool:
        """The libxc record restored and every other record read."""
        return self.error is None and self.libxc is not None and self.libxc.ok

    def to_json(self) -> dict[str, Any]:
        """``xlpy restore --json`` of a xenopsd image: the libxc result's keys, plus
        the image's."""
        base = self.libxc.to_json() if self.libxc is not None else {}
        return {
            **base,
            "ok": self.ok,
            "xenopsd": {"kind": self.kind, "files": {k: str(v) for k, v in self.files.items()}},
            "error": error_json(self.error) if self.error is not None else base.get("error"),
        }


def restore_image(
    source: api.Source,
    *,
    out: str | os.PathLike[str],
    operation: str = "restore",
    **kwargs: Any,
) -> ImageRestored:
    """Restore a xenopsd image: its libxc record through :meth:`Image.restore`, every
    other record into a file in ``out`` named by its type (a second record of a type
    gets ``.2``, ...).

    ``out``: with ``backend="sim"`` the domain directory (created by the simulated
    receiver, must not exist); with ``backend="libxc"`` (and ``domid``) the directory
    for the record files (must not exist).  Files are written in a directory beside
    ``out`` and moved in at the end, so a failure leaves no half-written record.  Other
    ``kwargs`` go to :func:`xlpy.restore`.  Stream errors of the image (outside the
    libxc record's receiver) land in :attr:`ImageRestored.error`.
    """
    out = Path(out)
    if out.exists():
        raise UsageError(f"{out} exists")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.xenopsd-", dir=out.parent))
    sim = kwargs.get("backend", "sim") == "sim"
    result = ImageRestored(kind="")
    try:
        with Image(source) as image:
            try:
                for rec in image:
                    result.kind = image.kind or ""
                    if rec.type in X.EMBEDDED:
                        target = {"out": out} if sim else {}
                        result.libxc = image.restore(rec, operation=operation, **target, **kwargs)
                        if not result.libxc.ok:
                            return result
                        if image.libxc_qemu is not None:
                            _store(result, staging, out, X.QEMU_TRAD, image.libxc_qemu.data)
                    elif rec.type != X.END_OF_IMAGE:
                        name = _file_name(result, rec.name)
                        with open(staging / name, "wb") as f:
                            image.copy_body(rec, f.write)
                        result.files[name] = out / name
            except StreamError as e:
                result.error = e.with_traceback(None)
                return result
        if not sim:
            out.mkdir()
        for name in result.files:
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if result.libxc is None:
        result.error = UsageError("the image holds no Libxc or Libxc_legacy record")
    return result


def _file_name(result: ImageRestored, name: str) -> str:
    n = 1
    candidate = name
    while candidate in result.files:
        n += 1
        candidate = f"{name}.{n}"
    return candidate


def _store(result: ImageRestored, staging: Path, out: Path, rtype: int, data: bytes) -> None:
    name = _file_name(result, X.NAMES[rtype])
    (staging / name).write_bytes(data)
    result.files[name] = out / name
