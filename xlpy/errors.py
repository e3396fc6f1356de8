"""The xlpy error hierarchy.

Every error xlpy raises on purpose is an :class:`XlpyError`.  Stream errors carry
where they happened (byte offset, record index, field) so a user can find the
fault with a hex dump; they subclass the builtin that fits so callers that only
know ``ValueError``/``OSError`` still catch them.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from typing import Any


class XlpyError(Exception):
    """Base of every error xlpy raises deliberately.

    ``kind`` is the error's family in machine-readable output (:func:`error_json`).
    """

    kind = "error"


class StreamError(XlpyError, ValueError):
    """A stream could not be read as the format says.

    ``offset`` is the absolute byte offset in the input where the faulty element
    starts (or where reading stopped), ``record`` the 0-based index of the record
    being read, ``field`` a short dotted name of what was being read
    (e.g. ``"page_batch.entries"``).
    """

    kind = "error"

    def __init__(
        self,
        message: str,
        *,
        offset: int | None = None,
        record: int | None = None,
        field: str | None = None,
        value: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset
        self.record = record
        self.field = field
        #: The offending number, where one was read (e.g. a chunk header).
        self.value = value

    def __str__(self) -> str:
        where = []
        if self.offset is not None:
            where.append(f"offset {self.offset} (0x{self.offset:x})")
        if self.record is not None:
            where.append(f"record {self.record}")
        if self.field is not None:
            where.append(f"field {self.field}")
        return f"{self.message} [{', '.join(where)}]" if where else self.message


class StreamTruncated(StreamError):
    """End of input inside a record: more data was needed ("need more data")."""

    kind = "truncated"


class StreamMalformed(StreamError):
    """The bytes are present but impossible for the format."""

    kind = "malformed"


class StreamTimeout(StreamError, TimeoutError):
    """No byte arrived within the stall bound: the caller's ``timeout`` (``--timeout``) or
    libxc's heartbeat (its 1 s select timeout after the first checkpoint).  ``offset``
    is where the element being read starts; the message says after which byte the
    sender stopped."""

    kind = "timeout"


class NotRepresentable(StreamError):
    """Valid input that the target format cannot express (e.g. tmem in v2)."""

    kind = "not-representable"


class UsageError(XlpyError, ValueError):
    """A wrong flag or argument combination from the caller."""

    kind = "usage"


class TerminalStream(UsageError):
    """A binary stream to be read from, or written to, a terminal: whoever typed the
    command left out its FILE.  The command's usage follows the message (exit 2)."""


class OutputError(UsageError, OSError):
    """An output could not be written: created, written, flushed or renamed.

    ``filename`` is the output as the user named it (the ``-o`` FILE, ``standard output``,
    a restored domain's ``DIR/memory``), ``errno``/``strerror`` the cause.  A
    :class:`UsageError` (exit 2): the machine's state (a full disk, a closed stdout), not
    the stream, is at fault, and the same stream restores or converts elsewhere.
    """

    kind = "output"

    def __init__(self, name: str, errno_: int | None, strerror: str | None) -> None:
        OSError.__init__(self, errno_, strerror or "write failed", name)

    def __str__(self) -> str:
        text = f"cannot write {self.filename}: {self.strerror}"
        if not self.errno:
            return text
        return f"{text} (errno {self.errno}, {errno.errorcode.get(self.errno, '?')})"


class XenError(XlpyError, OSError):
    """An error reported by libxc (``xc_get_last_error()``), copied at once.

    ``log`` holds the error lines libxc logged during the call, in order, where they
    could be captured (the out-of-process helper): ``xc_get_last_error()`` keeps only
    the last one, often a summary such as ``Restore failed``, while the cause
    (``Found checkpoint in non-checkpointed stream``) was logged before it.
    """

    kind = "xen"

    def __init__(self, code: int, errno_: int, message: str, log: Sequence[str] = ()) -> None:
        super().__init__(errno_, message)
        self.code = code
        self.xc_errno = errno_
        self.message = message
        self.log = tuple(log)

    def __str__(self) -> str:
        text = f"libxc error {self.code} (errno {self.xc_errno}): {self.message}"
        earlier = [line for line in self.log if self.message not in line]
        return f"{text} (libxc logged: {' | '.join(earlier)})" if earlier else text


class XenUnavailable(XlpyError, OSError):
    """No hypervisor or no libxenguest/libxenctrl on this machine."""

    kind = "unavailable"


class RestoreRefused(XlpyError, ValueError):
    """The toolstack layer refused an operation that would be unsafe on this libxc."""

    kind = "refused"


class LibraryNotFound(XenUnavailable):
    """A Xen library (``missing``) could not be loaded; ``package`` is the Debian package
    that provides it."""

    def __init__(self, message: str, missing: str, package: str) -> None:
        super().__init__(message)
        self.missing = missing
        self.package = package


class LibxcCrashed(XenError):
    """The out-of-process libxc restore died (an ``assert``, a crash) or hung.

    ``signal`` is the signal that ended the helper (None for a hang or a plain exit) and
    ``stderr`` what it printed last (libxenguest's assert message, when there is one).
    """

    kind = "crashed"

    def __init__(self, message: str, *, signal: int | None, stderr: str) -> None:
        super().__init__(1, 0, message)  # XC_INTERNAL_ERROR: libxc never said anything
        self.signal = signal
        self.stderr = stderr

    def __str__(self) -> str:
        return self.message


def error_json(
    error: BaseException | None,
    *,
    kind: str | None = None,
    type_: str | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    """The one error object of every command's ``--json`` output.

    ``{kind, type, offset, record, field, message}``: ``kind`` the family
    (``truncated``, ``malformed``, ``timeout``, ``usage``, ``xen``, ``refused``, ...),
    ``type`` the exception class, ``offset``/``record``/``field`` where a stream error
    happened (``null`` otherwise), ``message`` the text without the location.  The
    keyword arguments describe an error that has no exception object, or override it.
    """
    offset = record = field = None
    if isinstance(error, StreamError):
        offset, record, field = error.offset, error.record, error.field
        text = error.message
    else:
        text = "" if error is None else str(error)
    return {
        "kind": kind or (error.kind if isinstance(error, XlpyError) else "error"),
        "type": type_ or (type(error).__name__ if error is not None else "Error"),
        "offset": offset,
        "record": record,
        "field": field,
        "message": message if message is not None else text,
    }
