"""A pull-based byte source over files, pipes and sockets that never seeks.

Migration streams arrive on sockets and pipes, so the only operations are
"read exactly n bytes" and "look at the next n bytes".  Look-ahead is kept in
an internal buffer; :attr:`ByteSource.offset` is the *logical* number of bytes
consumed, which is what a receiver "ate" from the stream, whatever was read
ahead.  A raw ``read`` returns what is available, so look-ahead never blocks
waiting for bytes beyond those asked for (a peer that keeps the connection
open and silent does not hang a reader that has all it needs).

``timeout`` is the stall bound: when set, every raw read and every kernel move first
waits at most that many seconds for the descriptor to become readable and raises
:class:`~xlpy.errors.StreamTimeout` (at the offset reached, naming the field being read)
otherwise.  A caller's ``--timeout`` sets it; the legacy receiver sets it to libxc's
heartbeat after the first checkpoint.  A raw reader without a descriptor (a
:class:`~xlpy.stream.tap.Tap`, given the same ``timeout``) bounds its own wait and raises
``TimeoutError``, which becomes the same :class:`~xlpy.errors.StreamTimeout`.

Bulk data that the caller never looks at (page data inspect only counts, pages a
receiver writes into a memory file) can stay in the kernel: :meth:`ByteSource.skip`
and :meth:`ByteSource.transfer` drain the look-ahead buffer, then move the rest with
``splice`` (pipes) or ``sendfile`` / ``copy_file_range`` (regular files, always from the
current position, so the input is consumed exactly as ``read`` would).  Other sources
(sockets, file objects) are read and written in chunks; the results are the same.
:meth:`ByteSource.transfer` also forwards bytes to a pipe, socket or device, at the
output's own position (a converter's page data, input to output without a copy in Python).
"""

from __future__ import annotations

import errno
import io
import os
import select
import socket
import stat
from collections.abc import Sequence
from typing import BinaryIO, Protocol

from xlpy.errors import StreamTimeout, StreamTruncated, TerminalStream, UsageError
from xlpy.outfile import fd_number, fd_spec, guarded

#: Size of one raw read when filling the look-ahead buffer.
FILL_SIZE = 1 << 16
#: Large exact reads grow their buffer by at most this much per step, so a
#: hostile length field costs memory only as far as the stream backs it.
GROW_STEP = 1 << 22
#: Largest single kernel move (splice, sendfile, copy_file_range) or fallback chunk.
MOVE_STEP = 1 << 20
#: :meth:`ByteSource.read_append` grows its buffer by at most this much per step: one
#: step for payloads up to 16 MiB (libxc's largest compressed chunk), no re-allocations.
APPEND_STEP = 1 << 24
#: Zeros the buffer grows with (untouched memory: reading it costs no RAM).
_ZEROS = memoryview(bytes(APPEND_STEP))
#: errno values meaning "this descriptor pair has no kernel path": use read + write.
_NO_KERNEL_PATH = frozenset(
    {errno.EINVAL, errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF, errno.ESPIPE}
)


def truncated(field: str, need: int, done: int, offset: int) -> StreamTruncated:
    """The error of a read of ``need`` bytes for ``field`` from ``offset`` that got ``done``."""
    return StreamTruncated(
        f"end of stream: {field} needs {need} bytes, {done} left", offset=offset, field=field
    )


class _Readable(Protocol):
    def readinto(self, b: memoryview, /) -> int | None: ...


def _fd_kind(fd: int) -> str | None:
    """``"pipe"`` or ``"file"`` (regular) when the kernel can move this input's bytes."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return None
    if stat.S_ISFIFO(mode):
        return "pipe"
    return "file" if stat.S_ISREG(mode) else None


def _enlarge_pipe(fd: int) -> None:
    """Ask for a 1 MiB pipe buffer: fewer, larger reads from a pipe."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except OSError:
        pass  # not permitted (pipe-max-size): keep the default


def _pwrite_all(fd: int, data: memoryview, offset: int | None, name: str) -> None:
    """Write all of ``data`` at ``offset`` of ``fd`` (``None``: at its current position);
    a failure is an :class:`~xlpy.errors.OutputError` naming the output ``name``."""
    with guarded(name):
        while len(data):
            if offset is None:
                try:
                    k = os.write(fd, data)
                except BlockingIOError:  # a non-blocking output that is full
                    _wait_writable(fd)
                    continue
            else:
                k = os.pwrite(fd, data, offset)
                offset += k
            data = data[k:]


def _wait_writable(fd: int) -> None:
    while True:
        try:
            select.select([], [fd], [])
            return
        except InterruptedError:
            continue


class _EndOfStream(Exception):
    """The input ended after ``moved`` bytes of a move (internal to :class:`ByteSource`)."""

    def __init__(self, moved: int) -> None:
        super().__init__(moved)
        self.moved = moved


class ByteSource:
    """Exact reads and look-ahead over a binary stream, with a logical offset.

    ``src`` may be a file descriptor number, a file object (anything with
    ``readinto`` or ``read``; a real ``fileno()`` enables the heartbeat) or a
    socket.  ``offset`` starts at ``start_offset`` (useful when the caller has
    already consumed a prefix).
    """

    def __init__(
        self,
        src: int | BinaryIO | socket.socket | _Readable,
        *,
        start_offset: int = 0,
        timeout: float | None = None,
    ) -> None:
        self._fd: int | None = None
        self._raw: _Readable
        #: The raw reads go straight to ``_fd`` (no buffering object in between).
        direct = True
        if isinstance(src, int):
            self._fd = src
            self._raw = io.FileIO(src, "rb", closefd=False)
        elif isinstance(src, socket.socket):
            self._fd = src.fileno()
            self._raw = io.FileIO(self._fd, "rb", closefd=False)
        else:
            fd = None
            try:
                fd = src.fileno()  # type: ignore[union-attr]
            except (AttributeError, OSError, io.UnsupportedOperation):
                fd = None
            buffered = getattr(src, "peek", None) is not None and not isinstance(src, io.BytesIO)
            if fd is not None and not buffered:
                self._fd = fd
                self._raw = io.FileIO(fd, "rb", closefd=False)
            elif fd is not None:
                # A BufferedReader may already hold read-ahead bytes: read
                # through it, and use the fd only for select().
                self._fd = fd
                self._raw = src  # type: ignore[assignment]
                direct = False
            elif hasattr(src, "readinto"):
                self._raw = src
            else:
                self._raw = _ReadAdapter(src)
        kind = _fd_kind(self._fd) if self._fd is not None else None
        if kind == "pipe" and self._fd is not None:
            _enlarge_pipe(self._fd)
        #: How the kernel can move this input's bytes (``None``: read and write them).
        self._kind = kind if direct else None
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self.offset = start_offset
        self.timeout = timeout
        #: Absolute offset of the next byte to arrive (look-ahead and partial reads
        #: included): where a stalled sender stopped.
        self._arrived = start_offset

    # -- raw access -----------------------------------------------------------

    @property
    def fileno(self) -> int | None:
        """The underlying descriptor, if any."""
        return self._fd

    @property
    def kernel_moves(self) -> bool:
        """True when :meth:`skip` and :meth:`transfer` move bytes in the kernel (for now)."""
        return self._kind is not None

    def _wait_readable(self, timeout: float | None, field: str) -> None:
        if self._fd is None:
            return
        while True:
            try:
                r, _, _ = select.select([self._fd], [], [], timeout)
            except InterruptedError:
                continue
            if r:
                return
            raise self._stalled(field)

    def _stalled(self, field: str) -> StreamTimeout:
        """The stall error: at the element being read, saying where the bytes stopped."""
        within = "" if self.timeout is None else f" within {self.timeout:g} s"
        return StreamTimeout(
            f"no byte{within} after byte {self._arrived}: the sender stalled",
            offset=self.offset,
            field=field,
        )

    def _raw_readinto(self, mv: memoryview, field: str) -> int:
        """One raw read; 0 means EOF.  Honours the heartbeat and O_NONBLOCK."""
        while True:
            if self.timeout is not None:
                self._wait_readable(self.timeout, field)
            try:
                n = self._raw.readinto(mv)
            except InterruptedError:
                continue
            except BlockingIOError:
                n = None
            except TimeoutError:  # a raw reader that bounds its own wait (a Tap)
                raise self._stalled(field) from None
            if n is None:  # non-blocking descriptor with nothing to read yet
                self._wait_readable(self.timeout, field)
                continue
            self._arrived += n
            return n

    # -- buffered access --------------------------------------------------------

    def _available(self) -> int:
        return len(self._buf) - self._pos

    def _fill(self, want: int, field: str) -> None:
        """Read until ``want`` bytes are buffered or EOF."""
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        while self._available() < want and not self._eof:
            if self._pos > FILL_SIZE:
                del self._buf[: self._pos]
                self._pos = 0
            need = min(max(want - self._available(), FILL_SIZE), GROW_STEP)
            old = len(self._buf)
            self._buf.extend(bytes(need))
            n = self._raw_readinto(memoryview(self._buf)[old:], field)
            del self._buf[old + n :]
            if n == 0:
                self._eof = True

    @property
    def end_offset(self) -> int | None:
        """The offset at which the input ends, once its end has been seen (else ``None``).

        After a :class:`StreamTruncated` it is always known, however far past the
        current offset the look-ahead reached.
        """
        return self.offset + self._available() if self._eof else None

    def peek(self, n: int) -> bytes:
        """Up to ``n`` next bytes without consuming them (fewer only at EOF)."""
        if self._available() < n:
            self._fill(n, "peek")
        return bytes(self._buf[self._pos : self._pos + n])

    def at_eof(self) -> bool:
        """True when no byte is left (may block until one arrives or EOF)."""
        return len(self.peek(1)) == 0

    def read_exact(self, n: int, *, field: str = "data") -> bytes:
        """Exactly ``n`` bytes or :class:`StreamTruncated` at the offset they start."""
        if n < 0:
            raise ValueError("negative read")
        if self._available() < n:
            self._fill(n, field)
            if self._available() < n:
                got = self._available()
                raise truncated(field, n, got, self.offset)
        with memoryview(self._buf) as mv:
            out = bytes(mv[self._pos : self._pos + n])  # one copy, not a slice and a copy
        self._pos += n
        self.offset += n
        return out

    def read_append(self, buf: bytearray, n: int, *, field: str = "data") -> None:
        """Append exactly ``n`` bytes to ``buf``, read straight into it (one copy).

        ``buf`` grows by at most :data:`APPEND_STEP` ahead of the bytes that arrived, so
        a hostile length costs memory only as far as the stream backs it.  Truncation
        raises :class:`StreamTruncated` at the offset the read starts, like
        :meth:`readinto_exact`, and leaves ``buf`` as it was.
        """
        if n < 0:
            raise ValueError("negative read")
        start = self.offset
        base = len(buf)
        take = min(self._available(), n)
        if take:
            with memoryview(self._buf) as mv:
                buf += mv[self._pos : self._pos + take]
            self._pos += take
        done = take
        try:
            while done < n:
                end = len(buf)
                k = min(n - done, APPEND_STEP)
                buf += _ZEROS[:k]
                with memoryview(buf) as mv:
                    while k:
                        got = 0
                        if not self._eof:
                            # released even when the read raises (the traceback holds it)
                            with mv[end : end + k] as part:
                                got = self._raw_readinto(part, field)
                        if got == 0:
                            self._eof = True
                            raise truncated(field, n, done, start)
                        end += got
                        done += got
                        k -= got
        except BaseException:
            del buf[base:]
            self.offset = start + done
            raise
        self.offset = start + n

    def readinto_exact(self, mv: memoryview, *, field: str = "data") -> None:
        """Fill ``mv`` completely: buffered bytes first, then straight from the source."""
        total = len(mv)
        start = self.offset
        take = min(self._available(), total)
        if take:
            mv[:take] = self._buf[self._pos : self._pos + take]
            self._pos += take
        done = take
        while done < total:
            n = 0 if self._eof else self._raw_readinto(mv[done:], field)
            if n == 0:
                self._eof = True
                self.offset = start + done
                raise truncated(field, total, done, start)
            done += n
        self.offset = start + total

    def skip(self, n: int, *, field: str = "data") -> None:
        """Consume ``n`` bytes without keeping them (in the kernel where it can).

        Truncation raises :class:`StreamTruncated` at the offset the skip starts,
        like :meth:`readinto_exact`.
        """
        self._move(n, None, ((0, n),), field, os.devnull)

    def skip_to_eof(self, *, field: str = "data") -> int:
        """Consume everything up to EOF without keeping it; returns how many bytes that was."""
        start = self.offset
        while True:
            try:
                self.skip(MOVE_STEP, field=field)
            except StreamTruncated:
                return self.offset - start

    def transfer(
        self,
        out_fd: int,
        pieces: Sequence[tuple[int | None, int]],
        *,
        field: str = "data",
        out_name: str | None = None,
    ) -> None:
        """Write the next bytes into ``out_fd``: ``(offset, length)`` piece by piece.

        The pieces cover consecutive input bytes; each lands at its own offset of
        ``out_fd`` (a regular file), or with offset ``None`` at the output's current
        position (a pipe, socket, device or file: the bytes follow what was written to
        the descriptor before; flush any buffered writer on it first).  Look-ahead bytes
        are written with ``pwrite`` / ``write``, the rest moved by the kernel from a pipe
        or regular file, read and written in chunks otherwise.  Truncation raises
        :class:`StreamTruncated` at the offset the transfer starts, like
        :meth:`readinto_exact` (bytes before it were written); a write that fails is an
        :class:`~xlpy.errors.OutputError` naming ``out_name`` (default ``fd N``).
        """
        name = f"fd {out_fd}" if out_name is None else out_name
        self._move(sum(length for _, length in pieces), out_fd, pieces, field, name)

    def _move(
        self,
        total: int,
        out_fd: int | None,
        pieces: Sequence[tuple[int | None, int]],
        field: str,
        name: str,
    ) -> None:
        """``skip`` (``out_fd`` None) or ``transfer`` of ``total`` bytes."""
        if total < 0 or any(length < 0 for _, length in pieces):
            raise ValueError("negative length")
        start = self.offset
        done = 0
        null = os.open(os.devnull, os.O_WRONLY) if out_fd is None and self._kind else None
        try:
            for out_off, length in pieces:
                done += self._move_piece(out_fd, null, out_off, length, field, name)
        except _EndOfStream as e:
            done += e.moved
            self.offset = start + done
            raise truncated(field, total, done, start) from None
        finally:
            if null is not None:
                os.close(null)
        self.offset = start + total

    def _move_piece(
        self,
        out_fd: int | None,
        null: int | None,
        out_off: int | None,
        length: int,
        field: str,
        name: str,
    ) -> int:
        """Move ``length`` bytes to ``out_fd`` at ``out_off`` (nowhere if ``out_fd`` is None;
        at its current position if ``out_off`` is)."""
        take = min(self._available(), length)
        if take:
            if out_fd is not None:
                with memoryview(self._buf) as mv:
                    _pwrite_all(out_fd, mv[self._pos : self._pos + take], out_off, name)
            self._pos += take
        done = take
        scratch: bytearray | None = None
        while done < length:
            n = None
            if not self._eof:
                at = None if out_off is None else out_off + done
                n = self._kernel_move(out_fd, null, at, length - done, field)
                self._arrived += n or 0
            if n is None and not self._eof:
                if scratch is None:
                    scratch = bytearray(min(length - done, MOVE_STEP))
                with memoryview(scratch) as mv:
                    n = self._raw_readinto(mv[: length - done], field)
                    if n and out_fd is not None:
                        at = None if out_off is None else out_off + done
                        _pwrite_all(out_fd, mv[:n], at, name)
            if not n:
                self._eof = True
                raise _EndOfStream(done)
            done += n
        return done

    def _kernel_move(
        self, out_fd: int | None, null: int | None, out_off: int | None, n: int, field: str
    ) -> int | None:
        """One kernel-side move of at most ``n`` bytes (0 at EOF); ``None``: no such path.

        The input is always consumed from its current position: nothing is seeked.
        """
        kind, fd = self._kind, self._fd
        if kind is None or fd is None:
            return None
        n = min(n, MOVE_STEP)
        while True:
            if self.timeout is not None:
                self._wait_readable(self.timeout, field)
            try:
                if out_fd is None:
                    if null is None:
                        return None
                    if kind == "pipe":
                        return os.splice(fd, null, n)
                    return os.sendfile(null, fd, None, n)
                if out_off is None:
                    if kind == "pipe":
                        return os.splice(fd, out_fd, n)
                    return os.sendfile(out_fd, fd, None, n)
                if kind == "pipe":
                    return os.splice(fd, out_fd, n, offset_dst=out_off)
                return os.copy_file_range(fd, out_fd, n, offset_dst=out_off)
            except InterruptedError:
                continue
            except BlockingIOError:  # non-blocking input with nothing to read yet, or output full
                self._wait_readable(self.timeout, field)
                if out_fd is not None:
                    _wait_writable(out_fd)
            except OSError as e:
                if e.errno not in _NO_KERNEL_PATH and out_fd is None:
                    raise
                # No kernel path for this pair (copy_file_range across file systems), or a
                # failure that does not say whose it is (ENOSPC, EIO): nothing was moved, so
                # read and write instead, where a write error names the output.
                self._kind = None
                return None

    def read_to_eof(self, *, limit: int | None = None, field: str = "data") -> bytes:
        """Everything up to EOF (no heartbeat applies beyond ``timeout``)."""
        parts = [bytes(self._buf[self._pos :])]
        self.offset += self._available()
        self._buf.clear()
        self._pos = 0
        size = len(parts[0])
        chunk = bytearray(FILL_SIZE)
        while not self._eof:
            n = self._raw_readinto(memoryview(chunk), field)
            if n == 0:
                self._eof = True
                break
            parts.append(bytes(chunk[:n]))
            size += n
            self.offset += n
            if limit is not None and size > limit:
                raise StreamTruncated(
                    f"{field} longer than {limit} bytes", offset=self.offset, field=field
                )
        return b"".join(parts)


class _ReadAdapter:
    """Give ``readinto`` to objects that only have ``read``."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f

    def readinto(self, b: memoryview, /) -> int:
        data = self._f.read(len(b))
        if not data:
            return 0
        b[: len(data)] = data
        return len(data)


def open_source(
    spec: str, *, fd_numbers: bool = False, timeout: float | None = None
) -> tuple[ByteSource, BinaryIO | None]:
    """Open a command-line SOURCE: a path, ``-`` (stdin) or ``fd:N``.

    With ``fd_numbers`` a bare decimal number names a descriptor too (Xen's
    ``open_file_or_fd``).  Returns the source and the file object to close
    (``None`` when the caller does not own the descriptor).  A path that cannot
    be opened or a descriptor that is not open raises ``OSError``; a standard
    input that was closed when the process started, or ``fd:`` followed by anything but a
    number, raises ``UsageError``.  ``timeout`` is the source's stall bound (seconds without
    a byte before :class:`~xlpy.errors.StreamTimeout`).
    """
    import sys

    fd = fd_spec(spec)
    if fd is None and fd_numbers:
        fd = fd_number(spec)
    if spec == "-":
        if sys.stdin is None:  # Python leaves it None when fd 0 was closed at start-up
            raise UsageError("standard input is closed")
        if os.isatty(sys.stdin.fileno()):
            # Nobody types a stream: a command left without its FILE would wait in silence.
            raise TerminalStream("reading a stream from a terminal: give FILE or pipe one in")
        return ByteSource(sys.stdin.fileno(), timeout=timeout), None
    if fd is not None:
        return ByteSource(fd, timeout=timeout), None
    f = open(spec, "rb", buffering=0)  # noqa: SIM115 - returned to the caller
    return ByteSource(f.fileno(), timeout=timeout), f
