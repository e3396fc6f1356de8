"""Where a command's output goes: atomically to a path, or straight into a stream.

Every xlpy command that writes a stream or a file (``gen -o``, ``convert -o``,
``restore --rest-out``) opens its output with :func:`open_output`:

* a regular path (existing or not) is written under a temporary name in the
  same directory and renamed over the target only when the writer finished
  without an exception, so a failed run leaves no half-written file and the
  previous content untouched; the temporary file is removed on failure;
* ``-`` is standard output, ``fd:N`` an already open descriptor, and with
  ``fd_numbers=True`` so is a bare decimal number (Xen's ``open_file_or_fd``); all are
  written in place;
* an existing path that is not a regular file (a character or block device, a
  FIFO, a socket) is opened with ``O_NOFOLLOW`` and written in place: renaming over
  it would replace the device node with a regular file.

A symbolic link is never followed: the rename replaces the link itself, so a link
another user planted in a shared directory cannot redirect a root-run command onto the
file it names (the target keeps its content and mode).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from typing import Any, BinaryIO

from xlpy.errors import OutputError, TerminalStream, UsageError

#: Output buffer: large enough that page data goes out in few syscalls.
BUFFER_SIZE = 1 << 20


def fd_number(text: str) -> int | None:
    """The descriptor ``text`` names as a decimal integer (Xen's ``open_file_or_fd``), or None."""
    try:
        return int(text, 10)
    except ValueError:
        return None


def fd_spec(text: str) -> int | None:
    """The descriptor of ``fd:N`` (``None`` for any other text); ``fd:abc`` is a UsageError."""
    if not text.startswith("fd:"):
        return None
    fd = fd_number(text[3:])
    if fd is None or fd < 0:
        raise UsageError(f"not a descriptor: {text!r} (fd:N, N a decimal number)")
    return fd


def stream_fd(name: str, *, fd_numbers: bool = False) -> int | None:
    """The descriptor the output ``name`` is written to in place: 1 for ``-``, N for
    ``fd:N`` (and, with ``fd_numbers``, for a bare decimal N); ``None`` for a path."""
    if name == "-":
        return 1
    fd = fd_spec(name)
    return fd_number(name) if fd is None and fd_numbers else fd


def check_room(name: str, need: int, *, fd_numbers: bool = False) -> None:
    """Refuse, before anything is written, an output path whose file system has fewer
    than ``need`` bytes free (:class:`~xlpy.errors.OutputError`, ENOSPC).

    Only a regular file can be checked: a stream output (``-``, ``fd:N``, a device or a
    FIFO) has no size to compare.  A directory that cannot be looked at is left to
    :func:`open_output` to report.
    """
    if stream_fd(name, fd_numbers=fd_numbers) is not None or is_special(name):
        return
    where = os.path.dirname(name) or "."
    try:
        st = os.statvfs(where)
    except OSError:
        return
    # root may also fill the blocks a file system reserves for it.
    free = (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize
    if free < need:
        raise OutputError(
            name,
            errno.ENOSPC,
            f"it needs at least {need} bytes ({_human(need)}); {where} has {free} "
            f"({_human(free)}) free",
        )


def _human(n: int) -> str:
    """``n`` bytes in the largest binary unit it has at least one of (``1.5 GiB``)."""
    i = min(max(n.bit_length() - 1, 0) // 10, len(_UNITS) - 1)
    return f"{n / (1 << 10 * i):.1f} {_UNITS[i]}"


_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def is_special(path: str) -> bool:
    """True when ``path`` exists and is neither a regular file nor a symbolic link
    (renaming over it would replace a device node, FIFO or socket)."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISLNK(mode))


#: ``renameat2`` flag: fail with EEXIST when the new name exists (linux/fs.h).
RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def rename_noreplace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Rename ``src`` to ``dst`` atomically, failing with ``FileExistsError`` when ``dst``
    exists in any form (a directory, a file, a dangling symbolic link).

    ``os.rename`` silently replaces an empty directory and a file, so a name another user
    creates between a check and the rename would be lost.  Uses ``renameat2`` with
    ``RENAME_NOREPLACE``; on a file system or libc without it, reserves ``dst`` with
    ``mkdir`` (atomic, fails when anything exists) and renames the directory ``src`` over
    that empty directory of its own.
    """
    fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if fn is not None:
        rc = fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), RENAME_NOREPLACE)
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(err, os.strerror(err), os.fspath(dst))
    if not os.path.isdir(src):
        raise OSError(errno.ENOSYS, "renameat2(RENAME_NOREPLACE) unavailable", os.fspath(dst))
    os.mkdir(dst)
    os.rename(src, dst)


@contextlib.contextmanager
def open_output(
    name: str, *, fd_numbers: bool = False, buffer_size: int = BUFFER_SIZE
) -> Iterator[BinaryIO]:
    """Open the output ``name`` for writing, as described in the module docstring.

    Used as ``with open_output(path) as f: f.write(...)``.  An OSError opening,
    creating, writing, flushing or renaming the output becomes an
    :class:`~xlpy.errors.OutputError` naming it (exit 2; a reader gone away stays a
    ``BrokenPipeError``); any exception from the body propagates unchanged, after
    the temporary file is removed.
    """
    fd = stream_fd(name, fd_numbers=fd_numbers)
    if fd is not None:
        what = "standard output" if name == "-" else f"fd {fd}"
        if name == "-" and sys.stdout is None:
            # Python leaves it None when fd 1 was closed at start-up; fd 1 may
            # since have been reused by a file opened for reading.
            raise OutputError(what, errno.EBADF, "it is closed")
        if name == "-" and os.isatty(fd):
            raise TerminalStream(
                "refusing to write a binary stream to a terminal: use -o FILE or a pipe"
            )
        with guarded(what):
            os.fstat(fd)
        out = _Output(io.FileIO(fd, "wb", closefd=False), what, buffer_size)
        try:
            yield out
        except BaseException:
            # A reader that went away (``| head``) is not worth a second report.
            with contextlib.suppress(BrokenPipeError):
                out.close()
            raise
        out.close()  # flushes but leaves the descriptor open; EPIPE here too is an error
        return
    if is_special(name):
        with guarded(name):
            raw = io.FileIO(_open_in_place(name), "wb")
        with _Output(raw, name, buffer_size) as out:
            yield out
        return
    with guarded(name):
        tfd, tmp = tempfile.mkstemp(
            prefix=f".{os.path.basename(name)}.", suffix=".tmp", dir=os.path.dirname(name) or "."
        )
    try:
        with guarded(name):
            # mkstemp creates 0600; give the file the mode open() would have.
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(tfd, 0o666 & ~umask)
        with _Output(io.FileIO(tfd, "wb"), name, buffer_size) as out:
            yield out
        with guarded(name):
            os.replace(tmp, name)  # the name itself: a symbolic link is replaced, not followed
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _open_in_place(name: str) -> int:
    """Open the device, FIFO or socket ``name`` for writing, never through a symbolic link
    (``O_NOFOLLOW``) and never a regular file swapped in since it was looked at."""
    fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    if stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EEXIST, "replaced by a regular file while being opened", name)
    return fd


def output_fd(out: BinaryIO) -> int | None:
    """The descriptor under ``out`` when nothing but a plain write buffer stands between
    (a compressing or encoding wrapper may also have a ``fileno``: it gets no raw bytes)."""
    raw = out.raw if isinstance(out, io.BufferedWriter) else out
    return raw.fileno() if isinstance(raw, io.FileIO) else None


def output_name(out: BinaryIO) -> str:
    """How a write error names ``out``: as :func:`open_output` was given it, else by the
    file's own name (a path) or descriptor."""
    name = getattr(out, "output_name", None) or getattr(out, "name", None)
    if isinstance(name, str):
        return name
    try:
        return f"fd {out.fileno()}"
    except (OSError, ValueError):
        return "the output"


class _Output(io.BufferedWriter):
    """A buffered writer whose OSErrors name the output (input errors stay apart)."""

    def __init__(self, raw: io.RawIOBase, name: str, buffer_size: int) -> None:
        super().__init__(raw, buffer_size=buffer_size)
        #: The output as the user named it (:func:`output_name`).
        self.output_name = name

    def write(self, data: Any, /) -> int:
        with guarded(self.output_name):
            return super().write(data)

    def flush(self) -> None:
        with guarded(self.output_name):
            super().flush()

    def close(self) -> None:
        with guarded(self.output_name):
            super().close()


@contextlib.contextmanager
def guarded(name: str) -> Iterator[None]:
    """Turn an OSError about the output ``name`` into an :class:`~xlpy.errors.OutputError`
    naming it and the errno (a reader gone away stays a ``BrokenPipeError``)."""
    try:
        yield
    except (BrokenPipeError, OutputError):
        raise
    except OSError as e:
        raise OutputError(name, e.errno, e.strerror or str(e)) from None
