"""``xlpy.restore``: the one entry point for Python toolstacks, and the pipeline under it.

The toolstack says what it is doing (its :class:`~xlpy.operation.Operation`); xlpy
derives libxc's stream type from that alone, applies the safety rules of the receiving
libxc release (:mod:`xlpy.decision`), frames the stream where libxc would read past the
image (:mod:`xlpy.stream.forward`), and runs the restore on a backend
(:mod:`xlpy.backends`: ``sim``, ``libxc``).  Every backend gives back one
:class:`~xlpy.backends.RestoreResult`.  :func:`run` is that pipeline; ``xlpy restore``
and :func:`restore` only build its :class:`~xlpy.backends.RestoreRequest`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

from xlpy.backends import RestoreRequest, RestoreResult, get_backend, make_options
from xlpy.decision import as_operation, check_operation
from xlpy.errors import StreamError, StreamTruncated, UsageError, XenError
from xlpy.operation import Operation
from xlpy.progress import ProgressFn
from xlpy.receiver.toolstacks import DEFAULT_TOOLSTACK
from xlpy.receiver.toolstacks import toolstack as toolstack_model
from xlpy.stream.forward import Forwarder
from xlpy.stream.source import ByteSource

Source = str | os.PathLike[str] | int | BinaryIO


def restore(
    source: Source,
    *,
    operation: Operation | str,
    backend: str = "sim",
    release: str | None = None,
    force: bool = False,
    callbacks: Mapping[str, Callable[..., Any]] | None = None,
    toolstack: str | None = None,
    progress: ProgressFn | None = None,
    guest: str | None = None,
    width: int | None = None,
    timeout: float | None = None,
    **options: Any,
) -> RestoreResult:
    """Restore a domain from a save or migration stream, as ``operation`` requires.

    The caller names what it is doing; xlpy never asks the stream or the sender:

    * ``"restore"`` (a saved file) and ``"migrate-receive"`` (a live migration):
      PLAIN (0);
    * ``"remus-receive"`` (a Remus backup, checkpoints until failover): REMUS (1);
    * ``"colo-receive"`` (a COLO secondary, libxc 4.7+): COLO (2).

    The decision and its reason are logged on ``xlpy.toolstack``.  Safety rules for the
    receiving release (xlpy/docs/legacy-stream.md §12):

    * libxc 4.0-4.3.1 (no ``checkpointed_stream``): a plain restore/migrate is *framed*:
      xlpy reads the stream, gives libxc exactly the first checkpoint's image through a
      pipe, and hands what follows (QEMU record, trailer) back in
      :attr:`~xlpy.backends.RestoreResult.rest`, so libxc eats nothing;
    * Remus there, and Remus on 4.4.x (failover destroys the backup), raise
      :class:`~xlpy.errors.RestoreRefused` unless ``force=True``;
    * COLO before 4.7 always raises :class:`~xlpy.errors.RestoreRefused`.

    Args:
        source: a path (opened and closed here), a descriptor, or a binary file object
            with a real descriptor that has not been read through a buffer.  Pipes and
            sockets work; nothing is seeked.
        operation: an :class:`~xlpy.operation.Operation` or its value.
        backend: ``"sim"`` (the simulated libxc of ``release``, into a domain
            directory) or ``"libxc"`` (the installed libxenguest, into a domain; run in
            a helper process unless ``out_of_process=False``); see
            :func:`xlpy.backends.backend_names`.
        release: the receiving libxc release.  sim: the one to simulate (``"xen-4.3.1"``,
            ``"xen-4.4"``, ...; :data:`xlpy.receiver.GENERATIONS`), default the installed
            release when simulated, else ``xen-4.5``; a migration-v2 release
            (``"xen-4.17"``) reads v2 streams only.  libxc: always the detected library
            (naming another is an error).
        force: accept a refusable rule (Remus on 4.4, Remus without the argument).
        callbacks: libxc: ``restore_callbacks`` slots by name (``checkpoint`` is
            required for Remus); see :func:`xlpy.binding.restore_libxc`.
        toolstack: the receiving toolstack model (:data:`xlpy.receiver.TOOLSTACKS`):
            whether libxc reads the HVM QEMU record (XenServer-classic's does not) and,
            on the sim, what the toolstack reads after libxc.  On a framed restore the
            caller does that reading, from ``rest``.
        progress: sim: called with ``bytes``/``pages``/``checkpoint``/``phase``.
        guest, width: ``"pv"``/``"hvm"`` and the toolstack width in bytes, where the
            stream cannot tell (the sim detects them).  libxc 4.0-4.13 takes an ``hvm``
            argument: pass ``guest="hvm"`` for an HVM domain there.
        timeout: the stall bound, in seconds (``None``, the default, waits).  sim, and
            xlpy's own reading of a framed restore on every backend: no byte of the
            stream for ``timeout`` seconds fails the restore with a
            :class:`~xlpy.errors.StreamTimeout` naming the offset and field.  A Remus
            receiver keeps libxc's rule: after the first complete checkpoint the
            heartbeat (``heartbeat``, 1 s) governs and a stall commits the last
            complete checkpoint; before it libxc has no heartbeat, so only this bound
            ends a stall (a failed restore).  libxc and fakexen, where libxc reads the
            descriptor itself: seconds without a word from the helper (a result or a
            callback) before it is killed and :class:`~xlpy.errors.LibxcCrashed` is
            returned (a plain restore sends no word until it ends).
        options: the backend's own options.  sim: ``out`` (the domain directory to
            create; must not exist) and ``heartbeat`` (libxc's 1 s wait for the next
            checkpoint).  libxc: ``domid`` (the empty domain the toolstack created),
            ``store_evtchn``, ``console_evtchn``, ``store_domid``, ``console_domid``,
            ``out_of_process``.

    Example (a XenServer-style toolstack receiving on a 4.3.1 host)::

        done = xlpy.restore(sock.fileno(), operation="migrate-receive", backend="libxc",
                            domid=7, guest="hvm", toolstack="xenserver-classic")
        if not done.ok:
            raise done.error
        qemu = done.rest  # then read the rest of the QEMU record from sock

    Returns:
        A :class:`~xlpy.backends.RestoreResult`; a failed restore (a stream error, a
        libxc error) has ``ok`` false and ``error`` set rather than raising.  After a
        failed framed restore, how much of a descriptor ``source`` was read is undefined.

    Raises:
        RestoreRefused: the rules refuse ``operation`` on this release.
        UsageError: bad arguments (unknown operation, backend, release, toolstack, an
            option the backend does not take or a missing one), or a stream whose guest
            type cannot be told without ``guest``.
        OutputError: sim: the domain directory could not be written (a full disk); it
            names the file and the errno.  A :class:`~xlpy.errors.UsageError` too.
        XenUnavailable: ``backend="libxc"`` with no hypervisor (``/dev/xen/privcmd``)
            or no libxenguest (:class:`~xlpy.errors.LibraryNotFound` names the package).
    """
    op = as_operation(operation)
    be = get_backend(backend)
    opts = make_options(be, options)
    fd, owned = open_source(source)
    try:
        request = RestoreRequest(
            fd=fd,
            operation=op,
            release=release,
            backend=backend,
            force=force,
            toolstack=toolstack,
            callbacks=callbacks,
            progress=progress,
            guest=guest,
            width=width,
            timeout=timeout,
            options=opts,
        )
        result = run(request)
        if owned is not None and result.framed:
            result = dataclasses.replace(result, rest=result.rest + ByteSource(fd).read_to_eof())
        return result
    finally:
        if owned is not None:
            owned.close()


def run(request: RestoreRequest) -> RestoreResult:
    """The restore pipeline: decide, frame where the decision says, run the backend.

    ``request.release`` is resolved by the backend (its default when ``None``); with an
    operation, :func:`~xlpy.decision.check_operation` decides (raising
    :class:`~xlpy.errors.RestoreRefused`); a framed decision puts
    :class:`~xlpy.stream.forward.Forwarder` between the source and the backend.  When a
    framed restore fails because the input is truncated or malformed, the input's own
    :class:`~xlpy.errors.StreamError` is the result's error (at the input's offset), not
    the backend's view of its pipe ending early.
    """
    backend = get_backend(request.backend)
    release = backend.release(request.release)
    request = dataclasses.replace(request, release=release)
    ts = toolstack_model(DEFAULT_TOOLSTACK if request.toolstack is None else request.toolstack)
    if request.operation is None:
        if not backend.raw:
            raise UsageError(f"the {backend.name} backend restores an operation, not raw")
        return backend.restore(request, request.fd, None, framed=False)
    if request.checkpointed is not None:
        raise UsageError("the stream type comes from the operation, not checkpointed")
    decision = check_operation(request.operation, release, request.force)
    if not decision.framed:
        return backend.restore(request, request.fd, decision, framed=False)
    fwd = Forwarder(
        request.fd,
        libxc_reads_qemu=ts.libxc_reads_qemu,
        guest=request.guest,
        width=request.width,
        timeout=request.timeout,
    )
    try:
        result = backend.restore(request, fwd.read_fd, decision, framed=True)
    except BaseException:
        fwd.stop()
        raise
    if not result.ok:
        input_error = fwd.stop()
        # A receiver that met the end of its pipe was cut off by the forwarder failing
        # on the input: the input's error is the one that happened.
        if input_error is not None and isinstance(result.error, StreamTruncated | XenError):
            return dataclasses.replace(result, error=input_error)
        return result
    try:
        forwarded = fwd.result()
    except StreamError as e:
        return dataclasses.replace(result, ok=False, error=e)
    return dataclasses.replace(
        result, rest=forwarded.rest, framing=forwarded.framing, image_bytes=forwarded.image_bytes
    )


def open_source(source: Source) -> tuple[int, BinaryIO | None]:
    """The descriptor to read ``source`` (as :func:`restore` takes it) from, and the file
    to close (None: not ours); :class:`~xlpy.errors.UsageError` if it cannot be opened."""
    if isinstance(source, bool):
        raise UsageError("source must be a path, a descriptor or a binary file")
    if isinstance(source, int):
        return source, None
    if isinstance(source, str | os.PathLike):
        try:
            f = open(source, "rb", buffering=0)  # noqa: SIM115 - closed by the caller
        except OSError as e:
            raise UsageError(f"cannot open {os.fspath(source)}: {e}") from None
        return f.fileno(), f
    try:
        return source.fileno(), None
    except (AttributeError, OSError, ValueError) as e:
        raise UsageError(f"source {source!r} has no file descriptor ({e})") from None
