"""Framing for libxc that takes no stream type (4.0-4.3.1): libxc sees one checkpoint.

Those receivers read on past the last checkpoint (legacy-stream.md §12): into EOF,
which is harmless, or into whatever the toolstack put after the image, which it eats
(the EAT cell: ``Max batch size exceeded (1970103633)``).  For a plain restore xlpy
therefore reads the legacy stream itself, forwards exactly the first checkpoint's libxc
image (header through tail, plus the QEMU record where upstream libxc reads it as part
of its tail) into a pipe, closes the pipe, and hands every later byte back to the
caller untouched.  The toolstack's own framing header (xl, xend) is read here and never
forwarded, as a toolstack does before calling libxc.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from xlpy.errors import StreamError
from xlpy.stream.legacy.reader import LegacyReader
from xlpy.stream.legacy.records import EndOfBody, VcpuInfo, XendHeader, XlHeader
from xlpy.stream.source import ByteSource
from xlpy.stream.tap import Stopped, Tap


@dataclass(frozen=True, slots=True)
class Forwarded:
    """What the forwarder did."""

    #: The toolstack framing header it read (not forwarded), if any.
    framing: XlHeader | XendHeader | None
    #: Bytes of libxc image written to the pipe.
    image_bytes: int
    #: Bytes read from the input past the image: the start of what follows, to be read
    #: by the caller before the rest of the input descriptor.
    rest: bytes


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def forward_first_checkpoint(
    source_fd: int,
    sink_fd: int,
    *,
    libxc_reads_qemu: bool = True,
    guest: str | None = None,
    width: int | None = None,
    stop_fd: int | None = None,
    timeout: float | None = None,
) -> Forwarded:
    """Copy the first checkpoint's libxc image from ``source_fd`` to ``sink_fd``, then
    close ``sink_fd``.

    ``libxc_reads_qemu``: the receiving libxc reads an HVM QEMU record after the tail
    (upstream; XenServer-classic's patched libxc does not).  Stream errors propagate
    (as :class:`~xlpy.errors.StreamError`) after ``sink_fd`` is closed, so libxc sees
    the image end where the input went wrong.  ``stop_fd`` becoming readable stops the
    copy before the next read of ``source_fd``.  ``timeout`` is the stall bound on
    ``source_fd`` (:class:`~xlpy.errors.StreamTimeout` at the input's offset).
    """
    tap = Tap(source_fd, stop_fd, timeout)
    src = ByteSource(tap, timeout=timeout)
    reader = LegacyReader(src, guest=guest, width=width)
    forwarded = 0

    def flush() -> None:
        nonlocal forwarded
        chunk = tap.take(src.offset)
        _write_all(sink_fd, chunk)
        forwarded += len(chunk)

    try:
        framing = reader.read_framing()
        tap.take(src.offset)  # the toolstack's header, never libxc's
        reader.read_header()
        flush()
        if reader.guest == "pv":
            reader.read_pv_ext_info()
            reader.read_p2m_frame_list()
            flush()
        # Numbered as records() numbers it, so a fault met here names the record
        # inspect and an unframed restore name.
        reader.begin_checkpoint(0, False)
        vcpu_info: VcpuInfo | None = None
        while True:
            rec = reader.read_chunk()
            flush()
            if isinstance(rec, VcpuInfo):
                vcpu_info = rec
            elif isinstance(rec, EndOfBody):
                break
        reader.read_tail(vcpu_info=vcpu_info)
        flush()
        if reader.guest == "hvm" and libxc_reads_qemu:
            reader.read_qemu_record()
            flush()
    finally:
        os.close(sink_fd)
    return Forwarded(framing=framing, image_bytes=forwarded, rest=bytes(tap.pending))


class Forwarder:
    """:func:`forward_first_checkpoint` in a thread, feeding the pipe at :attr:`read_fd`.

    Hand :attr:`read_fd` to libxc (or the simulated receiver) as its ``io_fd``; when the
    restore returns, call :meth:`result` if it succeeded or :meth:`stop` if it failed.
    Both close :attr:`read_fd` (so a receiver that stopped reading early cannot block
    the forwarder) and end the thread, so the caller may close ``source_fd`` after.
    """

    def __init__(
        self,
        source_fd: int,
        *,
        libxc_reads_qemu: bool = True,
        guest: str | None = None,
        width: int | None = None,
        timeout: float | None = None,
    ) -> None:
        self.read_fd, write_fd = os.pipe()
        self._stop_r, self._stop_w = os.pipe()
        self._result: Forwarded | None = None
        self._error: BaseException | None = None

        def run() -> None:
            try:
                self._result = forward_first_checkpoint(
                    source_fd,
                    write_fd,
                    libxc_reads_qemu=libxc_reads_qemu,
                    guest=guest,
                    width=width,
                    stop_fd=self._stop_r,
                    timeout=timeout,
                )
            except BaseException as e:  # re-raised in result(), in the caller's thread
                self._error = e

        self._thread = threading.Thread(target=run, name="xlpy-forwarder", daemon=True)
        self._thread.start()

    def _join(self, timeout: float | None) -> None:
        if self.read_fd >= 0:
            os.close(self.read_fd)
            self.read_fd = -1
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the forwarder is still copying the first checkpoint")
        for fd in (self._stop_r, self._stop_w):
            os.close(fd)
        self._stop_r = self._stop_w = -1

    def result(self, timeout: float | None = None) -> Forwarded:
        """Wait for the forwarder; raises what it raised (e.g. a stream error)."""
        self._join(timeout)
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def stop(self) -> StreamError | None:
        """After a failed restore: stop reading the source and wait for the thread.

        Returns the input's own error if the forwarder met one before it was stopped: a
        truncated or malformed input, which the receiver only saw as its pipe ending
        early.  A pipe the receiver closed, or the stop itself, is no error of the input.
        """
        os.write(self._stop_w, b"x")
        self._join(None)
        error = self._error
        if error is None or isinstance(error, Stopped | BrokenPipeError):
            return None
        if isinstance(error, StreamError):
            return error
        raise error
