"""Bridging ``struct restore_callbacks`` to Python callables (the pygit2 pattern).

A Python exception must never unwind through libxc: the bridge catches it, stores it,
returns libxc's error value for that callback, and the caller re-raises it once
``xc_domain_restore`` has returned.  The same bridge serves the in-process call and,
through the helper's socket, the out-of-process one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from xlpy.binding.generations import CALLBACK_ERROR_RETURN

#: A Python restore callback: the C arguments without the trailing ``void *data``
#: (``toolstack_restore`` gets ``(domid, buf: bytes)``); returns libxc's int, or None
#: for ``restore_results``.
Callback = Callable[..., int | None]
#: How a C callback reaches Python: ``invoke(name, args) -> return value``.
Invoke = Callable[[str, Sequence[Any]], int | None]


class CallbackBridge:
    """Runs the caller's callbacks, turning an exception into libxc's error value."""

    def __init__(self, callbacks: Mapping[str, Callback]) -> None:
        self.callbacks = dict(callbacks)
        #: The first exception a callback raised; later callbacks then fail at once.
        self.error: BaseException | None = None

    def invoke(self, name: str, args: Sequence[Any]) -> int | None:
        """Call callback ``name``; never raises."""
        failed = CALLBACK_ERROR_RETURN[name]
        if self.error is not None:
            return failed
        try:
            ret = self.callbacks[name](*args)
            if failed is not None and (not isinstance(ret, int) or isinstance(ret, bool)):
                raise TypeError(f"restore callback {name} returned {ret!r}, not an int")
        except BaseException as e:  # nothing may unwind through C, not even KeyboardInterrupt
            self.error = e
            return failed
        return None if failed is None else ret

    def reraise(self, cause: BaseException | None = None) -> None:
        """Raise the stored callback exception, if any (chained to ``cause``)."""
        if self.error is not None:
            error, self.error = self.error, None
            raise error from cause


def c_callback(ffi: Any, ctype: Any, name: str, invoke: Invoke) -> Any:
    """An ``ffi.callback`` of ``ctype`` that forwards callback ``name`` to ``invoke``."""

    def trampoline(*cargs: Any) -> int | None:
        args: list[Any] = list(cargs[:-1])  # the trailing void *data is ours, unused
        if name == "toolstack_restore":
            domid, buf, size = args
            args = [int(domid), bytes(ffi.buffer(buf, size))]
        else:
            args = [int(a) for a in args]
        return invoke(name, args)

    error = CALLBACK_ERROR_RETURN[name]
    if error is None:
        return ffi.callback(ctype, trampoline)
    return ffi.callback(ctype, trampoline, error=error)
