"""Progress reporting shared by long-running sub-commands (``restore``, ``convert``).

Events are dicts with ``phase``, ``checkpoint``, ``pages`` and ``bytes``.  They go
as JSON lines to ``--progress-fd N`` and as a one-line bar to stderr only when
stderr is a terminal, so nothing ever lands in a pipe a toolstack reads.  ``-q`` drops
the bar; a descriptor asked for explicitly still gets its lines.

The bar: ``[#####.....]  42%  310.0 MiB/s  ETA 0:02  checkpoint 3  buffering  4909 pages
430.0 MiB / 1.0 GiB``; the bar, percentage, ETA and total only when the input is a
regular file (its size is known); for a pipe or socket the rate, pages and bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
import time
from typing import Any

from xlpy.errors import UsageError, XlpyError, error_json
from xlpy.progress import ProgressFn

#: True while the bar's line on stderr has no newline yet.
_line_open = False

#: Seconds into a run before a rate (and an ETA) is shown.
SETTLE = 0.5
#: Cells of the bar itself.
BAR_CELLS = 20
#: The phases after which the run is over: the bar's line is ended.
FINAL_PHASES = ("done", "failed")


def end_line() -> None:
    """End an unfinished bar line on stderr, so that a message after it (``interrupted``)
    starts on a line of its own instead of after the bar."""
    global _line_open
    if _line_open:
        sys.stderr.write("\n")
        sys.stderr.flush()
        _line_open = False


def input_size(fd: int) -> int | None:
    """Bytes left to read on ``fd`` when it is a regular file, else ``None`` (a pipe, a
    socket: the size is not known).  The offset is read, never moved: ``fd:N`` may be
    handed over part-way into a file."""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        return max(st.st_size - os.lseek(fd, 0, os.SEEK_CUR), 0)
    except OSError:
        return None


def _size(n: float) -> str:
    # MiB at the least: streams are MiB to GiB, and a line whose unit keeps changing
    # in the first second is harder to read than "0.0 MiB".
    n /= 1 << 20
    for unit in ("MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            break
        n /= 1024
    return f"{n:.1f} {unit}"


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds + 0.5), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def bar_line(event: dict[str, Any], total: int | None, elapsed: float) -> str:
    """The bar's text for ``event``, ``elapsed`` seconds into a run reading ``total``
    bytes (``None``: not known, so no percentage and no ETA)."""
    done = event["bytes"]
    # The first moments' rate is mostly start-up: an ETA from it would be wild.
    rate = done / elapsed if elapsed >= SETTLE else 0.0
    parts = []
    if total:
        frac = min(done / total, 1.0)
        cells = int(frac * BAR_CELLS)
        parts.append(f"[{'#' * cells}{'.' * (BAR_CELLS - cells)}] {frac * 100:3.0f}%")
    if rate > 0:
        parts.append(f"{_size(rate)}/s")
        if total and event["phase"] not in FINAL_PHASES:
            parts.append(f"ETA {_clock(max(total - done, 0) / rate)}")
    parts.append(f"checkpoint {event['checkpoint']}")
    if event["phase"] not in ("checkpoint", "pages"):  # already said by the words around
        parts.append(event["phase"])
    parts.append(f"{event['pages']} pages")
    parts.append(f"{_size(done)} / {_size(total)}" if total else _size(done))
    return "  ".join(parts)


class Progress:
    """JSON lines on a descriptor, or a one-line bar on a terminal's stderr.

    ``total`` is the input's size when known (:func:`input_size`).
    """

    def __init__(self, fd: int | None, bar: bool, total: int | None = None) -> None:
        self.fd = fd
        self.bar = bar
        self.total = total
        self._start = time.monotonic()

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
        self._write(event)
        if self.bar:
            self._draw(event)

    def _draw(self, event: dict[str, Any]) -> None:
        # Every event is drawn: the run's Throttle already spaces the steady ones
        # (INTERVAL), and dropping a phase change would leave a stale line on the
        # terminal while the stream waits (a Remus receiver between checkpoints).
        global _line_open
        final = event["phase"] in FINAL_PHASES
        line = bar_line(event, self.total, time.monotonic() - self._start)
        # A line longer than the terminal wraps, and ``\r`` then redraws only its tail.
        with contextlib.suppress(OSError):
            columns = os.get_terminal_size(sys.stderr.fileno()).columns
            if columns > 0:  # 0: a terminal that never said its size
                line = line[: columns - 1]
        # Open before the first byte is out: stderr writes through, and a signal between
        # the write and the flag would glue "interrupted" to the bar.
        _line_open = True
        sys.stderr.write(f"\r\x1b[K{line}" + ("\n" if final else ""))
        sys.stderr.flush()
        _line_open = not final

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
    input_fd: int | None = None,
) -> ProgressFn | None:
    """The reporter for ``--progress-fd fd`` (``None`` when nothing is to be shown).

    ``quiet`` (``-q``) means no bar; an explicit ``fd`` is still written to.

    ``busy_fds`` maps descriptors progress must not go to onto the reason
    (the stream being read, the ``--json`` output ...): :class:`UsageError`.

    ``input_fd`` is the stream's descriptor: a regular file's size gives the bar its
    percentage and ETA.
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
    total = input_size(input_fd) if bar and input_fd is not None else None
    return Progress(fd, bar, total)
