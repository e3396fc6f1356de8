"""Restore backends: one protocol, one registry, one request and one result for all.

The restore pipeline (:func:`xlpy.api.run`) is::

    RestoreRequest -> Decision -> [framing] -> Backend -> RestoreResult

A :class:`Backend` receives a stream from a descriptor into some domain: ``sim`` (the
simulated libxc of a release, legacy or migration v2, into a domain directory),
``libxc`` (the installed libxenguest, into a real domain) and ``fakexen`` (a release's
real libxc, built from source, on the user-space Xen, into a domain directory).  Each
backend declares the options only it takes (``out`` for ``sim``, ``domid`` for
``libxc``) as a dataclass, so the front ends (:func:`xlpy.restore`, ``xlpy restore``)
pass them through unread; a new backend is one :func:`register_backend` call.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from xlpy.errors import UsageError, XlpyError, error_json
from xlpy.operation import Decision, Operation, StreamType
from xlpy.progress import ProgressFn


@dataclass(frozen=True, slots=True, kw_only=True)
class RestoreRequest:
    """One restore as a toolstack asks for it, whatever the backend."""

    #: The stream: a readable descriptor, never seeked (pipes and sockets work).
    fd: int
    #: What the toolstack is doing; ``None`` drives the release raw (simulated backends
    #: only): told ``checkpointed`` or nothing, its regressions reproduce.
    operation: Operation | None
    #: The receiving libxc release; ``None``: the backend's default.
    release: str | None = None
    backend: str = "sim"
    force: bool = False
    #: The receiving-toolstack model (:data:`xlpy.receiver.TOOLSTACKS`); ``None``: the
    #: default.
    toolstack: str | None = None
    #: Raw runs only: ``checkpointed_stream`` as given (``None``: the toolstack's default).
    checkpointed: int | None = None
    #: ``restore_callbacks`` slots by name (libxc backends).
    callbacks: Mapping[str, Callable[..., Any]] | None = None
    progress: ProgressFn | None = None
    #: ``"pv"``/``"hvm"`` and the toolstack width in bytes, where the stream cannot tell.
    guest: str | None = None
    width: int | None = None
    timeout: float | None = None
    #: The backend's own options (its ``Options`` dataclass).
    options: Any = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RestoreResult:
    """The outcome of one restore, the same shape for every backend and every outcome.

    ``ok``
        The domain was restored (sim: the directory ``out`` exists; libxc: domain
        ``domid`` is ready to unpause).
    ``backend``, ``release``, ``decision``
        Which backend and libxc release ran, and the toolstack decision that was applied
        (``decision.operation``, ``.stream_type``, ``.verdict``, ``.reason``, ``.forced``,
        ``.framed``); ``decision`` is ``None`` for a raw run (no operation).
    ``rest``
        When the stream was framed: the bytes after the first checkpoint's libxc image
        (the QEMU record, a toolstack trailer) that xlpy read and libxc never saw.  If
        the source was a path, this is everything up to end of file; if it was a
        descriptor or file object, read on from it after these bytes.  ``b""`` when not
        framed.
    ``framing``, ``image_bytes``
        When framed: the toolstack header (xl/xend) xlpy read, and the image size
        given to libxc.
    ``error``
        Why the restore failed (``None`` whenever ``ok``): a
        :class:`~xlpy.errors.StreamError` (the stream, or a framing read error) or a
        :class:`~xlpy.errors.XenError` (libxc).
    ``toolstack_error``
        Why the receiving toolstack rejected what libxc restored (the EAT cell).
    ``messages``
        libxc's log lines (sim: rendered as libxc's stdio logger prints them).
    ``diagnosis``
        xlpy's explanation of the outcome, apart from libxc's lines: the cause and the
        flag or operation that avoids it (sim: :mod:`xlpy.receiver.diagnosis`); one
        paragraph a line, ``None`` when there is nothing to explain.
    ``committed_checkpoint``, ``checkpoints_complete``, ``bytes_past_image``
        Simulated backends: the 0-based index of the last checkpoint applied, the
        checkpoints received whole, and the bytes libxc consumed after the committed one
        (4 in the EAT cell); ``None`` where a backend cannot know.
    ``out``, ``domid``, ``store_mfn``, ``console_mfn``, ``vm_generationid_addr``
        Where the domain is: a domain directory (sim) or a domain id with
        ``xc_domain_restore``'s results (libxc).
    ``detail``
        The backend's own result, for details not lifted here (:attr:`sim`,
        :attr:`libxc`).
    """

    ok: bool
    backend: str
    release: str | None
    decision: Decision | None
    stream_type: StreamType | None = None
    rest: bytes = b""
    framing: Any = None
    image_bytes: int | None = None
    error: XlpyError | None = None
    toolstack: str | None = None
    toolstack_error: str | None = None
    messages: tuple[str, ...] = ()
    diagnosis: str | None = None
    rc: int | None = None
    committed_checkpoint: int | None = None
    checkpoints_complete: int | None = None
    bytes_past_image: int | None = None
    domain_destroyed: bool = False
    out: str | None = None
    domid: int | None = None
    store_mfn: int | None = None
    console_mfn: int | None = None
    vm_generationid_addr: int | None = None
    detail: Any = field(default=None, compare=False)

    @property
    def operation(self) -> Operation | None:
        """The caller's operation (``None`` for a raw run)."""
        return None if self.decision is None else self.decision.operation

    @property
    def framed(self) -> bool:
        """xlpy forwarded only the first checkpoint's image to libxc."""
        return self.decision is not None and self.decision.framed

    @property
    def sim(self) -> Any:
        """The simulated receiver's :class:`~xlpy.receiver.domains.Outcome`, if it ran."""
        return self.detail if self.backend == "sim" else None

    @property
    def libxc(self) -> Any:
        """``xc_domain_restore``'s :class:`~xlpy.binding.RestoreOutputs`, if libxc ran."""
        return self.detail if self.backend == "libxc" and self.ok else None

    def to_json(self) -> dict[str, Any]:
        """The ``xlpy restore --json`` object: the same keys for every backend and outcome."""
        d = self.decision
        return {
            "ok": self.ok,
            "backend": self.backend,
            "release": self.release,
            "operation": None if d is None else d.operation.value,
            "stream_type": None if self.stream_type is None else self.stream_type.name,
            "verdict": None if d is None else d.verdict.value,
            "reason": None if d is None else d.reason,
            "forced": False if d is None else d.forced,
            "framed": self.framed,
            "image_bytes": self.image_bytes,
            "rest_bytes": len(self.rest),
            "rc": self.rc,
            "committed_checkpoint": self.committed_checkpoint,
            "checkpoints_complete": self.checkpoints_complete,
            "bytes_past_image": self.bytes_past_image,
            "domain_destroyed": self.domain_destroyed,
            "toolstack": self.toolstack,
            "toolstack_error": self.toolstack_error,
            "out": self.out,
            "domid": self.domid,
            "store_mfn": self.store_mfn,
            "console_mfn": self.console_mfn,
            "messages": list(self.messages),
            "diagnosis": self.diagnosis,
            "error": self.error_json(),
        }

    def error_json(self) -> dict[str, Any] | None:
        """The error object (:func:`xlpy.errors.error_json`); the toolstack's rejection
        when libxc itself succeeded (the EAT cell); ``None`` on success."""
        if self.ok:
            return None
        if self.error is not None:
            return error_json(self.error)
        message = self.toolstack_error or "restore failed"
        return error_json(None, kind="toolstack", type_="ToolstackRejected", message=message)


class Backend(Protocol):
    """Something that restores a domain from a stream descriptor."""

    #: The name callers use (``backend="sim"``).
    name: str
    #: The dataclass of this backend's own options (``xlpy.restore(..., **options)``).
    Options: type[Any]
    #: It can run a release raw (no operation: ``checkpointed`` as given, or nothing).
    raw: bool

    def release(self, requested: str | None) -> str:
        """The release that will receive: ``requested`` checked and spelt canonically,
        or the backend's default; :class:`~xlpy.errors.UsageError` if it cannot run."""
        ...

    def restore(
        self, request: RestoreRequest, fd: int, decision: Decision | None, *, framed: bool
    ) -> RestoreResult:
        """Receive from ``fd`` (the request's, or the framing pipe when ``framed``) as
        ``decision`` says, on ``request.release`` (already resolved).

        Stream and libxc failures are reported in the result, never raised; a bad
        request raises :class:`~xlpy.errors.UsageError`.  A domain that was not
        restored leaves nothing behind.
        """
        ...


#: Backend modules by name; each defines ``BACKEND``.  Loaded on first use, so naming
#: the ``sim`` backend never loads cffi.
_BACKENDS: dict[str, str] = {
    "sim": "xlpy.backends.sim",
    "libxc": "xlpy.backends.libxc",
    "fakexen": "xlpy.fakexen.backend",
}


def register_backend(name: str, module: str) -> None:
    """Make ``module`` (which defines ``BACKEND``) available as :func:`get_backend` ``(name)``."""
    _BACKENDS[name] = module


def backend_names() -> list[str]:
    """Every registered backend name, in registration order."""
    return list(_BACKENDS)


def get_backend(name: str) -> Backend:
    """The backend called ``name``, or :class:`~xlpy.errors.UsageError`."""
    module = _BACKENDS.get(name)
    if module is None:
        known = ", ".join(_BACKENDS)
        raise UsageError(f"unknown backend {name!r} (known: {known})")
    backend: Backend = importlib.import_module(module).BACKEND
    return backend


def make_options(backend: Backend, given: Mapping[str, Any]) -> Any:
    """``backend.Options(**given)``, with an unknown or missing option as a
    :class:`~xlpy.errors.UsageError` that names the backend and what it takes."""
    fields = dataclasses.fields(backend.Options)
    unknown = set(given) - {f.name for f in fields}
    takes = ", ".join(
        f"{f.name}={f.metadata['metavar']}" if "metavar" in f.metadata else f.name for f in fields
    )
    if unknown:
        raise UsageError(
            f"the {backend.name} backend takes no {', '.join(sorted(unknown))} (it takes: {takes})"
        )
    missing = [
        f.name
        for f in fields
        if f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        and given.get(f.name) is None
    ]
    if missing:
        raise UsageError(
            f"the {backend.name} backend needs {', '.join(missing)} (it takes: {takes})"
        )
    return backend.Options(**given)
