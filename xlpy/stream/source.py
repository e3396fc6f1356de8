"""A pull-based byte source over files, pipes and sockets that never seeks.

Migration streams arrive on sockets and pipes, so the only operations are
"read exactly n bytes" and "look at the next n bytes".  Look-ahead is kept in
an internal buffer; :attr:`ByteSource.offset` is the *logical* number of bytes
consumed, which is what a receiver "ate" from the stream, whatever was read
ahead.  A raw ``read`` returns what is available, so look-ahead never blocks
waiting for bytes beyond those asked for (a peer that keeps the connection
open and silent does not hang a reader that has all it needs).

``timeout`` models libxc's heartbeat: when set, every raw read first waits at
most that many seconds for the descriptor to become readable and raises
:class:`~xlpy.errors.StreamTimeout` otherwise.
"""

from __future__ import annotations

import io
import os
import select
import socket
from typing import BinaryIO, Protocol

from xlpy.errors import StreamTimeout, StreamTruncated

#: Size of one raw read when filling the look-ahead buffer.
FILL_SIZE = 1 << 16
#: Large exact reads grow their buffer by at most this much per step, so a
#: hostile length field costs memory only as far as the stream backs it.
GROW_STEP = 1 << 22


class _Readable(Protocol):
    def readinto(self, b: memoryview, /) -> int | None: ...


def _enlarge_pipe(fd: int) -> None:
    """Ask for a 1 MiB pipe buffer: fewer, larger reads from a pipe."""
    try:
        import fcntl

        F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
        if os.path.exists(f"/proc/self/fd/{fd}"):
            import stat

            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                fcntl.fcntl(fd, F_SETPIPE_SZ, 1 << 20)
    except OSError:
        pass  # not permitted (pipe-max-size) or not a pipe: keep the default


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
            elif hasattr(src, "readinto"):
                self._raw = src
            else:
                self._raw = _ReadAdapter(src)
        if self._fd is not None:
            _enlarge_pipe(self._fd)
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self.offset = start_offset
        self.timeout = timeout

    # -- raw access -----------------------------------------------------------

    @property
    def fileno(self) -> int | None:
        """The underlying descriptor, if any."""
        return self._fd

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
            raise StreamTimeout(
                f"no data within {timeout:g} s (heartbeat)",
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
            if n is None:  # non-blocking descriptor with nothing to read yet
                self._wait_readable(self.timeout, field)
                continue
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
                raise StreamTruncated(
                    f"end of stream: {field} needs {n} bytes, {got} left",
                    offset=self.offset,
                    field=field,
                )
        out = bytes(self._buf[self._pos : self._pos + n])
        self._pos += n
        self.offset += n
        return out

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
                raise StreamTruncated(
                    f"end of stream: {field} needs {total} bytes, {done} left",
                    offset=start,
                    field=field,
                )
            done += n
        self.offset = start + total

    def skip(self, n: int, *, field: str = "data") -> None:
        """Consume ``n`` bytes without keeping them."""
        scratch = bytearray(min(n, GROW_STEP))
        while n:
            k = min(n, len(scratch))
            self.readinto_exact(memoryview(scratch)[:k], field=field)
            n -= k

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


def open_source(spec: str) -> tuple[ByteSource, BinaryIO | None]:
    """Open a command-line SOURCE: a path, ``-`` (stdin) or ``fd:N``.

    Returns the source and the file object to close (``None`` when the caller
    does not own the descriptor).
    """
    import sys

    if spec == "-":
        return ByteSource(sys.stdin.buffer.fileno()), None
    if spec.startswith("fd:"):
        return ByteSource(int(spec[3:])), None
    f = open(spec, "rb", buffering=0)  # noqa: SIM115 - returned to the caller
    return ByteSource(f.fileno()), f
