"""The raw binding: a cffi ABI-mode FFI for one generation, opened on the detected library.

Declarations are loaded in the generation's explicit order (``common.h`` first, then the
generation file) and never compiled: the target machine needs no compiler.  This layer
checks nothing; callers go through :mod:`xlpy.binding.restore`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from xlpy.binding.detect import ENV_LIBRARY, Abi, load_library
from xlpy.binding.generations import by_name
from xlpy.errors import XenUnavailable


@functools.cache
def build_ffi(name: str) -> Any:
    """A ``cffi.FFI`` holding the declarations of generation ``name`` (cached)."""
    try:
        import cffi
    except ImportError:
        raise XenUnavailable(
            "the libxc backend needs cffi: pip install 'xlpy[xen]' (Debian: python3-cffi)"
        ) from None
    ffi = cffi.FFI()
    for text in by_name(name).cdef_text():
        ffi.cdef(text)
    return ffi


@dataclass(frozen=True, slots=True)
class Loaded:
    """An FFI and the library opened with it."""

    abi: Abi
    ffi: Any
    lib: Any


def load(abi: Abi) -> Loaded:
    """Open ``abi.library`` with its generation's declarations."""
    ffi = build_ffi(abi.generation.name)
    load_library({ENV_LIBRARY: abi.library})  # its siblings first, when named by path
    try:
        lib = ffi.dlopen(abi.library)
    except OSError as e:
        raise XenUnavailable(f"cannot load {abi.library}: {e}") from None
    return Loaded(abi, ffi, lib)
