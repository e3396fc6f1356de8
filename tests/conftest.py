"""Shared fixtures.

``xen_tools`` gives the tests Debian bookworm's real Xen 4.17 user-space
tools (``convert-legacy-stream``, ``verify-stream-v2``, the ``xen.migration``
modules and the libxen* libraries), unpacked without root by
``tools/fetch-xen.sh``.  The cache folder is ``$XLPY_XEN_CACHE`` (default
``<repo>/.cache/xen-4.17``); when it is missing the fixture runs the fetch
script once per session.  When the tools cannot be had the tests that use the
fixture SKIP with the reason, unless ``XLPY_REQUIRE_XEN_TOOLS=1`` (CI), in
which case they FAIL: CI can never pass by skipping.  Mark such tests
``@pytest.mark.xen_tools``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
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

    def convert_legacy_stream(
        self, src: Path, dst: Path, *args: str
    ) -> subprocess.CompletedProcess[bytes]:
        """``convert-legacy-stream -i SRC -o DST ARGS`` (e.g. ``-w 64 -g pv -f libxl``)."""
        return self.run("convert-legacy-stream", "-i", str(src), "-o", str(dst), *args)


def _cache_dir() -> Path:
    return Path(os.environ.get("XLPY_XEN_CACHE") or REPO / ".cache" / "xen-4.17")


def _locate() -> XenTools | str:
    """The tools, or the reason they cannot be had."""
    cache = _cache_dir()
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


@pytest.fixture(scope="session")
def xen_tools() -> XenTools:
    """Debian's Xen 4.17 tools; skips (or fails with XLPY_REQUIRE_XEN_TOOLS=1) without them."""
    found = _locate()
    if isinstance(found, XenTools):
        return found
    reason = f"DEBIAN XEN 4.17 TOOLS UNAVAILABLE: {found}"
    if os.environ.get("XLPY_REQUIRE_XEN_TOOLS") == "1":
        pytest.fail(reason + " (XLPY_REQUIRE_XEN_TOOLS=1)", pytrace=False)
    pytest.skip(reason)
