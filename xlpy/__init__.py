"""xlpy: Xen save/restore and migration streams for Python toolstacks.

Python toolstacks call :func:`xlpy.restore` (see ``help(xlpy.restore)``).
"""

from typing import TYPE_CHECKING, Any

from xlpy.errors import (
    StreamError,
    StreamMalformed,
    StreamTimeout,
    StreamTruncated,
    XlpyError,
)

if TYPE_CHECKING:
    from xlpy.api import restore
    from xlpy.backends import RestoreResult

__all__ = [
    "RestoreResult",
    "StreamError",
    "StreamMalformed",
    "StreamTimeout",
    "StreamTruncated",
    "XlpyError",
    "restore",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy: ``import xlpy`` must stay cheap (cffi, numpy and the receiver load on use).
    if name == "restore":
        from xlpy.api import restore

        return restore
    if name == "RestoreResult":
        from xlpy.backends import RestoreResult

        return RestoreResult
    raise AttributeError(f"module 'xlpy' has no attribute {name!r}")
