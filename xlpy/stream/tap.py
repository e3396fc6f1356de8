"""A raw reader that keeps every byte it reads until the caller takes it.

Put under a :class:`~xlpy.stream.source.ByteSource`, it lets a reader parse a stream
(with the look-ahead it needs) while the caller forwards exactly the bytes parsed so
far, verbatim, to someone else: libxc's pipe gets the first checkpoint's image
(:mod:`xlpy.binding.forward`), or exactly one record of a xenopsd image
(:mod:`xlpy.xenopsd`).  :meth:`Tap.take` up to the source's offset after each element.
"""

from __future__ import annotations

import os
import select


class Stopped(Exception):
    """The owner stopped the tap (its ``stop_fd`` became readable): read no more."""


class Tap:
    """The raw reader under the :class:`ByteSource`: keeps bytes until forwarded.

    With ``stop_fd``, each read first waits for the source or for ``stop_fd`` to become
    readable, so a forwarder blocked on a silent source can be stopped: otherwise it
    would outlive the restore and read from whatever file reuses the descriptor number
    once the caller closed it.  With ``timeout`` (the stall bound) that wait lasts at
    most ``timeout`` seconds, then ``TimeoutError``: the tap has no descriptor for the
    :class:`ByteSource` to wait on, so it bounds its own wait, in the same ``poll``.
    """

    def __init__(self, fd: int, stop_fd: int | None = None, timeout: float | None = None) -> None:
        self.fd = fd
        self.pending = bytearray()
        #: Stream offset of ``pending[0]``.
        self.base = 0
        self._poll: select.poll | None = None
        self._stop_fd = stop_fd
        self._timeout = timeout
        if stop_fd is not None or timeout is not None:
            self._poll = select.poll()
            self._poll.register(fd, select.POLLIN)
            if stop_fd is not None:
                self._poll.register(stop_fd, select.POLLIN)

    def readinto(self, b: memoryview, /) -> int:
        if self._poll is not None:
            wait = None if self._timeout is None else self._timeout * 1000
            ready = {fd for fd, _ in self._poll.poll(wait)}
            if self._stop_fd in ready:
                raise Stopped
            if not ready:
                raise TimeoutError  # the ByteSource over it says where, and for how long
        n = os.readv(self.fd, [b])
        self.pending += b[:n]
        return n

    def take(self, upto: int) -> bytes:
        """The bytes from ``base`` to stream offset ``upto``, removed from ``pending``."""
        n = upto - self.base
        out = bytes(self.pending[:n])
        del self.pending[:n]
        self.base = upto
        return out
