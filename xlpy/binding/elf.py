"""Read ``DT_SONAME``/``DT_NEEDED`` from an ELF shared object without loading it.

The soname inside the file, not the name it was opened by, fixes the libxenguest ABI
(abi.md §3): ``XLPY_LIBXENGUEST`` may point at an unversioned ``libxenguest.so`` link.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from xlpy.errors import XenUnavailable

_PT_LOAD, _PT_DYNAMIC = 1, 2
_DT_NULL, _DT_NEEDED, _DT_STRTAB, _DT_SONAME = 0, 1, 5, 14


@dataclass(frozen=True, slots=True)
class Dynamic:
    """The dynamic-section names of one shared object."""

    soname: str | None
    needed: tuple[str, ...]


def read_soname(path: str | Path) -> str | None:
    """The ``DT_SONAME`` of the shared object at ``path``, or None if it has none."""
    return read_dynamic(path).soname


def read_dynamic(path: str | Path) -> Dynamic:
    """The ``DT_SONAME`` and ``DT_NEEDED`` entries of the shared object at ``path``."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or len(data) < 64:
        raise XenUnavailable(f"{path}: not an ELF shared object")
    is64 = data[4] == 2
    end = "<" if data[5] == 1 else ">"
    if is64:
        phoff, phentsize, phnum = (
            struct.unpack_from(end + "Q", data, 32)[0],
            *struct.unpack_from(end + "HH", data, 54),
        )
        ph_fmt, dyn_fmt = end + "IIQQQQQQ", end + "qQ"
    else:
        phoff, phentsize, phnum = (
            struct.unpack_from(end + "I", data, 28)[0],
            *struct.unpack_from(end + "HH", data, 42),
        )
        ph_fmt, dyn_fmt = end + "IIIIIIII", end + "iI"
    loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
    dynamic: tuple[int, int] | None = None  # (offset, filesz)
    for i in range(phnum):
        fields = struct.unpack_from(ph_fmt, data, phoff + i * phentsize)
        if is64:
            p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = fields[:6]
        else:
            p_type, p_offset, p_vaddr, _paddr, p_filesz = fields[:5]
        if p_type == _PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == _PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        return Dynamic(None, ())
    strtab = soname = None
    needed: list[int] = []
    step = struct.calcsize(dyn_fmt)
    for pos in range(dynamic[0], dynamic[0] + dynamic[1] - step + 1, step):
        tag, val = struct.unpack_from(dyn_fmt, data, pos)
        if tag == _DT_NULL:
            break
        if tag == _DT_STRTAB:
            strtab = val
        elif tag == _DT_SONAME:
            soname = val
        elif tag == _DT_NEEDED:
            needed.append(val)
    if strtab is None:
        return Dynamic(None, ())
    # DT_STRTAB holds a virtual address; map it back to a file offset.
    base = next((off - va + strtab for va, off, size in loads if va <= strtab < va + size), None)
    if base is None:
        return Dynamic(None, ())

    def name(index: int) -> str:
        start = base + index
        return data[start : data.index(b"\0", start)].decode("ascii", "replace")

    return Dynamic(None if soname is None else name(soname), tuple(name(n) for n in needed))
