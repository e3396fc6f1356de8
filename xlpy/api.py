"""``xlpy.restore``: the one entry point for Python toolstacks.

The toolstack says what it is doing (its :class:`~xlpy.toolstack.Operation`); xlpy
derives libxc's stream type from that alone, applies the safety rules of the receiving
libxc release (:mod:`xlpy.toolstack`), frames the stream where libxc would read past
the image, and runs the restore on the simulated domain (``backend="sim"``) or on the
installed libxenguest (``backend="libxc"``).  Both give back one :class:`Restored`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from xlpy import binding
from xlpy.binding.callbacks import Callback
from xlpy.binding.forward import Forwarded, Forwarder
from xlpy.errors import StreamError, StreamTruncated, UsageError, XenError, XlpyError
from xlpy.receiver import restore as receiver_restore
from xlpy.receiver.backends import ProgressFn
from xlpy.receiver.backends import RestoreResult as SimResult
from xlpy.receiver.generations import ALIASES, generation
from xlpy.receiver.toolstacks import CALLER_READS_AFTER, DEFAULT_TOOLSTACK
from xlpy.receiver.toolstacks import toolstack as toolstack_model
from xlpy.stream.legacy.records import XendHeader, XlHeader
from xlpy.stream.source import ByteSource
from xlpy.toolstack import (
    Decision,
    Operation,
    StreamType,
    Verdict,
    check_operation,
    decide,
    restore_libxc_operation,
)

log = logging.getLogger("xlpy.api")

#: The simulated receiver used when the caller names none and the installed
#: libxenguest is missing or newer than any simulated generation: the newest legacy
#: receiver, which takes ``checkpointed_stream`` (R-fix).
DEFAULT_SIM_GENERATION = "xen-4.5"

BACKENDS = ("sim", "libxc", "fakexen")

Source = str | os.PathLike[str] | int | BinaryIO


@dataclass(frozen=True, slots=True, kw_only=True)
class Restored:
    """The outcome of :func:`restore`, for either backend.

    ``ok``
        The domain was restored (sim: the directory ``out`` exists; libxc: domain
        ``domid`` is ready to unpause).
    ``backend``, ``decision``
        ``"sim"`` or ``"libxc"``, and the toolstack decision that was applied
        (``decision.operation``, ``.stream_type``, ``.release``, ``.verdict``,
        ``.reason``, ``.forced``, ``.framed``).
    ``rest``
        When the stream was framed: the bytes after the first checkpoint's libxc image
        (the QEMU record, a toolstack trailer) that xlpy read and libxc never saw.  If
        ``source`` was a path, this is everything up to end of file; if it was a
        descriptor or file object, read on from it after these bytes.  ``b""`` when not
        framed.
    ``framing``, ``image_bytes``
        When framed: the toolstack header (xl/xend) xlpy read, and the image size
        given to libxc.
    ``error``
        Why the restore failed: a :class:`~xlpy.errors.StreamError` (sim, or a framing
        read error) or a :class:`~xlpy.errors.XenError` (libxc).  On a Remus commit
        the error that ended the stream while ``ok`` is true.
    ``messages``
        libxc's log lines (sim: rendered as libxc's stdio logger prints them).
    ``out``, ``committed_checkpoint``, ``bytes_past_image``
        sim only: the domain directory, the 0-based index of the last checkpoint
        applied, and the bytes libxc consumed after it (4 in the EAT cell).
    ``domid``, ``store_mfn``, ``console_mfn``, ``vm_generationid_addr``
        libxc only: ``xc_domain_restore``'s results.
    ``sim``, ``libxc``
        The backend's own result, for details not lifted here.
    """

    ok: bool
    backend: str
    decision: Decision
    rest: bytes = b""
    framing: XlHeader | XendHeader | None = None
    image_bytes: int | None = None
    error: XlpyError | None = None
    messages: tuple[str, ...] = ()
    out: Path | None = None
    committed_checkpoint: int | None = None
    bytes_past_image: int = 0
    domid: int | None = None
    store_mfn: int | None = None
    console_mfn: int | None = None
    vm_generationid_addr: int | None = None
    sim: SimResult | None = None
    libxc: binding.RestoreResult | None = None

    @property
    def operation(self) -> Operation:
        """The caller's operation."""
        return self.decision.operation

    @property
    def stream_type(self) -> StreamType:
        """The stream type libxc was given (derived from :attr:`operation`)."""
        return self.decision.stream_type

    @property
    def framed(self) -> bool:
        """xlpy forwarded only the first checkpoint's image to libxc."""
        return self.decision.framed

    def to_json(self) -> dict[str, Any]:
        """``xlpy restore --operation ... --json``: the receiver's keys plus the decision."""
        sim = self.sim
        return {
            "ok": self.ok,
            "rc": sim.rc if sim is not None else (0 if self.ok else -1),
            "committed_checkpoint": self.committed_checkpoint,
            "bytes_past_image": self.bytes_past_image,
            "domain_destroyed": sim.domain_destroyed if sim is not None else not self.ok,
            "messages": list(self.messages),
            "out": str(self.out) if self.out is not None else None,
            "backend": self.backend,
            "operation": self.operation.value,
            "stream_type": self.stream_type.name,
            "release": self.decision.release,
            "verdict": self.decision.verdict.value,
            "reason": self.decision.reason,
            "forced": self.decision.forced,
            "framed": self.framed,
            "image_bytes": self.image_bytes,
            "rest_bytes": len(self.rest),
            "domid": self.domid,
            "store_mfn": self.store_mfn,
            "console_mfn": self.console_mfn,
            "error": str(self.error) if self.error is not None else None,
        }


def default_sim_generation() -> str:
    """The simulated receiver used when the caller names none.

    The installed libxenguest's release (``xen-4.N``) when it is detectable and
    simulated, else :data:`DEFAULT_SIM_GENERATION`.
    """
    try:
        name = f"xen-{binding.detect().release}"
        generation(name)
    except XlpyError as e:
        log.info("simulating %s (installed libxenguest not usable: %s)", DEFAULT_SIM_GENERATION, e)
        return DEFAULT_SIM_GENERATION
    return name


def restore(
    source: Source,
    *,
    operation: Operation | str,
    out: str | os.PathLike[str] | None = None,
    domid: int | None = None,
    backend: str = "sim",
    generation: str | None = None,
    force: bool = False,
    callbacks: Mapping[str, Callback] | None = None,
    toolstack: str | None = None,
    progress: ProgressFn | None = None,
    guest: str | None = None,
    width: int | None = None,
    heartbeat: float = 1.0,
    store_evtchn: int = 0,
    console_evtchn: int = 0,
    store_domid: int = 0,
    console_domid: int = 0,
    out_of_process: bool = True,
    timeout: float | None = None,
    release: str | None = None,
) -> Restored:
    """Restore a domain from a save or migration stream, as ``operation`` requires.

    The caller names what it is doing; xlpy never asks the stream or the sender:

    * ``"restore"`` (a saved file) and ``"migrate-receive"`` (a live migration):
      PLAIN (0);
    * ``"remus-receive"`` (a Remus backup, checkpoints until failover): REMUS (1);
    * ``"colo-receive"`` (a COLO secondary, libxc 4.7+): COLO (2).

    The decision and its reason are logged on ``xlpy.toolstack``.  Safety rules for the
    receiving release (legacy-stream.md §12):

    * libxc 4.0-4.3.1 (no ``checkpointed_stream``): a plain restore/migrate is *framed*:
      xlpy reads the stream, gives libxc exactly the first checkpoint's image through a
      pipe, and hands what follows (QEMU record, trailer) back in :attr:`Restored.rest`,
      so libxc eats nothing;
    * Remus there, and Remus on 4.4.x (failover destroys the backup), raise
      :class:`~xlpy.errors.RestoreRefused` unless ``force=True``;
    * COLO before 4.7 always raises :class:`~xlpy.errors.RestoreRefused`.

    Args:
        source: a path (opened and closed here), a descriptor, or a binary file object
            with a real descriptor that has not been read through a buffer.  Pipes and
            sockets work; nothing is seeked.
        operation: an :class:`~xlpy.toolstack.Operation` or its value.
        out: ``backend="sim"``: the domain directory to create (must not exist).
        domid: ``backend="libxc"``: the (empty, created by the toolstack) domain.
        backend: ``"sim"`` (the simulated domain) or ``"libxc"`` (the installed
            libxenguest; run in a helper process unless ``out_of_process=False``).
        generation: sim only: the receiver to simulate (``"xen-4.3.1"``, ``"xen-4.4"``,
            ...; see :data:`xlpy.receiver.GENERATIONS`); default
            :func:`default_sim_generation`.  A migration-v2 generation (``"xen-4.17"``)
            reads v2 streams only.  libxc always uses the detected library.
        force: accept a refusable rule (Remus on 4.4, Remus without the argument).
        callbacks: libxc only: ``restore_callbacks`` slots by name (``checkpoint`` is
            required for Remus); see :func:`xlpy.binding.restore_libxc`.
        toolstack: the receiving toolstack model (:data:`xlpy.receiver.TOOLSTACKS`):
            whether libxc reads the HVM QEMU record (XenServer-classic's does not) and,
            on the sim, what the toolstack reads after libxc.  On a framed restore the
            caller does that reading, from :attr:`Restored.rest`.
        progress: sim only: called with ``bytes``/``pages``/``checkpoint``/``phase``.
        guest, width: ``"pv"``/``"hvm"`` and the toolstack width in bytes, where the
            stream cannot tell (the sim detects them).  libxc 4.0-4.13 takes an ``hvm``
            argument: pass ``guest="hvm"`` for an HVM domain there.
        heartbeat: sim only: libxc's 1 s wait for the next checkpoint.
        store_evtchn, console_evtchn, store_domid, console_domid: libxc's arguments.
        release: ``backend="fakexen"``: the Xen release whose real libxc runs on the
            user-space Xen (``"xen-4.3.1"``, ``"4.17"``), into ``out`` as the sim does
            (:mod:`xlpy.fakexen.backend`).
        timeout: libxc only: seconds without a word from the helper (a result or a
            callback) before it is killed and :class:`~xlpy.errors.LibxcCrashed` is
            returned.  ``None`` (the default) waits: a plain restore sends no word until
            it ends, and how long that takes grows with the domain's memory, so only the
            caller can pick a bound (``xlpy restore --timeout``).

    Example (a XenServer-style toolstack receiving on a 4.3.1 host)::

        done = xlpy.restore(sock.fileno(), operation="migrate-receive", backend="libxc",
                            domid=7, guest="hvm", toolstack="xenserver-classic")
        if not done.ok:
            raise done.error
        qemu = done.rest  # then read the rest of the QEMU record from sock

    Returns:
        A :class:`Restored`; a failed restore (a stream error, a libxc error) has
        ``ok`` false and ``error`` set rather than raising.  After a failed framed
        restore, how much of a descriptor ``source`` was read is undefined.

    Raises:
        RestoreRefused: the rules refuse ``operation`` on this release.
        UsageError: bad arguments (unknown operation, backend, generation, toolstack;
            ``out``/``domid`` missing for the backend).
        XenUnavailable: ``backend="libxc"`` with no hypervisor (``/dev/xen/privcmd``)
            or no libxenguest (:class:`~xlpy.errors.LibraryNotFound` names the package).
    """
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
    ts_name = DEFAULT_TOOLSTACK if toolstack is None else toolstack
    ts = toolstack_model(ts_name)
    fd, owned = _open(source)
    try:
        if backend == "fakexen":
            from xlpy.fakexen.backend import restore_for_api

            path = Path(source) if isinstance(source, str | os.PathLike) else None
            return restore_for_api(
                fd,
                operation,
                out=out,
                release=release,
                guest=guest,
                force=force,
                callbacks=callbacks,
                toolstack=toolstack,
                timeout=timeout,
                source_path=path,
            )
        if release is not None:
            raise UsageError("release= names the fakexen backend's library")
        if backend == "sim":
            if out is None or domid is not None:
                raise UsageError("the sim backend restores into out=DIR (and takes no domid)")
            result = _restore_sim(
                fd,
                operation,
                out=Path(out),
                gen=default_sim_generation() if generation is None else generation,
                force=force,
                ts_name=ts_name,
                libxc_reads_qemu=ts.libxc_reads_qemu,
                progress=progress,
                guest=guest,
                width=width,
                heartbeat=heartbeat,
            )
        else:
            if domid is None or out is not None or generation is not None:
                raise UsageError(
                    "the libxc backend restores into domid=N with the installed libxenguest "
                    "(no out, no generation; XLPY_XENGUEST_GENERATION overrides detection)"
                )
            request = binding.RestoreRequest(
                io_fd=fd,
                dom=domid,
                store_evtchn=store_evtchn,
                console_evtchn=console_evtchn,
                store_domid=store_domid,
                console_domid=console_domid,
                hvm=guest == "hvm",
            )
            result = _restore_libxc(
                request,
                operation,
                callbacks=callbacks,
                force=force,
                libxc_reads_qemu=ts.libxc_reads_qemu,
                guest=guest,
                out_of_process=out_of_process,
                timeout=timeout,
            )
        if owned is not None and result.framed:
            result = dataclasses.replace(result, rest=result.rest + ByteSource(fd).read_to_eof())
        return result
    finally:
        if owned is not None:
            owned.close()


def _open(source: Source) -> tuple[int, BinaryIO | None]:
    """The descriptor to read ``source`` from, and the file to close (None: not ours)."""
    if isinstance(source, bool):
        raise UsageError("source must be a path, a descriptor or a binary file")
    if isinstance(source, int):
        return source, None
    if isinstance(source, str | os.PathLike):
        try:
            f = open(source, "rb", buffering=0)  # noqa: SIM115 - closed by restore()
        except OSError as e:
            raise UsageError(f"cannot open {os.fspath(source)}: {e}") from None
        return f.fileno(), f
    try:
        return source.fileno(), None
    except (AttributeError, OSError, ValueError) as e:
        raise UsageError(f"source {source!r} has no file descriptor ({e})") from None


def _restore_sim(
    fd: int,
    operation: Operation | str,
    *,
    out: Path,
    gen: str,
    force: bool,
    ts_name: str,
    libxc_reads_qemu: bool,
    progress: ProgressFn | None,
    guest: str | None,
    width: int | None,
    heartbeat: float,
) -> Restored:
    gen = ALIASES.get(gen, gen)
    decision = check_operation(operation, gen, force)
    # Only generations with the argument are told; the others cannot be (that is the rule).
    checkpointed = int(decision.stream_type) if generation(gen).takes_checkpointed else None
    common: dict[str, Any] = dict(
        generation=gen,
        out=out,
        checkpointed=checkpointed,
        heartbeat=heartbeat,
        progress=progress,
        guest=guest,
        width=width,
    )
    if not decision.framed:
        sim = receiver_restore(ByteSource(fd), toolstack=ts_name, **common)
        return _from_sim(sim, decision, None, None)
    fwd = Forwarder(fd, libxc_reads_qemu=libxc_reads_qemu, guest=guest, width=width)
    try:
        # The toolstack's own reading after libxc is the caller's, from ``rest``.
        sim = receiver_restore(
            ByteSource(fwd.read_fd), toolstack=ts_name + CALLER_READS_AFTER, **common
        )
    except BaseException:
        fwd.stop()
        raise
    sim = dataclasses.replace(sim, toolstack=ts_name)
    if not sim.ok:
        input_error = fwd.stop()
        # A receiver that met the end of its pipe was cut off by the forwarder failing on
        # the input: the input's error (at the input's offset) is the one that happened.
        cut_off = input_error is not None and isinstance(sim.error, StreamTruncated)
        return _from_sim(sim, decision, None, input_error if cut_off else None)
    try:
        forwarded = fwd.result()
    except StreamError as e:
        return _from_sim(sim, decision, None, e)
    return _from_sim(sim, decision, forwarded, None)


def _from_sim(
    sim: SimResult, decision: Decision, fwd: Forwarded | None, fwd_error: StreamError | None
) -> Restored:
    return Restored(
        ok=sim.ok and fwd_error is None,
        backend="sim",
        decision=decision,
        rest=fwd.rest if fwd is not None else b"",
        framing=fwd.framing if fwd is not None else None,
        image_bytes=fwd.image_bytes if fwd is not None else None,
        error=fwd_error if fwd_error is not None else sim.error,
        messages=tuple(sim.messages),
        out=sim.out,
        committed_checkpoint=sim.committed_checkpoint,
        bytes_past_image=sim.bytes_past_image,
        sim=sim,
    )


def _restore_libxc(
    request: binding.RestoreRequest,
    operation: Operation | str,
    *,
    callbacks: Mapping[str, Callback] | None,
    force: bool,
    libxc_reads_qemu: bool,
    guest: str | None,
    out_of_process: bool,
    timeout: float | None,
    abi: binding.Abi | None = None,
    env: Mapping[str, str] | None = None,
) -> Restored:
    abi = binding.detect() if abi is None else abi
    try:
        done = restore_libxc_operation(
            request,
            operation,
            callbacks=callbacks,
            force=force,
            abi=abi,
            out_of_process=out_of_process,
            timeout=timeout,
            libxc_reads_qemu=libxc_reads_qemu,
            guest=guest,
            env=env,
        )
    except (XenError, StreamError) as e:
        # The rules passed (a refusal raises before libxc runs), so this is the decision
        # check_operation made, without logging it twice.
        decision = decide(operation, abi.release)
        if decision.verdict is Verdict.REFUSE:
            decision = dataclasses.replace(decision, forced=True)
        return Restored(
            ok=False,
            backend="libxc",
            decision=decision,
            error=e,
            messages=(str(e),),
            domid=request.dom,
        )
    fwd, res = done.forwarded, done.result
    return Restored(
        ok=True,
        backend="libxc",
        decision=done.decision,
        rest=fwd.rest if fwd is not None else b"",
        framing=fwd.framing if fwd is not None else None,
        image_bytes=fwd.image_bytes if fwd is not None else None,
        domid=request.dom,
        store_mfn=res.store_mfn,
        console_mfn=res.console_mfn,
        vm_generationid_addr=res.vm_generationid_addr,
        libxc=res,
    )
