"""Progress reporting shared by long-running sub-commands (``restore``, ``convert``).

Events are dicts with ``phase``, ``checkpoint``, ``pages`` and ``bytes``.  They go
as JSON lines to ``--progress-fd N`` and as a one-line bar to stderr only when
stderr is a terminal, so nothing ever lands in a pipe a toolstack reads.  ``-q`` drops
the bar; a descriptor asked for explicitly still gets its lines.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Any

from xlpy.errors import UsageError, XlpyError, error_json
from xlpy.progress import ProgressFn

#: True while the bar's line on stderr has no newline yet.
_line_open = False


def end_line() -> None:
    """End an unfinished bar line on stderr, so that a message after it (``interrupted``)
    starts on a line of its own instead of after the bar."""
    global _line_open
    if _line_open:
        sys.stderr.write("\n")
        sys.stderr.flush()
        _line_open = False


class Progress:
    """JSON lines on a descriptor, or a one-line bar on a terminal's stderr."""

    def __init__(self, fd: int | None, bar: bool) -> None:
        self.fd = fd
        self.bar = bar

    def _write(self, event: dict[str, Any]) -> None:
        if self.fd is not None:
            try:
                os.write(self.fd, (json.dumps(event) + "\n").encode())
            except OSError as e:
                # The consumer went away (EPIPE) or the disk filled: the run stops,
                # saying why, rather than dying on a signal with nothing on stderr.
                raise XlpyError(
                    f"--progress-fd {self.fd}: cannot write progress: {e.strerror}"
                ) from None

    def __call__(self, event: dict[str, Any]) -> None:
        global _line_open
        self._write(event)
        if self.bar:
            mib = event["bytes"] / (1 << 20)
            sys.stderr.write(
                f"\r{event['phase']:<10} checkpoint {event['checkpoint']:>4}  "
                f"{event['pages']:>10} pages  {mib:10.1f} MiB"
            )
            _line_open = event["phase"] not in ("done", "failed")
            if not _line_open:
                sys.stderr.write("\n")
            sys.stderr.flush()

    def error(self, error: BaseException) -> None:
        """The last line on the descriptor of a run that failed: ``{"phase": "error",
        "error": {...}}``, the error object of every command's ``--json``."""
        # If the descriptor is gone too, the error itself is still reported on stderr.
        with contextlib.suppress(XlpyError):
            self._write({"phase": "error", "error": error_json(error)})


def make_progress(
    fd: int | None,
    *,
    quiet: bool = False,
    busy_fds: dict[int, str] | None = None,
) -> ProgressFn | None:
    """The reporter for ``--progress-fd fd`` (``None`` when nothing is to be shown).

    ``quiet`` (``-q``) means no bar; an explicit ``fd`` is still written to.

    ``busy_fds`` maps descriptors progress must not go to onto the reason
    (the stream being read, the ``--json`` output ...): :class:`UsageError`.
    """
    if fd is not None:
        why = (busy_fds or {}).get(fd)
        if why is not None:
            raise UsageError(f"--progress-fd {fd} {why}")
        try:
            os.fstat(fd)
        except OSError as e:
            raise UsageError(f"--progress-fd {fd}: {e.strerror}") from None
    bar = not quiet and fd != 2 and sys.stderr.isatty()
    if fd is None and not bar:
        return None
    return Progress(fd, bar)
