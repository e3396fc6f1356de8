"""The ``libxc`` backend: the installed libxenguest's ``xc_domain_restore``, into a domain.

The release is the detected library's (``XLPY_XENGUEST_GENERATION`` overrides the
detection, ``XLPY_LIBXENGUEST`` picks the file); the call goes through the cffi binding
(:mod:`xlpy.binding`), out of process unless ``out_of_process=False``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from xlpy.backends import RestoreRequest, RestoreResult
from xlpy.binding import Abi, Callback, RestoreArgs, detect, restore_libxc
from xlpy.binding.generations import REQUIRED_CALLBACKS
from xlpy.decision import as_operation
from xlpy.errors import UsageError, XenError
from xlpy.operation import XGR_CHECKPOINT_SUCCESS, Decision, Operation, StreamType


@dataclass(frozen=True, slots=True, kw_only=True)
class LibxcOptions:
    """The ``libxc`` backend's options: the domain and ``xc_domain_restore``'s arguments."""

    #: The (empty, created by the toolstack) domain to restore into.
    domid: int = field(metadata={"metavar": "N"})
    store_evtchn: int = 0
    console_evtchn: int = 0
    store_domid: int = 0
    console_domid: int = 0
    #: Run libxc in a helper process, so its ``assert``s and crashes surface as
    #: :class:`~xlpy.errors.LibxcCrashed`.
    out_of_process: bool = True


def _checkpoint_received() -> int:
    return XGR_CHECKPOINT_SUCCESS


def secondary_callbacks(operation: Operation | str, abi: Abi) -> dict[str, Callback]:
    """The callbacks a secondary receiving a bare libxc stream needs on ``abi``.

    A Remus secondary's ``checkpoint`` is called by libxc after each complete
    checkpoint; libxl's (``libxl__remus_domain_restore_checkpoint_callback``) reads its
    own records that follow in the libxl stream, then answers "keep receiving".  A bare
    libxc stream has no such records, so this one just answers
    :data:`~xlpy.operation.XGR_CHECKPOINT_SUCCESS`; libxc then fails over when the
    stream ends.  Only the slots ``abi`` has are returned (4.0-4.5 libxc handles Remus
    without one).

    A COLO secondary cannot be defaulted: its ``suspend``/``postcopy``/
    ``wait_checkpoint``/``restore_results`` must drive the secondary's QEMU and answer
    the primary over the back channel, which only a real toolstack can do; raises
    :class:`~xlpy.errors.UsageError`.
    """
    from xlpy.operation import stream_type_for

    st = stream_type_for(as_operation(operation))
    if st is StreamType.COLO:
        raise UsageError(
            "no default COLO secondary: COLO needs a toolstack's suspend, postcopy, "
            "wait_checkpoint and restore_results callbacks (driving the secondary's QEMU) "
            "and a back channel to the primary; pass them to xlpy.restore(callbacks=...)"
        )
    defaults: dict[str, Callback] = {"checkpoint": _checkpoint_received}
    wanted = REQUIRED_CALLBACKS[st] & abi.generation.callbacks_for(abi.release)
    return {name: defaults[name] for name in wanted}


class LibxcBackend:
    """The installed libxenguest."""

    name = "libxc"
    Options = LibxcOptions
    raw = False

    def release(self, requested: str | None) -> str:
        """The installed release; naming another is a :class:`~xlpy.errors.UsageError`."""
        abi = detect()
        if requested is not None and requested.removeprefix("xen-") != abi.release:
            raise UsageError(
                f"the libxc backend runs the installed libxenguest ({abi.release}, "
                f"{abi.library}), not {requested}; XLPY_LIBXENGUEST picks another library"
            )
        return abi.release

    def restore(
        self, request: RestoreRequest, fd: int, decision: Decision | None, *, framed: bool
    ) -> RestoreResult:
        """``xc_domain_restore`` on ``fd`` with the stream type ``decision`` gives."""
        assert decision is not None  # not raw: the pipeline decided
        opts: LibxcOptions = request.options
        args = RestoreArgs(
            io_fd=fd,
            dom=opts.domid,
            stream_type=int(decision.stream_type),
            store_evtchn=opts.store_evtchn,
            console_evtchn=opts.console_evtchn,
            store_domid=opts.store_domid,
            console_domid=opts.console_domid,
            hvm=request.guest == "hvm",
        )
        callbacks: Mapping[str, Callback] | None = request.callbacks
        base = RestoreResult(
            ok=False,
            backend=self.name,
            release=decision.release,
            decision=decision,
            stream_type=decision.stream_type,
            domid=opts.domid,
        )
        try:
            outputs = restore_libxc(
                args,
                callbacks,
                abi=detect(),
                out_of_process=opts.out_of_process,
                timeout=request.timeout,
            )
        except XenError as e:
            return dataclasses.replace(base, error=e, messages=(str(e),), detail=e)
        return dataclasses.replace(
            base,
            ok=True,
            rc=0,
            store_mfn=outputs.store_mfn,
            console_mfn=outputs.console_mfn,
            vm_generationid_addr=outputs.vm_generationid_addr,
            detail=outputs,
        )


BACKEND = LibxcBackend()
