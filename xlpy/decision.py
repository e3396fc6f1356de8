"""The decision stage of the restore pipeline: an operation on a release, checked and logged.

:func:`check_operation` applies :data:`xlpy.operation.RULES` to what the caller is doing
on the receiving libxc release, logs the stream type and the verdict with its reason,
and raises :class:`OperationRefused` for an unsafe operation the caller did not force.
"""

from __future__ import annotations

import dataclasses
import logging

from xlpy.errors import RestoreRefused, UsageError
from xlpy.operation import Decision, Operation, Verdict, decide, parse_operation, stream_type_for

log = logging.getLogger("xlpy.toolstack")


class OperationRefused(RestoreRefused):
    """:class:`~xlpy.errors.RestoreRefused` with the :class:`Decision` that refused."""

    def __init__(self, message: str, decision: Decision) -> None:
        super().__init__(message)
        self.decision = decision


def as_operation(value: Operation | str) -> Operation:
    """``value`` as an :class:`Operation`, or :class:`~xlpy.errors.UsageError`."""
    try:
        return parse_operation(value)
    except ValueError as e:
        raise UsageError(str(e)) from None


def decision_for(value: Operation | str, release: str) -> Decision:
    """:func:`xlpy.operation.decide`, with bad arguments as :class:`~xlpy.errors.UsageError`."""
    try:
        return decide(value, release)
    except ValueError as e:
        raise UsageError(str(e)) from None


def check_operation(operation: Operation | str, release: str, force: bool = False) -> Decision:
    """Decide ``operation`` on libxc ``release`` (``"4.4"``, ``"4.3.1"``, ``"xen-4.3.1"``, or an
    ABI generation name) and log it; raises :class:`OperationRefused` (a
    :class:`~xlpy.errors.RestoreRefused`) for an unsafe one unless ``force`` (which never
    overrides :attr:`Verdict.IMPOSSIBLE`); a forced decision keeps its
    :attr:`Verdict.REFUSE` with ``forced`` set.
    """
    stream_type_for(as_operation(operation))  # logs the stream type and why
    decision = decision_for(operation, release)
    op, verdict, reason = decision.operation, decision.verdict, decision.reason
    if verdict is Verdict.IMPOSSIBLE or (verdict is Verdict.REFUSE and not force):
        hint = "" if verdict is Verdict.IMPOSSIBLE else " (force=True / --force to proceed)"
        log.warning("refusing %s on libxc %s: %s", op.value, release, reason)
        raise OperationRefused(f"{op.value} refused on libxc {release}: {reason}{hint}", decision)
    if verdict is Verdict.REFUSE:
        log.warning("%s on libxc %s forced by the caller despite: %s", op.value, release, reason)
        return dataclasses.replace(decision, forced=True)
    log.info("%s on libxc %s: %s (%s)", op.value, release, verdict.value, reason)
    return decision
