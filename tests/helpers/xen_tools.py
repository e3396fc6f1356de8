"""Debian bookworm's Xen 4.17 user-space tools, located (or fetched) for the tests.

:func:`locate` finds ``convert-legacy-stream``, ``verify-stream-v2``, the
``xen.migration`` modules and the libxen* libraries unpacked without root by
``tools/fetch-xen.sh`` in :func:`cache_dir`, running the script when they are
missing; the ``xen_tools`` fixture (``tests/conftest.py``) is built on it.
:func:`converter_cases` is the ``xlpy gen`` matrix that Xen's converter takes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.paths import REPO

XEN_LIBEXEC = "usr/lib/xen-4.17"


@dataclass(frozen=True)
class XenTools:
    """Paths into the unpacked Debian packages and a way to run their tools."""

    root: Path
    #: ``usr/lib/xen-4.17/bin``: convert-legacy-stream, verify-stream-v2, ...
    bin_dir: Path
    #: ``usr/lib/xen-4.17/lib/python``: the ``xen`` package (``xen.migration``).
    python_dir: Path
    #: Folders holding libxenctrl, libxenguest and the stable libxen* libraries.
    lib_dirs: tuple[Path, ...]
    #: The machine's python3, which runs Xen's ``#!/usr/bin/python3`` scripts.
    python: str

    @property
    def env(self) -> dict[str, str]:
        """The current environment plus PYTHONPATH and LD_LIBRARY_PATH into the cache."""
        env = dict(os.environ)
        env["PYTHONPATH"] = str(self.python_dir)
        libs = [str(p) for p in self.lib_dirs]
        if env.get("LD_LIBRARY_PATH"):
            libs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
        return env

    def tool(self, name: str) -> Path:
        """Path of one of Xen's tools (e.g. ``"verify-stream-v2"``)."""
        return self.bin_dir / name

    def run(
        self,
        name: str,
        *args: str,
        input: bytes | None = None,
        stdin: int | None = None,
        stdout: int | None = subprocess.PIPE,
        timeout: float = 300,
        pass_fds: Sequence[int] = (),
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a Xen Python tool with the machine's python3; never raises on exit status."""
        return subprocess.run(
            [self.python, str(self.tool(name)), *args],
            input=input,
            stdin=stdin if input is None else None,
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=self.env,
            timeout=timeout,
            pass_fds=tuple(pass_fds),
            check=False,
        )

    def verify_stream_v2(
        self, path: Path, fmt: str = "libxc"
    ) -> subprocess.CompletedProcess[bytes]:
        """``verify-stream-v2 -i PATH -f FMT`` (libxc, libxl or xl)."""
        return self.run("verify-stream-v2", "-i", str(path), "-f", fmt)

    def verify_stream_v2_batch(self, items: Sequence[tuple[Path, str]]) -> list[tuple[int, str]]:
        """(exit code, stderr) of verify-stream-v2 for many (path, format) pairs.

        Loads the real script once in one python3 process and calls its own
        ``read_stream`` per file, with ``fin`` opened as its ``main`` opens it;
        saves a process start per stream in large corpora.
        """
        proc = subprocess.run(
            [self.python, "-c", _VERIFY_BATCH_DRIVER, str(self.tool("verify-stream-v2"))],
            input="".join(json.dumps([str(p), f]) + "\n" for p, f in items).encode(),
            capture_output=True,
            env=self.env,
            timeout=600,
            check=True,
        )
        return [tuple(json.loads(line)) for line in proc.stdout.splitlines()]  # type: ignore[misc]

    def convert_legacy_stream(
        self, src: Path, dst: Path, *args: str
    ) -> subprocess.CompletedProcess[bytes]:
        """``convert-legacy-stream -i SRC -o DST ARGS`` (e.g. ``-w 64 -g pv -f libxl``)."""
        return self.run("convert-legacy-stream", "-i", str(src), "-o", str(dst), *args)


_VERIFY_BATCH_DRIVER = r"""
import contextlib, importlib.machinery, importlib.util, io, json, sys
loader = importlib.machinery.SourceFileLoader("verify_stream_v2", sys.argv[1])
mod = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
loader.exec_module(mod)
for line in sys.stdin:
    path, fmt = json.loads(line)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), open(path, "rb", 0) as f:
        mod.fin = f
        rc = mod.read_stream(fmt)
    print(json.dumps([rc, err.getvalue()[-2000:]]), flush=True)
"""


def cache_dir() -> Path:
    return Path(os.environ.get("XLPY_XEN_CACHE") or REPO / ".cache" / "xen-4.17")


def locate() -> XenTools | str:
    """The tools, or the reason they cannot be had."""
    cache = cache_dir()
    if not (cache / ".complete").exists():
        script = REPO / "tools" / "fetch-xen.sh"
        try:
            proc = subprocess.run(
                ["bash", str(script), str(cache)],
                capture_output=True,
                timeout=900,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"tools/fetch-xen.sh could not run: {e}"
        if proc.returncode != 0:
            msg = proc.stderr.decode(errors="replace").strip().splitlines()
            tail = msg[-1] if msg else ""
            return f"tools/fetch-xen.sh {cache} failed (exit {proc.returncode}): {tail}"
    python = shutil.which("python3") or sys.executable
    tools = XenTools(
        root=cache,
        bin_dir=cache / XEN_LIBEXEC / "bin",
        python_dir=cache / XEN_LIBEXEC / "lib" / "python",
        lib_dirs=(
            cache / "usr" / "lib" / "x86_64-linux-gnu",
            cache / XEN_LIBEXEC / "lib" / "x86_64-linux-gnu",
        ),
        python=python,
    )
    for name in ("convert-legacy-stream", "verify-stream-v2"):
        if not tools.tool(name).is_file():
            return f"{tools.tool(name)} missing from the unpacked xen-utils-4.17"
    probe = subprocess.run(
        [python, "-c", "import xen.migration.libxc, xen.migration.legacy"],
        env=tools.env,
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        return f"Xen's python modules do not import: {probe.stderr.decode(errors='replace')}"
    return tools


SENDERS = ("xen-4.0", "xen-4.1", "xen-4.2", "xen-4.3", "xen-4.5")


def converter_cases() -> list[tuple[str, int, int, str, str, str]]:
    """What Xen's converter supports, as (guest, guest width, toolstack width, sender,
    framing, output format).

    xen-4.0 predates xl's save format (gen refuses ``--toolstack xl`` for it), and
    its HVM images end in a to-EOF ``QemuDeviceModelRecord`` that the converter does
    not take: its streams here are the bare PV ones.
    """
    out = []
    for sender in SENDERS:
        xl = sender != "xen-4.0"
        for gw, w in ((64, 64), (32, 64), (32, 32)):
            out.append(("pv", gw, w, sender, "bare", "libxc"))
            if xl:
                out.append(("pv", gw, w, sender, "xl", "libxl"))
        out.append(("pv", 64, 64, sender, "bare", "libxl"))
        for w in (64, 32) if xl else ():
            out.append(("hvm", 64, w, sender, "xl", "libxl"))
    return out
