"""The toolstack decision: the stream type comes from the caller's *operation*.

A toolstack knows what it is doing (restoring a file, receiving a migration, being a
Remus or COLO secondary); the stream and the sender's version do not say so reliably
(legacy-stream.md §12-§14).  :func:`stream_type_for` turns the operation into libxc's
stream type, and :func:`check_operation` checks it against what the receiving libxc
release does with it, from the outcome matrix (§12):

* libxc 4.0-4.3.1 takes no ``checkpointed_stream``: a plain restore is made safe by
  *framing* (xlpy forwards exactly the first checkpoint's libxc image and closes the
  pipe, so libxc cannot eat what follows: the EAT cell) and a Remus receive is refused,
  since xlpy cannot tell libxc it is one;
* 4.4.x destroys the backup on Remus failover (R-DIE44): refused;
* COLO needs 4.7's stream-type enum: refused, and no ``force`` makes it possible.

:func:`restore_libxc_operation` drives the libxc backend with that decision (framing
included); the simulated backend takes the same decision from the same function.

``force=True`` overrides the refusals a caller may knowingly accept, never the
impossible ones.  Rules are data (:data:`RULES`) so each is testable alone.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

from xlpy.binding import Abi, Callback, RestoreRequest, RestoreResult, detect, restore_libxc
from xlpy.binding.forward import Forwarded, Forwarder
from xlpy.binding.generations import BY_NAME, REQUIRED_CALLBACKS
from xlpy.errors import RestoreRefused, UsageError, XenError

log = logging.getLogger("xlpy.toolstack")


class Operation(enum.StrEnum):
    """What the toolstack is doing; the only input to the stream-type decision."""

    RESTORE = "restore"
    MIGRATE_RECEIVE = "migrate-receive"
    REMUS_RECEIVE = "remus-receive"
    COLO_RECEIVE = "colo-receive"


class StreamType(enum.IntEnum):
    """libxc's stream type (``xc_stream_type_t``; ``checkpointed_stream`` 0/1 before 4.7)."""

    PLAIN = 0
    REMUS = 1
    COLO = 2


_STREAM_FOR = {
    Operation.RESTORE: StreamType.PLAIN,
    Operation.MIGRATE_RECEIVE: StreamType.PLAIN,
    Operation.REMUS_RECEIVE: StreamType.REMUS,
    Operation.COLO_RECEIVE: StreamType.COLO,
}


class Verdict(enum.Enum):
    """What the toolstack does with an operation on a libxc release."""

    ALLOW = "allow"
    #: Allowed, with xlpy framing the first checkpoint's image for libxc.
    FRAME = "frame"
    #: Refused unless the caller forces it.
    REFUSE = "refuse"
    #: Refused; cannot be forced (libxc cannot express it).
    IMPOSSIBLE = "impossible"


_SEVERITY = {Verdict.ALLOW: 0, Verdict.FRAME: 1, Verdict.REFUSE: 2, Verdict.IMPOSSIBLE: 3}
_PATCH_ANY = 999  # "4.4" means every 4.4.x

Version = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of the safety table: ``stream_type`` on releases ``first``..``last``."""

    name: str
    stream_type: StreamType
    first: Version
    last: Version
    verdict: Verdict
    reason: str


RULES: tuple[Rule, ...] = (
    Rule(
        "colo-before-4.7",
        StreamType.COLO,
        (4, 0, 0),
        (4, 6, _PATCH_ANY),
        Verdict.IMPOSSIBLE,
        "COLO needs libxc 4.7 or later (xc_migration_stream_t); older libxc has no way to be told",
    ),
    Rule(
        "remus-without-argument",
        StreamType.REMUS,
        (4, 0, 0),
        (4, 3, 1),
        Verdict.REFUSE,
        "libxc 4.0-4.3.1 takes no checkpointed_stream, so xlpy cannot tell it this is "
        "Remus; the backup's behaviour would depend on the sender alone (legacy-stream.md "
        "§12, R-pre/R-bug)",
    ),
    Rule(
        "remus-4.4-failover",
        StreamType.REMUS,
        (4, 4, 0),
        (4, 4, _PATCH_ANY),
        Verdict.REFUSE,
        "libxc 4.4.x destroys the backup on Remus failover: errors after a completed "
        "checkpoint go to `out` (c2ba706c44, R-DIE44 in legacy-stream.md §12)",
    ),
    Rule(
        "plain-without-argument",
        StreamType.PLAIN,
        (4, 0, 0),
        (4, 3, 1),
        Verdict.FRAME,
        "libxc 4.0-4.3.1 reads past the last checkpoint into what follows (the EAT cell "
        "of legacy-stream.md §12): xlpy forwards exactly the first checkpoint's image "
        "through a pipe and hands the rest back",
    ),
)


@dataclass(frozen=True, slots=True)
class Decision:
    """The toolstack's decision for one operation on one libxc release."""

    operation: Operation
    release: str
    stream_type: StreamType
    verdict: Verdict
    reason: str
    #: The caller forced a :attr:`Verdict.REFUSE` through (the verdict stays REFUSE).
    forced: bool = False

    @property
    def framed(self) -> bool:
        """xlpy must frame the first checkpoint for libxc (plain, no argument)."""
        return self.verdict is Verdict.FRAME


class OperationRefused(RestoreRefused):
    """:class:`~xlpy.errors.RestoreRefused` with the :class:`Decision` that refused."""

    def __init__(self, message: str, decision: Decision) -> None:
        super().__init__(message)
        self.decision = decision


def stream_type_for(operation: Operation | str) -> StreamType:
    """The stream type for ``operation``; logs the decision and its reason.

    Takes no sender version on purpose: only the receiving toolstack knows whether it
    is a Remus/COLO secondary.
    """
    op = _operation(operation)
    st = _STREAM_FOR[op]
    log.info("stream type %s: operation is %s", st.name, op.value)
    return st


def _operation(operation: Operation | str) -> Operation:
    try:
        return Operation(operation)
    except ValueError:
        known = ", ".join(o.value for o in Operation)
        raise UsageError(f"unknown operation {operation!r} (known: {known})") from None


_RELEASE = re.compile(r"^(?:xen-)?(\d+)\.(\d+)(?:\.(\d+))?$")


def release_span(release: str) -> tuple[Version, Version]:
    """The versions ``release`` may stand for: ``"4.4"`` is 4.4.0-4.4.x, ``"4.3.1"`` one.

    An ABI generation name (``"4.3.2-4.4"``) spans its releases; receiver names
    (``"xen-4.3.1"``) work too.
    """
    m = _RELEASE.match(release)
    if not m:
        if release in BY_NAME:
            releases = BY_NAME[release].releases
            return release_span(releases[0])[0], release_span(releases[-1])[1]
        raise UsageError(f"not a Xen release: {release!r} (e.g. 4.17, 4.3.1, xen-4.4)")
    major, minor = int(m[1]), int(m[2])
    if m[3] is None:
        return (major, minor, 0), (major, minor, _PATCH_ANY)
    patch = int(m[3])
    return (major, minor, patch), (major, minor, patch)


def decide(operation: Operation | str, generation: str) -> Decision:
    """The rules' verdict for ``operation`` on ``generation``, without raising or logging.

    Where ``generation`` spans releases that the rules treat differently (``"4.3"``,
    ``"4.3.2-4.4"``), the strictest verdict wins.
    """
    op = _operation(operation)
    st = _STREAM_FOR[op]
    lo, hi = release_span(generation)
    verdict, reason = Verdict.ALLOW, f"libxc {generation} receives {st.name} streams as told"
    for rule in RULES:
        overlaps = rule.stream_type is st and rule.first <= hi and lo <= rule.last
        if overlaps and _SEVERITY[rule.verdict] > _SEVERITY[verdict]:
            partial = not (rule.first <= lo and hi <= rule.last)
            verdict = rule.verdict
            reason = rule.reason + (f" (on some releases {generation} may be)" if partial else "")
    return Decision(op, generation, st, verdict, reason)


def check_operation(operation: Operation | str, generation: str, force: bool = False) -> Decision:
    """Decide ``operation`` on libxc ``generation`` (a release such as ``"4.4"``,
    ``"4.3.1"``, ``"xen-4.3.1"``, or an ABI generation name) and log it; raises
    :class:`OperationRefused` (a :class:`~xlpy.errors.RestoreRefused`) for an unsafe
    one unless ``force`` (which never overrides :attr:`Verdict.IMPOSSIBLE`); a forced
    decision keeps its :attr:`Verdict.REFUSE` with ``forced`` set.
    """
    stream_type_for(operation)  # logs the stream type and why
    decision = decide(operation, generation)
    op, verdict, reason = decision.operation, decision.verdict, decision.reason
    if verdict is Verdict.IMPOSSIBLE or (verdict is Verdict.REFUSE and not force):
        hint = "" if verdict is Verdict.IMPOSSIBLE else " (force=True / --force to proceed)"
        log.warning("refusing %s on libxc %s: %s", op.value, generation, reason)
        raise OperationRefused(
            f"{op.value} refused on libxc {generation}: {reason}{hint}", decision
        )
    if verdict is Verdict.REFUSE:
        log.warning("%s on libxc %s forced by the caller despite: %s", op.value, generation, reason)
        return dataclasses.replace(decision, forced=True)
    log.info("%s on libxc %s: %s (%s)", op.value, generation, verdict.value, reason)
    return decision


#: ``checkpoint``'s "checkpoint applied, keep receiving" (``XGR_CHECKPOINT_SUCCESS``).
XGR_CHECKPOINT_SUCCESS = 1


def _checkpoint_received() -> int:
    return XGR_CHECKPOINT_SUCCESS


def secondary_callbacks(operation: Operation | str, abi: Abi) -> dict[str, Callback]:
    """The callbacks a secondary receiving a bare libxc stream needs on ``abi``.

    A Remus secondary's ``checkpoint`` is called by libxc after each complete
    checkpoint; libxl's (``libxl__remus_domain_restore_checkpoint_callback``) reads its
    own records that follow in the libxl stream, then answers "keep receiving".  A bare
    libxc stream has no such records, so this one just answers
    :data:`XGR_CHECKPOINT_SUCCESS`; libxc then fails over when the stream ends.  Only
    the slots ``abi`` has are returned (4.0-4.5 libxc handles Remus without one).

    A COLO secondary cannot be defaulted: its ``suspend``/``postcopy``/
    ``wait_checkpoint``/``restore_results`` must drive the secondary's QEMU and answer
    the primary over the back channel, which only a real toolstack can do; raises
    :class:`~xlpy.errors.UsageError`.
    """
    st = stream_type_for(operation)
    if st is StreamType.COLO:
        raise UsageError(
            "no default COLO secondary: COLO needs a toolstack's suspend, postcopy, "
            "wait_checkpoint and restore_results callbacks (driving the secondary's QEMU) "
            "and a back channel to the primary; pass them to xlpy.restore(callbacks=...)"
        )
    defaults: dict[str, Callback] = {"checkpoint": _checkpoint_received}
    wanted = REQUIRED_CALLBACKS[int(st)] & abi.generation.callbacks_for(abi.release)
    return {name: defaults[name] for name in wanted}


@dataclass(frozen=True, slots=True)
class LibxcRestore:
    """A libxc restore driven by an operation."""

    decision: Decision
    result: RestoreResult
    #: When framed: the image size sent to libxc and the bytes read past it.  The caller
    #: reads ``forwarded.rest`` and then the rest of its descriptor (e.g. its QEMU record).
    forwarded: Forwarded | None


def restore_libxc_operation(
    request: RestoreRequest,
    operation: Operation | str,
    *,
    callbacks: Mapping[str, Callback] | None = None,
    force: bool = False,
    abi: Abi | None = None,
    out_of_process: bool = True,
    timeout: float | None = None,
    libxc_reads_qemu: bool = True,
    guest: str | None = None,
    env: Mapping[str, str] | None = None,
) -> LibxcRestore:
    """Restore with the installed libxenguest as ``operation`` requires.

    The stream type comes from ``operation`` (``request.stream_type`` must be left at
    PLAIN); the installed release is checked by :func:`check_operation` (raising
    :class:`~xlpy.errors.RestoreRefused`), and on libxc without the argument a plain
    restore is framed: libxc reads the first checkpoint's image from a pipe fed from
    ``request.io_fd``.  ``libxc_reads_qemu``/``guest`` describe the stream for the
    framing (upstream libxc reads the HVM QEMU record as part of its tail).  When a
    framed restore fails because the input is truncated or malformed, the input's
    :class:`~xlpy.errors.StreamError` is raised (from libxc's error), not libxc's view
    of its pipe ending early; the forwarder thread has ended whenever this returns.
    """
    if request.stream_type != StreamType.PLAIN:
        raise UsageError("the stream type comes from the operation, not the request")
    abi = detect() if abi is None else abi
    decision = check_operation(operation, abi.release, force)
    request = dataclasses.replace(request, stream_type=int(decision.stream_type))
    if not decision.framed:
        result = restore_libxc(
            request, callbacks, abi=abi, out_of_process=out_of_process, timeout=timeout, env=env
        )
        return LibxcRestore(decision, result, None)
    fwd = Forwarder(request.io_fd, libxc_reads_qemu=libxc_reads_qemu, guest=guest)
    try:
        result = restore_libxc(
            dataclasses.replace(request, io_fd=fwd.read_fd),
            callbacks,
            abi=abi,
            out_of_process=out_of_process,
            timeout=timeout,
            env=env,
        )
    except BaseException as e:
        input_error = fwd.stop()
        # libxc only sees its pipe end early; the input's own error says where and why.
        if input_error is not None and isinstance(e, XenError):
            raise input_error from e
        raise
    return LibxcRestore(decision, result, fwd.result())
