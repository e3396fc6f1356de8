"""Find the installed libxenguest and tell which ABI generation it has (abi.md §3).

The library is found by soname through the dynamic loader (so ``LD_LIBRARY_PATH`` and
the ldconfig cache work), or taken from ``XLPY_LIBXENGUEST=/path``.  The generation comes
from the soname *inside the file*, confirmed by the symbol version where the release has
one (≥4.15) and split by feature where one soname covers two ABIs (4.0/4.1:
``xtl_createlogger_stdiostream`` exists only from 4.1).  Version strings such as
Debian's ``4.17.7+13-g…`` are never parsed.  ``XLPY_XENGUEST_GENERATION`` overrides the
result; it is required for ``libxenguest.so.4.3``, whose 4.3.1 and 4.3.2 builds take
different arguments that no exported name tells apart.

Only ctypes is used here, so ``xlpy abi`` works without cffi.
"""

from __future__ import annotations

import ctypes
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from xlpy.binding.elf import read_dynamic
from xlpy.binding.generations import Generation, by_name
from xlpy.errors import LibraryNotFound, UsageError, XenUnavailable

ENV_LIBRARY = "XLPY_LIBXENGUEST"
ENV_GENERATION = "XLPY_XENGUEST_GENERATION"

#: Sonames tried through the loader, newest first (4.1 shares 4.0's, sic).
KNOWN_SONAMES = (*(f"libxenguest.so.4.{n}" for n in range(22, 1, -1)), "libxenguest.so.4.0")

_SONAME = re.compile(r"^libxenguest\.so\.(\d+)\.(\d+)$")
_RTLD_DI_LINKMAP = 2


@dataclass(frozen=True, slots=True)
class Abi:
    """What was found: the loaded file and the generation its declarations must follow."""

    library: str
    soname: str
    symbol_version: str | None
    generation: Generation
    #: The Xen release as far as the binary tells (``"4.17"``; ``"4.1"`` after the
    #: 4.0/4.1 split; the overriding value for ``.so.4.3``).
    release: str
    #: True when ``XLPY_XENGUEST_GENERATION`` chose the generation.
    overridden: bool

    def to_json(self) -> dict[str, object]:
        """The ``xlpy abi --json`` document."""
        return {
            "library": self.library,
            "soname": self.soname,
            "symbol_version": self.symbol_version,
            "generation": self.generation.name,
            "release": self.release,
            "overridden": self.overridden,
            "cdefs": [str(p) for p in self.generation.cdef_paths()],
        }


def debian_package(soname: str) -> str:
    """The Debian package shipping ``soname`` (abi.md §3 "How Debian names the files")."""
    m = re.match(r"^lib(xen[a-z]+)\.so\.(\d+)(?:\.(\d+))?", soname)
    if not m:
        return "libxen-dev"
    name, major, minor = m.groups()
    if minor is not None:  # the unstable, versioned ABI: libxenctrl/libxenguest/...
        return f"libxenmisc{major}.{minor}"
    return f"lib{name}{major}"


class _LinkMap(ctypes.Structure):
    _fields_ = (("l_addr", ctypes.c_void_p), ("l_name", ctypes.c_char_p))


def _libdl() -> ctypes.CDLL:
    libdl = ctypes.CDLL(None)
    libdl.dlvsym.restype = ctypes.c_void_p
    libdl.dlvsym.argtypes = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p)
    libdl.dlinfo.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)
    return libdl


def _loaded_path(lib: ctypes.CDLL) -> str:
    """The file the loader actually mapped for ``lib``."""
    link = ctypes.POINTER(_LinkMap)()
    if _libdl().dlinfo(lib._handle, _RTLD_DI_LINKMAP, ctypes.byref(link)) != 0 or not link:
        return str(lib._name)
    name = link.contents.l_name
    return os.fsdecode(name) if name else str(lib._name)


def _missing_from(error: OSError) -> str:
    """The object the loader could not open, from its ``dlerror()`` text."""
    return str(error).split(":", 1)[0].strip()


def _not_found(missing: str, detail: str, package: str | None = None) -> LibraryNotFound:
    package = package or debian_package(os.path.basename(missing))
    return LibraryNotFound(
        f"cannot load {missing}: {detail}; it is in Debian's {package} package "
        f"(`apt-get install libxen-dev` brings libxenguest and everything it needs), "
        f"or point {ENV_LIBRARY}=/path/libxenguest.so.4.N at a copy",
        missing=missing,
        package=package,
    )


def _preload_needed(path: Path, seen: set[str]) -> None:
    """dlopen the NEEDED libraries that sit next to ``path``, dependencies first.

    ``LD_LIBRARY_PATH`` set inside a running Python has no effect (abi.md §5b), so a
    library named by path finds its siblings only if they are already loaded (the
    loader matches NEEDED entries against loaded sonames).  Everything is loaded
    ``RTLD_LOCAL``: a Xen library must never interpose symbols on other code, nor other
    code on it.
    """
    for needed in read_dynamic(path).needed:
        sibling = path.parent / needed
        if needed in seen or not sibling.exists():
            continue
        seen.add(needed)
        _preload_needed(sibling, seen)
        ctypes.CDLL(str(sibling), mode=ctypes.RTLD_LOCAL)


def load_library(env: Mapping[str, str] | None = None) -> ctypes.CDLL:
    """Open libxenguest as ``XLPY_LIBXENGUEST`` names it, or by soname via the loader."""
    env = os.environ if env is None else env
    explicit = env.get(ENV_LIBRARY)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise _not_found(explicit, f"no such file (from {ENV_LIBRARY})")
        _preload_needed(path.resolve(), set())
        try:
            return ctypes.CDLL(str(path), mode=ctypes.RTLD_LOCAL)
        except OSError as e:
            raise _not_found(_missing_from(e), str(e)) from None
    for soname in KNOWN_SONAMES:
        try:
            return ctypes.CDLL(soname, mode=ctypes.RTLD_LOCAL)
        except OSError as e:
            missing = _missing_from(e)
            if missing != soname:  # found, but one of its dependencies is not
                raise _not_found(missing, str(e)) from None
    raise _not_found(
        "libxenguest.so.4.N",
        "no libxenguest is known to the dynamic loader (LD_LIBRARY_PATH, ldconfig cache)",
        package="libxenmisc4.N (bookworm: libxenmisc4.17)",
    )


def _symbol_version(lib: ctypes.CDLL, major: int, minor: int) -> str | None:
    """The version of ``xc_domain_restore``: the soname's release first, then any known one."""
    libdl = _libdl()
    # glibc's dlvsym matches any version in an unversioned object: probe with a bogus one.
    if libdl.dlvsym(lib._handle, b"xc_domain_restore", b"XLPY_NO_SUCH_VERSION"):
        return None
    releases = [(major, minor)] + [(4, n) for n in range(15, 23) if (4, n) != (major, minor)]
    for ma, mi in releases:
        # VERS_4.N.0 in 4.15-4.17, libxenguest_4.N.0 from 4.18 on (abi.md §1a).
        for version in (f"VERS_{ma}.{mi}.0", f"libxenguest_{ma}.{mi}.0"):
            if libdl.dlvsym(lib._handle, b"xc_domain_restore", version.encode()):
                return version
    return None


def _overridden_release(override: str, generation: Generation, soname_release: str) -> str:
    """The release an override stands for: the release it names, else the generation's
    first release of the soname's ``major.minor`` (``.so.4.3`` as ``4.3.2-4.4`` is 4.3.2,
    not 4.4, whose Remus failover bug 4.3.2-4.3.4 lack), else the generation's newest.
    """
    if override in generation.releases:
        return override
    if soname_release in generation.releases:
        return soname_release
    same = [r for r in generation.releases if r.startswith(soname_release + ".")]
    return same[0] if same else generation.releases[-1]


def detect(env: Mapping[str, str] | None = None) -> Abi:
    """Load libxenguest and tell its ABI generation; raises :class:`XenUnavailable`."""
    env = os.environ if env is None else env
    lib = load_library(env)
    path = _loaded_path(lib)
    soname = read_dynamic(path).soname or os.path.basename(path)
    m = _SONAME.match(soname)
    if not m:
        raise XenUnavailable(f"{path}: soname {soname!r} is not libxenguest.so.MAJOR.MINOR")
    major, minor = int(m[1]), int(m[2])
    release = f"{major}.{minor}"
    symbol_version = _symbol_version(lib, major, minor)
    override = env.get(ENV_GENERATION)
    if override:
        try:
            generation = by_name(override)
        except UsageError as e:
            raise UsageError(f"{ENV_GENERATION}: {e}") from None
        release = _overridden_release(override, generation, release)
        return Abi(path, soname, symbol_version, generation, release, overridden=True)
    versioned = re.search(r"_(\d+)\.(\d+)\.0$", symbol_version or "")
    if versioned and (int(versioned[1]), int(versioned[2])) != (major, minor):
        raise XenUnavailable(
            f"{path}: soname {soname} but xc_domain_restore is versioned {symbol_version}; "
            f"the file is not what its name says (set {ENV_GENERATION} if you know better)"
        )
    if (major, minor) == (4, 0) and hasattr(lib, "xtl_createlogger_stdiostream"):
        release = "4.1"
    elif (major, minor) == (4, 3):
        raise XenUnavailable(
            f"{path} ({soname}) is Xen 4.3.0/4.3.1 (no checkpointed_stream argument) or "
            f"4.3.2-4.3.4 (with it) and the binary cannot tell which: set "
            f"{ENV_GENERATION}=4.3.1 or {ENV_GENERATION}=4.3.2 (the release you run)"
        )
    try:
        generation = by_name(release)
    except UsageError:
        raise XenUnavailable(
            f"{path}: {soname} is not an ABI xlpy knows (4.0 to 4.22); if its "
            f"xc_domain_restore matches a known one, set {ENV_GENERATION}"
        ) from None
    return Abi(path, soname, symbol_version, generation, release, overridden=False)
