"""Where a command's output goes: atomically to a path, or straight into a stream.

Every xlpy command that writes a stream or a file (``gen -o``, ``convert -o``,
``restore --rest-out``) opens its output with :func:`open_output`:

* a regular path (existing or not) is written under a temporary name in the
  same directory and renamed over the target only when the writer finished
  without an exception, so a failed run leaves no half-written file and the
  previous content untouched; the temporary file is removed on failure;
* ``-`` is standard output, and with ``fd_numbers=True`` a decimal number is an
  already open descriptor (Xen's ``open_file_or_fd``); both are written in place;
* an existing path that is not a regular file (a character or block device, a
  FIFO, a socket) is opened and written in place: renaming over it would
  replace the device node with a regular file.

A symbolic link is followed, so the file it names is replaced and the link kept.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from typing import Any, BinaryIO

from xlpy.errors import UsageError

#: Output buffer: large enough that page data goes out in few syscalls.
BUFFER_SIZE = 1 << 20


def fd_number(text: str) -> int | None:
    """The descriptor ``text`` names as a decimal integer (Xen's ``open_file_or_fd``), or None."""
    try:
        return int(text, 10)
    except ValueError:
        return None


def is_special(path: str) -> bool:
    """True when ``path`` exists and is not a regular file (renaming over it would replace it)."""
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


@contextlib.contextmanager
def open_output(
    name: str, *, fd_numbers: bool = False, buffer_size: int = BUFFER_SIZE
) -> Iterator[BinaryIO]:
    """Open the output ``name`` for writing, as described in the module docstring.

    Used as ``with open_output(path) as f: f.write(...)``.  An OSError opening,
    creating, writing, flushing or renaming the output becomes a
    :class:`UsageError` naming it (exit 2; a reader gone away stays a
    ``BrokenPipeError``); any exception from the body propagates unchanged, after
    the temporary file is removed.
    """
    fd = fd_number(name) if fd_numbers else None
    if name == "-" or fd is not None:
        what = "standard output" if fd is None else f"fd {fd}"
        if fd is None and sys.stdout is None:
            # Python leaves it None when fd 1 was closed at start-up; fd 1 may
            # since have been reused by a file opened for reading.
            raise UsageError("cannot write to standard output: it is closed")
        fd = 1 if fd is None else fd
        try:
            os.fstat(fd)
        except OSError as e:
            raise UsageError(f"cannot write to {what}: {e.strerror or e}") from None
        out = _Output(io.FileIO(fd, "wb", closefd=False), what, buffer_size)
        try:
            yield out
        finally:
            # Flushes but leaves the descriptor open.  A reader that went away
            # (``| head``) is not worth a second report.
            with contextlib.suppress(BrokenPipeError):
                out.close()
        return
    target = os.path.realpath(name)
    if is_special(target):
        with _guarded(name):
            raw = io.FileIO(target, "wb")
        with _Output(raw, name, buffer_size) as out:
            yield out
        return
    with _guarded(name):
        tfd, tmp = tempfile.mkstemp(
            prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=os.path.dirname(target)
        )
    try:
        with _guarded(name):
            # mkstemp creates 0600; give the file the mode open() would have.
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(tfd, 0o666 & ~umask)
        with _Output(io.FileIO(tfd, "wb"), name, buffer_size) as out:
            yield out
        with _guarded(name):
            os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class _Output(io.BufferedWriter):
    """A buffered writer whose OSErrors name the output (input errors stay apart)."""

    def __init__(self, raw: io.RawIOBase, name: str, buffer_size: int) -> None:
        super().__init__(raw, buffer_size=buffer_size)
        self._name = name

    def write(self, data: Any, /) -> int:
        with _guarded(self._name):
            return super().write(data)

    def flush(self) -> None:
        with _guarded(self._name):
            super().flush()

    def close(self) -> None:
        with _guarded(self._name):
            super().close()


@contextlib.contextmanager
def _guarded(name: str) -> Iterator[None]:
    """Turn an OSError about the output into a UsageError naming it."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as e:
        raise UsageError(f"cannot write {name}: {e.strerror or e}") from None
