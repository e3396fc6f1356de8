"""The ``sim`` backend: the simulated libxc of a release, into a domain directory.

Legacy releases (4.0-4.5) run the legacy receiver (:mod:`xlpy.receiver.legacy`), the
migration-v2 release (``xen-4.17``) the v2 receiver (:mod:`xlpy.receiver.v2`); both
write the domain directory of :mod:`xlpy.receiver.domains.sim`.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

from xlpy.backends import RestoreRequest, RestoreResult
from xlpy.errors import XlpyError
from xlpy.operation import Decision, StreamType
from xlpy.receiver import restore as receiver_restore
from xlpy.receiver.diagnosis import diagnose
from xlpy.receiver.domains import Outcome
from xlpy.receiver.generations import generation
from xlpy.receiver.toolstacks import CALLER_READS_AFTER, DEFAULT_TOOLSTACK

log = logging.getLogger("xlpy.api")

#: The simulated release used when the caller names none and the installed
#: libxenguest is missing or newer than any simulated release: the newest legacy
#: receiver, which takes ``checkpointed_stream`` (R-fix).
DEFAULT_SIM_RELEASE = "xen-4.5"


def default_sim_release() -> str:
    """The simulated release used when the caller names none.

    The installed libxenguest's release (``xen-4.N``) when it is detectable and
    simulated, else :data:`DEFAULT_SIM_RELEASE`.
    """
    from xlpy.binding import detect

    try:
        name = f"xen-{detect().release}"
        generation(name)
    except XlpyError as e:
        log.info("simulating %s (installed libxenguest not usable: %s)", DEFAULT_SIM_RELEASE, e)
        return DEFAULT_SIM_RELEASE
    return name


@dataclass(frozen=True, slots=True, kw_only=True)
class SimOptions:
    """The ``sim`` backend's options."""

    #: The domain directory to create (must not exist).
    out: str | Path = field(metadata={"metavar": "DIR"})
    #: libxc's select timeout for the next checkpoint (``HEARTBEAT_MS`` = 1 s).
    heartbeat: float = 1.0


class SimBackend:
    """The simulated libxc of a release (legacy or migration v2)."""

    name = "sim"
    Options = SimOptions
    raw = True

    def release(self, requested: str | None) -> str:
        """``requested`` as the simulated release it names, or :func:`default_sim_release`."""
        return generation(default_sim_release() if requested is None else requested).name

    def restore(
        self, request: RestoreRequest, fd: int, decision: Decision | None, *, framed: bool
    ) -> RestoreResult:
        """Run the simulated receiver of ``request.release`` on ``fd``."""
        opts: SimOptions = request.options
        assert request.release is not None
        release = generation(request.release)
        ts = DEFAULT_TOOLSTACK if request.toolstack is None else request.toolstack
        checkpointed = request.checkpointed
        if decision is not None:
            # Only releases with the argument are told; the others cannot be (the rule).
            checkpointed = int(decision.stream_type) if release.takes_checkpointed else None
        outcome = receiver_restore(
            fd,
            generation=release.name,
            out=opts.out,
            checkpointed=checkpointed,
            # Framed: what the toolstack reads after libxc is the caller's, from ``rest``.
            toolstack=ts + CALLER_READS_AFTER if framed else ts,
            heartbeat=opts.heartbeat,
            # Framed, the receiver reads the forwarder's pipe, which stalls only when the
            # input does: the forwarder's bound names the input's offset; a second bound
            # on the pipe would race it and name the pipe's.
            timeout=None if framed else request.timeout,
            progress=request.progress,
            guest=request.guest,
            width=request.width,
        )
        outcome = dataclasses.replace(outcome, toolstack=ts)
        return from_outcome(outcome, decision)


def from_outcome(outcome: Outcome, decision: Decision | None) -> RestoreResult:
    """The pipeline's result for a simulated receiver's outcome."""
    told = decision.stream_type if decision is not None else None
    if told is None and outcome.checkpointed is not None:
        told = StreamType(outcome.checkpointed)
    return RestoreResult(
        ok=outcome.ok,
        backend="sim",
        release=outcome.generation,
        decision=decision,
        stream_type=told,
        error=None if outcome.ok else outcome.error,
        toolstack=outcome.toolstack,
        toolstack_error=outcome.toolstack_error,
        messages=tuple(outcome.messages),
        diagnosis=diagnose(outcome, framed=decision is not None and decision.framed),
        rc=outcome.rc,
        committed_checkpoint=outcome.committed_checkpoint,
        checkpoints_complete=outcome.checkpoints_complete,
        bytes_past_image=outcome.bytes_past_image,
        domain_destroyed=outcome.domain_destroyed,
        out=None if outcome.out is None else str(outcome.out),
        detail=outcome,
    )


BACKEND = SimBackend()
