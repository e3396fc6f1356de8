"""Out-of-process ``xc_domain_restore``: a libxc assert, crash or hang cannot take the
toolstack down.

The parent starts the helper as ``python -I -c <import xlpy from its own root> ROOT FD``
with the stream fd (and the COLO back channel) inherited under the same numbers and one
end of a socketpair as ``FD``.  ``-I`` (isolated mode) keeps the caller's directory off
``sys.path`` (a ``json.py`` there would otherwise run as root), ignores ``PYTHON*``
variables and the user site; the library path is resolved to an absolute file before
the start.  The helper's environment is scrubbed to what libxenguest and its loader use
(:data:`HELPER_ENV`, ``LC_*``, ``XENSTORE*``/``XENSTORED*`` for libxenstore) plus the
names listed, space- or comma-separated, in ``XLPY_HELPER_ENV`` (for a stand-in
library's own settings).
Frames on the socket are a 4-byte big-endian length and a JSON object:

* parent → helper: ``{"abi": …, "request": …, "callbacks": [names]}``
* helper → parent: ``{"callback": name, "args": […]}``, answered by ``{"return": value}``
* helper → parent, last: ``{"result": …}`` or ``{"error": {"type", "message", …}}``

Callbacks run in the parent through the same :class:`CallbackBridge` as the in-process
call, so a callback's exception is re-raised in the parent after the restore returns.
If the helper dies before its last frame, the parent raises
:class:`~xlpy.errors.LibxcCrashed` carrying the signal and libxc's last stderr lines
(an assert names its condition there).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from xlpy.binding.callbacks import Callback, CallbackBridge
from xlpy.binding.detect import Abi
from xlpy.binding.generations import by_name
from xlpy.binding.restore import RestoreArgs, RestoreOutputs, call_restore, validate
from xlpy.errors import LibxcCrashed, UsageError, XenError, XenUnavailable, XlpyError

log = logging.getLogger("xlpy.libxc")

_LEN = struct.Struct(">I")
#: The directory holding the ``xlpy`` package, for the helper's ``sys.path``.
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]

#: Variables the helper keeps: the dynamic loader's, the locale, libxc's own
#: (``XLPY_LIBXENGUEST`` is already resolved; kept for the generation override).
HELPER_ENV = frozenset(
    {
        "PATH",
        "LANG",
        "TZ",
        "LD_LIBRARY_PATH",
        "LD_PRELOAD",
        "XLPY_LIBXENGUEST",
        "XLPY_XENGUEST_GENERATION",
    }
)
#: Prefixes of kept variables: locale, libxenstore (XENSTORED_PATH, XENSTORE_DOMAIN_...).
HELPER_ENV_PREFIXES = ("LC_", "XENSTORE")
#: Names listed here (space or comma separated) are passed to the helper as well.
ENV_HELPER_EXTRA = "XLPY_HELPER_ENV"
#: The helper's entry: xlpy from the root the parent imported it from, never from cwd.
_BOOT = "import sys; sys.path.insert(0, sys.argv[1]); from xlpy.binding.helper import main; " \
    "sys.exit(main(sys.argv[2:]))"  # fmt: skip


def helper_env(env: Mapping[str, str]) -> dict[str, str]:
    """The scrubbed environment the helper runs with (see the module docstring)."""
    extra = set(env.get(ENV_HELPER_EXTRA, "").replace(",", " ").split())
    return {
        k: v
        for k, v in env.items()
        if k in HELPER_ENV or k in extra or k.startswith(HELPER_ENV_PREFIXES)
    }


_ERRORS: Mapping[str, type[XlpyError]] = {
    "XenUnavailable": XenUnavailable,
    "UsageError": UsageError,
}


def _send(sock: socket.socket, message: Mapping[str, Any]) -> None:
    body = json.dumps(message).encode()
    sock.sendall(_LEN.pack(len(body)) + body)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)


def _recv(sock: socket.socket) -> dict[str, Any] | None:
    """The next frame, or None at end of stream."""
    head = _recv_exact(sock, _LEN.size)
    if head is None:
        return None
    body = _recv_exact(sock, _LEN.unpack(head)[0])
    if body is None:
        return None
    message: dict[str, Any] = json.loads(body)
    return message


def _encode_args(args: list[Any]) -> list[Any]:
    return [{"hex": a.hex()} if isinstance(a, bytes) else a for a in args]


def _decode_args(args: list[Any]) -> list[Any]:
    return [bytes.fromhex(a["hex"]) if isinstance(a, dict) else a for a in args]


def _abi_to_wire(abi: Abi) -> dict[str, Any]:
    return {
        "library": abi.library,
        "soname": abi.soname,
        "symbol_version": abi.symbol_version,
        "generation": abi.generation.name,
        "release": abi.release,
        "overridden": abi.overridden,
    }


def _abi_from_wire(wire: Mapping[str, Any]) -> Abi:
    return Abi(
        library=wire["library"],
        soname=wire["soname"],
        symbol_version=wire["symbol_version"],
        generation=by_name(wire["generation"]),
        release=wire["release"],
        overridden=wire["overridden"],
    )


def _error_to_wire(error: XlpyError) -> dict[str, Any]:
    if isinstance(error, XenError):
        return {
            "type": "XenError",
            "code": error.code,
            "errno": error.xc_errno,
            "message": error.message,
        }
    kind = "UsageError" if isinstance(error, UsageError) else "XenUnavailable"
    return {"type": kind, "message": str(error)}


def _error_from_wire(wire: Mapping[str, Any]) -> XlpyError:
    if wire["type"] == "XenError":
        return XenError(wire["code"], wire["errno"], wire["message"])
    return _ERRORS[wire["type"]](wire["message"])


def _drain(stream: IO[bytes], tail: deque[str], errors: deque[str]) -> None:
    """Log the helper's stderr (libxc's own logger writes there), keep its tail and
    libxc's error lines (its stdio logger's ``error:`` level; 4.0, without xentoollog,
    prints ``ERROR <desc>: <msg>`` from xc_default_error_handler)."""
    for raw in stream:
        line = raw.decode("utf-8", "replace").rstrip("\n")
        tail.append(line)
        if ": error: " in line or line.startswith("ERROR "):
            errors.append(line)
        log.info("libxc: %s", line)


def restore_out_of_process(
    abi: Abi,
    request: RestoreArgs,
    callbacks: Mapping[str, Callback],
    *,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
) -> RestoreOutputs:
    """``xc_domain_restore`` in a helper process; same results and errors as in-process.

    ``timeout`` bounds each wait for the helper (not the caller's own callbacks); on
    expiry the helper is killed and :class:`LibxcCrashed` raised.  ``env`` is added to
    the helper's environment (the fakexen backend's ``LD_PRELOAD`` and settings).
    """
    validate(abi.generation, abi.release, request, callbacks)
    bridge = CallbackBridge(callbacks)
    # The helper's 0-2 are its own (stdin is /dev/null, stderr libxc's log), so a stream
    # on standard input would reach libxc as /dev/null: those go over above 2; others
    # keep their numbers.
    moved = {fd: fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in (request.io_fd,
             request.send_back_fd) if 0 <= fd <= 2}  # fmt: skip
    try:
        request = dataclasses.replace(
            request,
            io_fd=moved.get(request.io_fd, request.io_fd),
            send_back_fd=moved.get(request.send_back_fd, request.send_back_fd),
        )
        return _run_helper(abi, request, bridge, timeout, env or {})
    finally:
        for fd in moved.values():
            os.close(fd)


def _run_helper(
    abi: Abi,
    request: RestoreArgs,
    bridge: CallbackBridge,
    timeout: float | None,
    extra_env: Mapping[str, str],
) -> RestoreOutputs:
    parent, child = socket.socketpair()
    fds = {child.fileno(), request.io_fd} | ({request.send_back_fd} - {-1})
    root = str(_PACKAGE_ROOT)
    if os.sep in abi.library:  # a bare soname is the loader's to find (LD_LIBRARY_PATH)
        abi = dataclasses.replace(abi, library=os.path.realpath(abi.library))
    proc = subprocess.Popen(
        [sys.executable, "-I", "-c", _BOOT, root, str(child.fileno())],
        pass_fds=sorted(fds),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**helper_env(os.environ), **extra_env},
    )
    child.close()
    assert proc.stderr is not None
    tail: deque[str] = deque(maxlen=20)
    errors: deque[str] = deque(maxlen=50)
    drain = threading.Thread(target=_drain, args=(proc.stderr, tail, errors), daemon=True)
    drain.start()
    final: dict[str, Any] | None = None
    try:
        parent.settimeout(timeout)
        _send(parent, {"abi": _abi_to_wire(abi), "request": request.to_json(),
                       "callbacks": sorted(bridge.callbacks)})  # fmt: skip
        while (message := _recv(parent)) is not None:
            if "callback" in message:
                ret = bridge.invoke(message["callback"], _decode_args(message["args"]))
                _send(parent, {"return": ret})
            else:
                final = message
                break
    except (TimeoutError, OSError) as e:
        _kill(proc, drain)
        hung = isinstance(e, TimeoutError)
        raise LibxcCrashed(
            f"the libxc restore helper {'hung' if hung else 'broke the channel'} "
            f"({'no message for ' + str(timeout) + ' s' if hung else e}); killed it",
            signal=None,
            stderr="\n".join(tail),
        ) from None
    except BaseException:
        # SIGTERM, SIGHUP or Ctrl-C in the parent: libxc would go on reading a stream
        # (and holding a domain) nobody waits for any more.
        _kill(proc, drain)
        raise
    finally:
        parent.close()
    rc = proc.wait()
    drain.join()
    if final is None:
        last = tail[-1] if tail else "(no output)"
        how = (
            f"libxenguest killed the restore helper with {signal.Signals(-rc).name}"
            if rc < 0
            else f"the restore helper exited with status {rc} before reporting"
        )
        error: XlpyError = LibxcCrashed(
            f"{how}: {last}",
            signal=-rc if rc < 0 else None,
            stderr="\n".join(tail),
        )
    elif "result" in final:
        bridge.reraise()
        return RestoreOutputs(**final["result"])
    else:
        error = _error_from_wire(final["error"])
        if isinstance(error, XenError):
            error = XenError(error.code, error.xc_errno, error.message, errors)
    bridge.reraise(cause=error)
    raise error


def _kill(proc: subprocess.Popen[bytes], drain: threading.Thread) -> None:
    proc.kill()
    proc.wait()
    drain.join()


def main(argv: list[str] | None = None) -> int:
    """The helper side: one restore, driven over the socket named by ``argv[0]``."""
    args = sys.argv[1:] if argv is None else argv
    sock = socket.socket(fileno=int(args[0]))
    request_message = _recv(sock)
    if request_message is None:
        return 2
    abi = _abi_from_wire(request_message["abi"])
    request = RestoreArgs(**request_message["request"])
    names: list[str] = request_message["callbacks"]

    def invoke(name: str, cargs: Any) -> int | None:
        _send(sock, {"callback": name, "args": _encode_args(list(cargs))})
        reply = _recv(sock)
        if reply is None:  # the parent is gone: fail the callback, libxc unwinds
            raise ConnectionError("toolstack closed the helper channel")
        ret: int | None = reply["return"]
        return ret

    try:
        validate(abi.generation, abi.release, request, names)
        result = call_restore(abi, request, names, invoke)
    except XlpyError as e:
        _send(sock, {"error": _error_to_wire(e)})
    else:
        _send(sock, {"result": result.to_json()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
