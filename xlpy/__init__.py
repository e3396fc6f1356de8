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
    from xlpy.api import Restored, restore

__all__ = [
    "Restored",
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
    if name in ("restore", "Restored"):
        from xlpy import api

        return getattr(api, name)
    raise AttributeError(f"module 'xlpy' has no attribute {name!r}")
