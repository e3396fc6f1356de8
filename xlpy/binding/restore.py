"""The checked ``xc_domain_restore`` call, for any ABI generation.

Everything libxenguest would ``assert()`` on (and so abort the process for) is refused
here first, in Python, with a typed error: a bad stream type, REMUS without
``checkpoint``, COLO without its four callbacks, callbacks the generation lacks, a
16-bit domid out of range.  Errors from libxc are copied from ``xc_get_last_error()``
at once into :class:`~xlpy.errors.XenError`.
"""

from __future__ import annotations

import errno as errno_mod
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from xlpy.binding.callbacks import Callback, CallbackBridge, Invoke, c_callback
from xlpy.binding.detect import Abi
from xlpy.binding.generations import PLAIN, REQUIRED_CALLBACKS, Generation
from xlpy.binding.loader import Loaded, load
from xlpy.errors import UsageError, XenError, XenUnavailable
from xlpy.operation import StreamType

PRIVCMD = "/dev/xen/privcmd"


@dataclass(frozen=True, slots=True)
class RestoreArgs:
    """The arguments of ``xc_domain_restore``; each generation takes the ones it has."""

    io_fd: int
    dom: int
    stream_type: int = PLAIN
    store_evtchn: int = 0
    store_domid: int = 0
    console_evtchn: int = 0
    console_domid: int = 0
    #: 4.0-4.13 only.
    hvm: bool = False
    pae: bool = True
    #: 4.0-4.9 only.
    superpages: bool = False
    #: 4.2-4.4 only.
    no_incr_generationid: bool = False
    #: COLO back channel, 4.7 on; -1 for none.
    send_back_fd: int = -1
    #: 4.22 only.
    memflags: int = 0

    def to_json(self) -> dict[str, Any]:
        """The request as plain JSON values (for the helper process)."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class RestoreOutputs:
    """What a successful ``xc_domain_restore`` hands back."""

    store_mfn: int
    console_mfn: int
    #: 4.2-4.4 only (the VM generation-id address); None elsewhere.
    vm_generationid_addr: int | None
    generation: str

    def to_json(self) -> dict[str, Any]:
        """The result as plain JSON values (for the helper process)."""
        return asdict(self)


def validate(
    generation: Generation, release: str | None, request: RestoreArgs, names: Iterable[str]
) -> None:
    """Refuse, before entering C, anything libxenguest would assert on or misread."""
    names = set(names)
    try:
        st = StreamType(request.stream_type)
    except ValueError:
        raise UsageError(
            f"bad stream type {request.stream_type!r}: libxc knows 0 (PLAIN), 1 (REMUS), 2 (COLO)"
        ) from None
    if st not in generation.stream_types:
        raise UsageError(f"libxenguest {generation.name} cannot receive a {st.name} stream")
    allowed = generation.callbacks_for(release)
    unknown = names - allowed
    if unknown:
        raise UsageError(
            f"libxenguest {generation.name} (release {release}) has no restore callback "
            f"{', '.join(sorted(unknown))}; it has: {', '.join(sorted(allowed)) or 'none'}"
        )
    missing = (REQUIRED_CALLBACKS[st] & allowed) - names
    if missing:
        raise UsageError(
            f"a {st.name} restore needs the callbacks {', '.join(sorted(missing))} "
            f"(libxenguest asserts on them)"
        )
    if request.io_fd < 0:
        raise UsageError(f"io_fd {request.io_fd} is not a file descriptor")
    if not 0 <= request.dom < 1 << 32:
        raise UsageError(f"domid {request.dom} does not fit uint32_t")
    for name in generation.domid16:
        value = getattr(request, name)
        if not 0 <= value < 1 << 16:
            raise UsageError(f"{name} {value} does not fit domid_t (16 bits) in {generation.name}")
    if request.memflags and "memflags" not in generation.params:
        raise UsageError(f"libxenguest {generation.name} takes no memflags")


def _errno_text(err: int) -> str:
    return f"{errno_mod.errorcode.get(err, err)}: {os.strerror(err)}" if err else "no errno"


def _open(loaded: Loaded) -> Any:
    ffi, lib = loaded.ffi, loaded.lib
    ffi.errno = 0
    if loaded.abi.generation.handle_is_fd:
        handle = lib.xc_interface_open()
        failed = handle < 0
    else:
        handle = lib.xc_interface_open(ffi.NULL, ffi.NULL, 0)
        failed = handle == ffi.NULL
    if failed:
        err = ffi.errno
        where = (
            f"{PRIVCMD} does not exist: this is not a Xen dom0 (no hypervisor)"
            if not os.path.exists(PRIVCMD)
            else f"{PRIVCMD} could not be opened (run as root in dom0)"
        )
        raise XenUnavailable(f"xc_interface_open failed ({_errno_text(err)}): {where}")
    return handle


def _close(loaded: Loaded, handle: Any) -> None:
    loaded.lib.xc_interface_close(handle)


def _last_error(loaded: Loaded, handle: Any, err: int, what: str) -> XenError:
    ffi, lib = loaded.ffi, loaded.lib
    last = (
        lib.xc_get_last_error()
        if loaded.abi.generation.handle_is_fd
        else (lib.xc_get_last_error(handle))
    )
    code, message = 0, ""
    if last != ffi.NULL:
        code = int(last.code)
        # 4.0's xc_set_error keeps a format's trailing newline (4.1+ strip it)
        message = ffi.string(last.message).decode("utf-8", "replace").rstrip("\n")
    return XenError(code, err, message or f"{what} failed ({_errno_text(err)})")


def call_restore(
    abi: Abi, request: RestoreArgs, names: Iterable[str], invoke: Invoke
) -> RestoreOutputs:
    """Run ``xc_domain_restore`` with C callbacks for ``names`` that call ``invoke``.

    The request must already have passed :func:`validate`.
    """
    loaded = load(abi)
    ffi, lib, gen = loaded.ffi, loaded.lib, abi.generation
    handle = _open(loaded)
    try:
        callbacks = ffi.new("struct restore_callbacks *") if gen.callback_slots else None
        keep_alive = []  # C holds raw pointers to these until this frame is left
        for name in names:
            ctype = ffi.typeof(getattr(callbacks, name))
            handle_cb = c_callback(ffi, ctype, name, invoke)
            setattr(callbacks, name, handle_cb)
            keep_alive.append(handle_cb)
        out = {n: ffi.new("unsigned long *") for n in ("store_mfn", "console_mfn")}
        genid = ffi.new("unsigned long *")
        values: dict[str, Any] = {
            **request.to_json(),
            "xch": handle,
            "xc_handle": handle,
            "hvm": int(request.hvm),
            "pae": int(request.pae),
            "superpages": int(request.superpages),
            "no_incr_generationid": int(request.no_incr_generationid),
            "checkpointed_stream": request.stream_type,
            "vm_generationid_addr": genid,
            "callbacks": callbacks,
            **out,
        }
        ffi.errno = 0
        rc = lib.xc_domain_restore(*(values[p] for p in gen.params))
        err = ffi.errno
        if rc != 0:
            raise _last_error(loaded, handle, err, "xc_domain_restore")
        return RestoreOutputs(
            store_mfn=int(out["store_mfn"][0]),
            console_mfn=int(out["console_mfn"][0]),
            vm_generationid_addr=(int(genid[0]) if "vm_generationid_addr" in gen.params else None),
            generation=gen.name,
        )
    finally:
        _close(loaded, handle)


def restore_in_process(
    abi: Abi, request: RestoreArgs, callbacks: Mapping[str, Callback]
) -> RestoreOutputs:
    """``xc_domain_restore`` in this process; a callback's exception is re-raised after."""
    validate(abi.generation, abi.release, request, callbacks)
    bridge = CallbackBridge(callbacks)
    try:
        result = call_restore(abi, request, callbacks, bridge.invoke)
    except XenError as e:
        bridge.reraise(cause=e)
        raise
    bridge.reraise()
    return result
