"""What the sub-commands share: their parsers' set-up, argument types, SOURCE, stdout.

A bad argument value (the ``type=`` callables) becomes argparse's usage error (exit 2)
with the parser's message.  Every report on standard output goes through
:func:`write_stdout`: a closed or full stdout is an :class:`~xlpy.errors.OutputError`
(exit 2) instead of a report silently lost; a reader that went away (``| head``) is a
``BrokenPipeError``, which ``xlpy`` ends quietly with 141, a shell's status for a
command killed by SIGPIPE.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import re
import sys
import syslog
from collections.abc import Iterator
from typing import Any

from xlpy.errors import OutputError, TerminalStream, UsageError
from xlpy.outfile import guarded
from xlpy.stream.legacy.framing import parse_width
from xlpy.stream.source import ByteSource, open_source

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``64M``, ``1G``, ``512K``, ``4096`` (bytes; suffixes are binary, ``iB``/``B`` allowed)."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"bad size {text!r} (expected e.g. 64M, 1G)")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def width_arg(text: str) -> int:
    """A width in bytes (4, 8) or bits (32, 64), as :func:`parse_width` reads it."""
    try:
        return parse_width(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def size_arg(text: str) -> int:
    """A size as :func:`parse_size` reads it."""
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def seconds_arg(text: str) -> float:
    """A positive number of seconds."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return v


#: ``--timeout``'s help: what every reader of a stream does with it.
TIMEOUT_HELP = (
    "fail with a timeout error (exit 1) naming the offset when the input sends no byte "
    "for SECONDS (a sender that stalled with the connection open); default: wait"
)


def add_timeout(parser: argparse.ArgumentParser, help: str = TIMEOUT_HELP) -> None:
    """``--timeout SECONDS`` (``args.timeout``): the stall bound on SOURCE."""
    parser.add_argument("--timeout", type=seconds_arg, metavar="SECONDS", help=help)


class ToolLog:
    """Messages as Xen's migration tools (``convert-legacy-stream``, ``verify-stream-v2``)
    route them: to stderr (``to_stdout``: stdout), or with ``use_syslog`` to syslog instead
    (as ``name`` with a dash, with the pid); :meth:`info` only when ``verbose``.  Errors go
    to syslog only: the caller prints them on stderr either way, as Xen's tools do."""

    def __init__(
        self, name: str, *, verbose: bool, use_syslog: bool, to_stdout: bool = False
    ) -> None:
        self.name = name
        self.verbose = verbose
        self.syslog = use_syslog
        self.to_stdout = to_stdout
        if use_syslog:
            syslog.openlog(name.replace(" ", "-"), syslog.LOG_PID)

    def emit(self, priority: int, message: str) -> None:
        """``message`` to syslog at ``priority`` (line by line) or to the stream."""
        if self.syslog:
            for line in message.splitlines():
                syslog.syslog(priority, line)
        elif self.to_stdout:
            write_stdout(message)
        else:
            print(message, file=sys.stderr)

    def info(self, message: str) -> None:
        """A summary line, shown with ``-v`` only."""
        if self.verbose:
            self.emit(syslog.LOG_INFO, message)

    def warning(self, message: str) -> None:
        """A warning, always shown."""
        self.emit(syslog.LOG_WARNING, f"{self.name}: warning: {message}")

    def error(self, message: str) -> None:
        """An error's syslog copy (with ``--syslog``; its stderr line is the caller's)."""
        if self.syslog:
            for line in message.splitlines():
                syslog.syslog(syslog.LOG_ERR, line)


def command_parser(
    subparsers: Any, name: str, doc: str | None, help: str, **kwargs: Any
) -> argparse.ArgumentParser:
    """Sub-command ``name``'s parser: ``help`` in ``xlpy --help``, the first line of its
    module's ``doc`` as its description (``kwargs``: more of ``add_parser``'s)."""
    description = plain_text(doc.splitlines()[0]) if doc else None
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, help=help, description=description, **kwargs
    )
    return parser


_LITERAL = re.compile(r"``(.+?)``")
_ROLE = re.compile(r":[a-z:]+:`(~?)([^`]+)`")


def plain_text(rest: str) -> str:
    """reST inline markup as the text a terminal shows: ``xlpy gen`` without its
    backquotes, a lone punctuation literal (``-``) in single quotes so that it does
    not read as a dash, a :mod:/:class:/... role as its target (``~``: the last name)."""

    def literal(m: re.Match[str]) -> str:
        text = m.group(1)
        return text if any(c.isalnum() for c in text) else f"'{text}'"

    def role(m: re.Match[str]) -> str:
        target = m.group(2)
        return target.rsplit(".", 1)[-1] if m.group(1) else target

    return _ROLE.sub(role, _LITERAL.sub(literal, rest))


def add_source(
    parser: argparse._ActionsContainer,
    metavar: str,
    *,
    optional: bool = False,
) -> None:
    """The SOURCE positional (``args.source``), as :func:`opened_source` takes it;
    ``optional``: it may be left out (``args.source`` is then ``None``: stdin)."""
    parser.add_argument(
        "source",
        nargs="?" if optional else None,
        metavar=metavar,
        help="stream file, '-' for stdin, or fd:N" + (" (default: stdin)" if optional else ""),
    )


@contextlib.contextmanager
def opened_source(
    spec: str, timeout: float | None = None, *, fd_numbers: bool = False
) -> Iterator[ByteSource]:
    """SOURCE (a path, ``-`` or ``fd:N``; with ``fd_numbers`` also a bare descriptor
    number, as Xen's tools take ``-i``) open for the block, a path closed after it; one
    that cannot be opened is a :class:`~xlpy.errors.UsageError`.  ``timeout``: the
    source's stall bound (``--timeout``)."""
    try:
        source, owned = open_source(spec, fd_numbers=fd_numbers, timeout=timeout)
    except TerminalStream:
        raise  # nothing failed to open: the command's usage is the answer
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot open {spec}: {e}") from None
    try:
        yield source
    finally:
        if owned is not None:
            owned.close()


@contextlib.contextmanager
def source_fd(spec: str) -> Iterator[int]:
    """SOURCE as a descriptor, for a receiver that reads it itself (:func:`opened_source`)."""
    with opened_source(spec) as source:
        assert source.fileno is not None
        yield source.fileno


#: How a write error names standard output.
STDOUT = "standard output"


def require_stdout() -> None:
    """Fail now (:class:`~xlpy.errors.OutputError`) when standard output was closed at
    start-up: a command that works before it reports (``restore``) must not do the work
    and then lose its report."""
    if sys.stdout is None:  # what Python leaves when fd 1 was closed (it may be reused since)
        raise OutputError(STDOUT, errno.EBADF, "it is closed")


def write_stdout(text: str) -> None:
    """``text`` and a newline on standard output, flushed at once, so that a closed or full
    stdout is an :class:`~xlpy.errors.OutputError` here, not a report silently lost (or a
    traceback when Python flushes at exit)."""
    require_stdout()
    try:
        with guarded(STDOUT):
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
    except OSError:
        _drop_stdout()
        raise


def _drop_stdout() -> None:
    """Point fd 1 at /dev/null: what the failed write left buffered then goes nowhere when
    Python flushes at exit, instead of failing again with "Exception ignored"."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # not a real file (a test's capture)
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)


def print_json(doc: Any, indent: int | None = None) -> None:
    """``doc`` as one JSON document on stdout, ended by a newline (:func:`write_stdout`)."""
    write_stdout(json.dumps(doc, indent=indent))
