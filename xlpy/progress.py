"""Progress events of long runs (restore, convert, ``--to legacy``), throttled in one place.

An event is a dict with ``phase``, ``checkpoint``, ``pages`` and ``bytes``; where it goes
(a ``--progress-fd`` descriptor, a terminal bar) is :mod:`xlpy.cli.progress`'s business.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

#: Receives one progress event.
ProgressFn = Callable[[dict[str, Any]], None]

#: Least time between two unforced events: often enough for a bar, cheap per batch.
INTERVAL = 0.25


class Throttle:
    """Passes events to ``fn`` at most every ``interval`` seconds, forced ones always.

    Callers report at every step and force the phase changes (``checkpoint``, ``done``,
    ``failed`` ...), so a consumer sees every phase and a steady trickle in between.
    """

    def __init__(self, fn: ProgressFn | None, interval: float = INTERVAL) -> None:
        self.fn = fn
        self.interval = interval
        self._last = 0.0

    def __call__(
        self, phase: str, *, checkpoint: int, pages: int, nbytes: int, force: bool = False
    ) -> None:
        """One event; dropped when unforced and within ``interval`` of the last one sent."""
        if self.fn is None:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        self.fn({"phase": phase, "checkpoint": checkpoint, "pages": pages, "bytes": nbytes})


#: A run's counters when it reports: checkpoints complete, pages and bytes so far.
Counters = Callable[[], tuple[int, int, int]]


class RunProgress:
    """The progress events of one run that keeps its own counters (a receiver, a converter).

    ``counters`` is read at every report, so each step of the run names only its phase.
    An event's ``checkpoint`` is the one being read, or after a completion (``ended``)
    the last one complete, numbered as the run's result numbers them: from ``first``
    (a restore's ``committed_checkpoint`` counts from 0, a conversion's checkpoints
    from 1), so that the last event names the checkpoint the result does.
    """

    def __init__(self, fn: ProgressFn | None, counters: Counters, *, first: int = 0) -> None:
        self._throttle = Throttle(fn)
        self._counters = counters
        self._first = first

    def __call__(self, phase: str, *, force: bool = False, ended: bool = False) -> None:
        """Report ``phase`` with the run's counters, throttled as :class:`Throttle` does;
        ``ended``: a checkpoint (or the image) is complete."""
        complete, pages, nbytes = self._counters()
        # A plain v2 stream has no CHECKPOINT record: its one image ends at 0 complete.
        checkpoint = max(complete + self._first - int(ended), self._first)
        self._throttle(phase, checkpoint=checkpoint, pages=pages, nbytes=nbytes, force=force)
