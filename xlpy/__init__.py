"""xlpy: Xen save/restore and migration streams for Python toolstacks."""

from xlpy.errors import (
    StreamError,
    StreamMalformed,
    StreamTimeout,
    StreamTruncated,
    XlpyError,
)

__all__ = [
    "StreamError",
    "StreamMalformed",
    "StreamTimeout",
    "StreamTruncated",
    "XlpyError",
]
__version__ = "0.1.0"
