"""Build real libxenctrl + libxenguest of a Xen release, and the fakexen shim for it.

A release's libraries are compiled from the release's own source lists
(``CTRL_SRCS-*``/``GUEST_SRCS-*``/``ELF_SRCS-*`` in ``tools/libxc/Makefile``) with one
gcc command per file, without Xen's configure or Makefiles, into
``.cache/libxc/<release>/``.  The shim (``fakexen/fakexen.c``) is compiled against the
same release's public headers, because libxc checks the domctl/sysctl interface version.
A build is reused while the source tarball, the shim and this recipe are unchanged
(:data:`RECIPE` and the hashes recorded in ``build.json``).

Debian's binary Xen 4.17 (``.cache/xen-4.17``, from ``make xen-cache``) is the release
``4.17``: nothing is compiled but the shim, against Debian's ``libxen-dev`` headers.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from xlpy.errors import UsageError, XlpyError

ENV_SOURCES = "XLPY_XEN_SRC"
ENV_CACHE = "XLPY_LIBXC_CACHE"
DEBIAN = "4.17"
#: Bumped when the way a release is built changes, so old builds are redone.
RECIPE = 1

#: The releases ``xlpy libxc build`` builds when none is named.
DEFAULT_RELEASES = (
    "4.0.4",
    "4.1.6.1",
    "4.2.5",
    "4.3.1",
    "4.3.2",
    "4.4.4",
    "4.5.5",
    "4.6.6",
    DEBIAN,
)

_CFLAGS = (
    "-O1",
    "-g",
    "-fPIC",
    "-std=gnu99",
    "-fno-strict-aliasing",
    "-Wall",
    "-Wno-error",
    "-Wno-pointer-sign",
    "-Wno-unused-but-set-variable",
    "-Wno-unused-local-typedefs",
    "-D__XEN_TOOLS__",
    "-D_GNU_SOURCE",
    "-D_FILE_OFFSET_BITS=64",
    "-D_LARGEFILE_SOURCE",
    "-D_LARGEFILE64_SOURCE",
    "-pthread",
)
#: Makefile conditions that hold for an x86 Linux build with migration.
_CONDITIONS = {
    "y",
    "$(CONFIG_X86)",
    "$(CONFIG_Linux)",
    "$(CONFIG_X86_Linux)",
    "$(CONFIG_HVM)",
    "$(CONFIG_MIGRATE)",
}
#: Sources left out: other platforms, optional decompressors needing extra libraries,
#: the no-migration stub.
_EXCLUDE = re.compile(r"solaris|netbsd|minios|freebsd|ia64|arm|nomigrate|decompress_unsafe")
_SRC_LINE = re.compile(r"^(CTRL|GUEST|ELF)_SRCS-(\S+)\s*[:+]?=\s*(.*)$")


class BuildFailed(XlpyError, RuntimeError):
    """A release's libraries or its shim did not build (the reason names the step)."""


@dataclass(frozen=True, slots=True)
class Built:
    """One release ready to run: its libraries, the shim, and how it was built."""

    release: str
    directory: Path
    libxenguest: Path
    shim: Path
    info: dict[str, object]


def repo_root() -> Path:
    """The checkout xlpy runs from (``fakexen/`` and ``.cache/`` live there)."""
    return Path(__file__).resolve().parent.parent.parent


def shim_source() -> Path:
    """``fakexen/fakexen.c`` of this checkout."""
    return repo_root() / "fakexen" / "fakexen.c"


def cache_dir() -> Path:
    """``$XLPY_LIBXC_CACHE``, else ``.cache/libxc`` of this checkout."""
    env = os.environ.get(ENV_CACHE)
    return Path(env) if env else repo_root() / ".cache" / "libxc"


def sources_dir() -> Path | None:
    """``$XLPY_XEN_SRC``, else ``../shared/xen-src`` next to the checkout, if it exists."""
    env = os.environ.get(ENV_SOURCES)
    if env:
        return Path(env)
    shared = repo_root().parent / "shared" / "xen-src"
    return shared if shared.is_dir() else None


def debian_root() -> Path:
    """Debian's unpacked Xen 4.17 (``make xen-cache``)."""
    return repo_root() / ".cache" / "xen-4.17"


def normalise(release: str) -> str:
    """``xen-4.3.1`` or ``4.3.1`` -> ``4.3.1``."""
    name = release.removeprefix("xen-")
    if not re.fullmatch(r"\d+\.\d+(\.\d+)*", name):
        raise UsageError(f"not a Xen release: {release!r} (e.g. 4.3.1, xen-4.5.5, 4.17)")
    return name


def tarball(release: str) -> Path:
    """The source tarball of ``release`` in :func:`sources_dir`."""
    src = sources_dir()
    if src is None:
        raise UsageError(
            f"no Xen sources: set {ENV_SOURCES} to a directory of xen-<release>.tar.xz"
        )
    path = src / f"xen-{release}.tar.xz"
    if not path.is_file():
        known = sorted(p.name for p in src.glob("xen-*.tar.xz"))
        raise UsageError(f"no {path.name} in {src} (there: {', '.join(known) or 'none'})")
    return path


def _sha256(*paths: Path) -> str:
    h = hashlib.sha256(f"recipe {RECIPE}\n".encode())
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


def _soname_version(release: str) -> str:
    major, minor = release.split(".")[:2]
    return f"{major}.{minor}"


def _run(cmd: list[str], log: Path, step: str) -> None:
    with log.open("a") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    if rc != 0:
        tail = log.read_text(errors="replace").splitlines()[-12:]
        raise BuildFailed(f"{step} failed (exit {rc}):\n" + "\n".join(tail))


def _prepare_tree(tree: Path) -> None:
    """What ``tools/include/Makefile`` would do: the ``xen/`` header tree and the
    generated foreign headers (``mkheader.py`` made to run on Python 3)."""
    include = tree / "tools" / "include"
    public = tree / "xen" / "include" / "public"
    foreign = include / "xen-foreign"
    mk = foreign / "mkheader.py"
    text = mk.read_text()
    # Python 2 idioms in every release up to 4.5: dict views are not lists, and
    # list.sort lost its cmp argument.
    text = text.replace(
        "integers = inttypes[arch].keys();", "integers = list(inttypes[arch].keys());"
    )
    text = text.replace(
        "integers.sort(lambda a, b: cmp(len(b),len(a)));", "integers.sort(key=len, reverse=True);"
    )
    mk.write_text(text)
    for arch in ("x86_32", "x86_64"):
        out = foreign / f"{arch}.h"
        if out.exists():
            continue
        headers = [
            public / "arch-x86" / f"xen-{arch}.h",
            public / "arch-x86" / "xen.h",
            public / "xen.h",
        ]
        subprocess.run(
            ["python3", "mkheader.py", arch, out.name, *map(str, headers)],
            cwd=foreign,
            check=True,
            capture_output=True,
        )
    xen = include / "xen"
    if xen.exists() and not xen.is_symlink():
        shutil.rmtree(xen)
    xen.mkdir(exist_ok=True)
    for entry in public.iterdir():
        if entry.suffix == ".h" or entry.is_dir():
            (xen / entry.name).symlink_to(entry)
    (xen / "foreign").symlink_to(foreign)
    linux = include / "xen-sys" / "Linux"
    if linux.exists():
        (xen / "sys").symlink_to(linux)
    libelf = tree / "xen" / "include" / "xen"
    if (libelf / "libelf.h").exists():
        (xen / "libelf").mkdir()
        for name in ("libelf.h", "elfstructs.h"):
            if (libelf / name).exists():
                (xen / "libelf" / name).symlink_to(libelf / name)
    libxc = tree / "tools" / "libxc"
    if not (libxc / "_paths.h").exists():
        # 4.5+ generate it at configure time; libxc uses XEN_RUN_DIR only.
        (libxc / "_paths.h").write_text(
            '#define XEN_RUN_DIR "/var/run/xen"\n#define XEN_LIB_DIR "/var/lib/xen"\n'
        )


def _source_lists(makefile: Path) -> tuple[list[str], list[str]]:
    ctrl: list[str] = []
    guest: list[str] = []
    for line in makefile.read_text().replace("\\\n", " ").splitlines():
        m = _SRC_LINE.match(line.strip())
        if not m or m[2] not in _CONDITIONS:
            continue
        files = [f for f in m[3].split() if f.endswith(".c") and not _EXCLUDE.search(f)]
        (ctrl if m[1] == "CTRL" else guest).extend(f for f in files if f not in ctrl + guest)
    return ctrl, guest


def _compile_all(tree: Path, files: Iterable[str], objdir: Path, log: Path) -> list[Path]:
    libxc = tree / "tools" / "libxc"
    elf = tree / "xen" / "common" / "libelf"
    flags = [
        *_CFLAGS,
        f"-I{libxc}",
        f"-I{libxc / 'include'}",
        f"-I{tree / 'tools' / 'include'}",
        f"-I{elf}",
        f"-I{tree / 'tools' / 'xenstore'}",
        f"-I{tree / 'tools' / 'xenstore' / 'include'}",
    ]
    objdir.mkdir(parents=True, exist_ok=True)

    def one(name: str) -> tuple[str, Path, subprocess.CompletedProcess[str]]:
        src = libxc / name if (libxc / name).exists() else elf / name
        obj = objdir / (Path(name).stem + ".o")
        proc = subprocess.run(
            ["gcc", *flags, "-c", "-o", str(obj), str(src)],
            capture_output=True,
            text=True,
            check=False,
        )
        return name, obj, proc

    objects = []
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool, log.open("a") as out:
        for name, obj, proc in pool.map(one, list(files)):
            out.write(f"== {name}\n{proc.stderr}")
            if proc.returncode != 0:
                raise BuildFailed(f"compiling {name} failed:\n" + proc.stderr[-1500:])
            objects.append(obj)
    return objects


def _compile_shim(include: Path, out: Path, log: Path) -> None:
    _run(
        [
            "gcc",
            "-O1",
            "-g",
            "-fPIC",
            "-shared",
            "-Wall",
            "-Werror",
            "-Wno-error=unused-function",
            f"-I{include}",
            "-o",
            str(out),
            str(shim_source()),
            "-ldl",
        ],
        log,
        "compiling the fakexen shim",
    )


def _build_release(release: str, target: Path) -> dict[str, object]:
    started = time.monotonic()
    tar = tarball(release)
    log = target / "build.log"
    with tempfile.TemporaryDirectory(prefix=f"xen-{release}.", dir=target) as tmp:
        with tarfile.open(tar) as t:
            t.extractall(tmp, filter="data")
        tree = Path(tmp) / f"xen-{release}"
        makefile = tree / "tools" / "libxc" / "Makefile"
        if not makefile.exists():
            raise BuildFailed(
                f"{release}: no tools/libxc/Makefile (from 4.7 libxc is split into "
                f"tools/libs/*, which this recipe does not build yet)"
            )
        _prepare_tree(tree)
        ctrl, guest = _source_lists(makefile)
        if release.startswith(("4.0.", "4.1.")):
            # needs xenstore's xs.h (not in the subset); offlining pages is not used
            # by save/restore.
            guest = [f for f in guest if f != "xc_offline_page.c"]
        lib = target / "lib"
        lib.mkdir(exist_ok=True)
        ver = _soname_version(release)
        ctrl_objs = _compile_all(tree, ctrl, Path(tmp) / "obj", log)
        guest_objs = _compile_all(tree, guest, Path(tmp) / "obj", log)
        ctrl_so = lib / f"libxenctrl.so.{ver}"
        guest_so = lib / f"libxenguest.so.{ver}"
        _run(
            [
                "gcc",
                "-shared",
                f"-Wl,-soname,{ctrl_so.name}",
                "-o",
                str(ctrl_so),
                *map(str, ctrl_objs),
                "-ldl",
                "-pthread",
            ],
            log,
            "linking libxenctrl",
        )
        (lib / "libxenctrl.so").unlink(missing_ok=True)
        (lib / "libxenctrl.so").symlink_to(ctrl_so.name)
        _run(
            [
                "gcc",
                "-shared",
                f"-Wl,-soname,{guest_so.name}",
                "-o",
                str(guest_so),
                *map(str, guest_objs),
                f"-L{lib}",
                "-lxenctrl",
                "-lz",
                "-pthread",
            ],
            log,
            "linking libxenguest",
        )
        _compile_shim(tree / "tools" / "include", target / "fakexen.so", log)
    warnings = log.read_text(errors="replace").count("warning:")
    return {
        "release": release,
        "source": str(tar),
        "libxenguest": f"lib/libxenguest.so.{ver}",
        "compiled": len(ctrl) + len(guest),
        "gcc_warnings": warnings,
        "seconds": round(time.monotonic() - started, 1),
    }


def _build_debian(target: Path) -> dict[str, object]:
    started = time.monotonic()
    root = debian_root()
    lib = root / "usr" / "lib" / "x86_64-linux-gnu" / "libxenguest.so.4.17"
    include = root / "usr" / "include"
    if not lib.exists() or not (include / "xen" / "domctl.h").exists():
        raise UsageError(f"Debian's Xen 4.17 is not in {root}: run `make xen-cache` first")
    _compile_shim(include, target / "fakexen.so", target / "build.log")
    return {
        "release": DEBIAN,
        "source": str(root),
        "libxenguest": str(lib),
        "compiled": 0,
        "gcc_warnings": 0,
        "seconds": round(time.monotonic() - started, 1),
    }


def _source_hash(release: str) -> str:
    if release == DEBIAN:
        lib = debian_root() / "usr" / "lib" / "x86_64-linux-gnu" / "libxenguest.so.4.17"
        return _sha256(shim_source(), lib) if lib.exists() else ""
    return _sha256(shim_source(), tarball(release))


def built(release: str) -> Built | None:
    """The cached build of ``release`` if it is current, else None."""
    release = normalise(release)
    target = cache_dir() / release
    try:
        info = json.loads((target / "build.json").read_text())
    except (OSError, ValueError):
        return None
    try:
        current = info.get("hash") == _source_hash(release)
    except UsageError:  # sources gone: the build stands as it was made
        current = True
    if not current or not info.get("ok"):
        return None
    lib = Path(info["libxenguest"])
    return Built(
        release, target, lib if lib.is_absolute() else target / lib, target / "fakexen.so", info
    )


def build(release: str, *, force: bool = False) -> Built:
    """Build ``release`` (or reuse the current cached build); raises :class:`BuildFailed`.

    A failed build is recorded (``build.json`` with ``ok: false`` and the reason) and
    raised; the next call tries again.
    """
    release = normalise(release)
    if not force and (done := built(release)) is not None:
        return done
    cache_dir().mkdir(parents=True, exist_ok=True)
    # Test workers and a user's command may build the same release at once: one builds,
    # the others wait and reuse it.
    with open(cache_dir() / f".{release}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and (done := built(release)) is not None:
            return done
        return _build_locked(release)


def _build_locked(release: str) -> Built:
    digest = _source_hash(release)
    target = cache_dir() / release
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    try:
        info = _build_debian(target) if release == DEBIAN else _build_release(release, target)
    except (BuildFailed, subprocess.CalledProcessError, OSError, tarfile.TarError) as e:
        reason = str(e)
        (target / "build.json").write_text(
            json.dumps(
                {"release": release, "ok": False, "hash": digest, "reason": reason}, indent=2
            )
            + "\n"
        )
        raise BuildFailed(f"xen {release}: {reason}") from None
    info.update(ok=True, hash=digest, recipe=RECIPE)
    (target / "build.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    done = built(release)
    if done is None:
        raise BuildFailed(f"xen {release}: the build left no usable build.json")
    return done


def listing() -> list[dict[str, object]]:
    """Every release in the cache with its state (``ok``, ``stale``, ``failed``)."""
    rows = []
    root = cache_dir()
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        try:
            info = json.loads((d / "build.json").read_text())
        except (OSError, ValueError):
            continue
        state = "failed" if not info.get("ok") else "ok" if built(d.name) else "stale"
        rows.append({**info, "state": state})
    return rows
