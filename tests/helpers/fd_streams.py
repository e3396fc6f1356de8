"""Inputs and outputs of every kind a converter meets: files, pipes, in-memory buffers."""

from __future__ import annotations

import io
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from xlpy.stream.source import ByteSource


@contextmanager
def source_of(
    kind: str, data: bytes, tmp: Path, *, hold: threading.Event | None = None
) -> Iterator[ByteSource]:
    """A ByteSource delivering ``data`` through ``kind``; with ``hold`` the writer keeps
    the connection open (silent) until the event is set."""
    if kind == "bytesio":
        yield ByteSource(io.BytesIO(data))
        return
    if kind == "file":
        path = tmp / "input.bin"
        path.write_bytes(data)
        with open(path, "rb", buffering=0) as f:
            yield ByteSource(f.fileno())
        return
    if kind == "pipe":
        r, w = os.pipe()
        reader_end, send, close = r, lambda b: os.write(w, b), lambda: os.close(w)
    else:
        a, b = socket.socketpair()
        reader_end, send, close = a.fileno(), b.send, b.close

    def writer() -> None:
        view = memoryview(data)
        try:
            while len(view):
                view = view[send(view[: 1 << 16]) :]
            if hold is not None:
                hold.wait(10)
        except OSError:
            pass  # the reader gave up early
        finally:
            close()

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        yield ByteSource(reader_end)
    finally:
        if hold is not None:
            hold.set()
        if kind == "pipe":
            os.close(r)
        else:
            a.close()
        t.join(10)


@contextmanager
def fd_output(kind: str, tmp_path: Path) -> Iterator[tuple[int, list[bytes]]]:
    """An output descriptor (a pipe drained by a thread, or a file) and, after the
    block, what arrived on it in ``got[0]``."""
    got: list[bytes] = []
    if kind == "file":
        path = tmp_path / "out.bin"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            yield fd, got
        finally:
            os.close(fd)
        got.append(path.read_bytes())
        return
    r, w = os.pipe()
    parts: list[bytes] = []

    def drain() -> None:
        while chunk := os.read(r, 1 << 16):
            parts.append(chunk)

    t = threading.Thread(target=drain)
    t.start()
    try:
        yield w, got
    finally:
        os.close(w)
        t.join()
        os.close(r)
    got.append(b"".join(parts))
