"""Operations, stream types and the safety rules, as data: the bottom of xlpy.

A toolstack knows what it is doing (restoring a file, receiving a migration, being a
Remus or COLO secondary); the stream and the sender's version do not say so reliably
(legacy-stream.md §12-§14).  :func:`stream_type_for` turns the operation into libxc's
stream type, and :func:`decide` checks it against what the receiving libxc release does
with it, from the outcome matrix (§12):

* libxc 4.0-4.3.1 takes no ``checkpointed_stream``: a plain restore is made safe by
  *framing* (xlpy forwards exactly the first checkpoint's libxc image and closes the
  pipe, so libxc cannot eat what follows: the EAT cell) and a Remus receive is refused,
  since xlpy cannot tell libxc it is one;
* 4.4.x destroys the backup on Remus failover (R-DIE44): refused;
* COLO needs 4.7's stream-type enum: refused, and no ``force`` makes it possible.

This module imports nothing of xlpy, so the binding, the receivers, the backends and
the CLI all take these names from one place.  Bad input raises :class:`ValueError`;
:mod:`xlpy.decision` turns a decision into a logged, typed refusal.
"""

from __future__ import annotations

import enum
import logging
import re
from dataclasses import dataclass

log = logging.getLogger("xlpy.toolstack")


class Operation(enum.StrEnum):
    """What the toolstack is doing; the only input to the stream-type decision.

    The values are the one spelling of each operation, in the API and on the command
    line (``xlpy restore --operation migrate-receive``).
    """

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


def parse_operation(operation: Operation | str) -> Operation:
    """``operation`` as an :class:`Operation`; :class:`ValueError` names the known ones."""
    try:
        return Operation(operation)
    except ValueError:
        known = ", ".join(o.value for o in Operation)
        raise ValueError(f"unknown operation {operation!r} (known: {known})") from None


def stream_type_for(operation: Operation | str) -> StreamType:
    """The stream type for ``operation``; logs the decision and its reason.

    Takes no sender version on purpose: only the receiving toolstack knows whether it
    is a Remus/COLO secondary.
    """
    op = parse_operation(operation)
    st = _STREAM_FOR[op]
    log.info("stream type %s: operation is %s", st.name, op.value)
    return st


_VERSION = r"(\d+)\.(\d+)(?:\.(\d+))?"
_RELEASE = re.compile(rf"^(?:xen-)?{_VERSION}(?:-{_VERSION})?$")


def release_span(release: str) -> tuple[Version, Version]:
    """The versions ``release`` may stand for: ``"4.4"`` is 4.4.0-4.4.x, ``"4.3.1"`` one.

    A range (an ABI generation's name, ``"4.3.2-4.4"``) spans its releases; receiver
    names (``"xen-4.3.1"``) work too.  :class:`ValueError` for anything else.
    """
    m = _RELEASE.match(release)
    if not m:
        raise ValueError(f"not a Xen release: {release!r} (e.g. 4.17, 4.3.1, xen-4.4)")
    lo_major, lo_minor, lo_patch, hi_major, hi_minor, hi_patch = m.groups()
    lo = (int(lo_major), int(lo_minor), int(lo_patch or 0))
    if hi_major is None:
        hi_major, hi_minor, hi_patch = lo_major, lo_minor, lo_patch
    hi = (int(hi_major), int(hi_minor), int(hi_patch) if hi_patch else _PATCH_ANY)
    return lo, hi


def decide(operation: Operation | str, release: str) -> Decision:
    """The rules' verdict for ``operation`` on ``release``, without raising or logging.

    Where ``release`` spans releases that the rules treat differently (``"4.3"``,
    ``"4.3.2-4.4"``), the strictest verdict wins.
    """
    op = parse_operation(operation)
    st = _STREAM_FOR[op]
    lo, hi = release_span(release)
    verdict, reason = Verdict.ALLOW, f"libxc {release} receives {st.name} streams as told"
    for rule in RULES:
        overlaps = rule.stream_type is st and rule.first <= hi and lo <= rule.last
        if overlaps and _SEVERITY[rule.verdict] > _SEVERITY[verdict]:
            partial = not (rule.first <= lo and hi <= rule.last)
            verdict = rule.verdict
            reason = rule.reason + (f" (on some releases {release} may be)" if partial else "")
    return Decision(op, release, st, verdict, reason)


#: ``checkpoint``'s "checkpoint applied, keep receiving" (``XGR_CHECKPOINT_SUCCESS``).
XGR_CHECKPOINT_SUCCESS = 1
