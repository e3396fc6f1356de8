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

import json
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


# --- v2 sample streams ----------------------------------------------------------


@dataclass(frozen=True)
class V2Sample:
    """A small valid v2 stream and the ``-f`` format Xen's verify-stream-v2 needs for it."""

    data: bytes
    fmt: str  # "libxc", "libxl" or "xl"


def _v2_sample(
    *,
    guest: str,
    width: int = 8,
    version: int = 3,
    framing: str = "libxc",
    xenstore: bool = False,
    checkpoints: int = 0,
) -> V2Sample:
    import io

    import numpy as np

    from xlpy.stream.v2 import format as F
    from xlpy.stream.v2.writer import V2Writer

    rng = np.random.default_rng(width * 10 + version)
    out = io.BytesIO()
    w = V2Writer(out)
    if framing == "xl":
        w.xl_header(optional_data=b"\x05\0\0\0name\n")
    if framing in ("xl", "libxl"):
        w.libxl_header(options=F.LIBXL_OPT_LEGACY)
        w.libxc_context()
    w.image_header(version=version)
    pv = guest == "pv"
    w.domain_header(F.DHDR_TYPE_X86_PV if pv else F.DHDR_TYPE_X86_HVM, xen_major=4, xen_minor=17)
    if pv:
        w.x86_pv_info(width, 4 if width == 8 else 3)
    if version >= 3:
        w.static_data_end()
    if pv:
        w.x86_pv_p2m_frames(0, 255, [17])
    w.page_data_pfns(np.arange(8), rng.integers(0, 256, 8 * 4096, dtype=np.uint8))
    w.page_data_pfns(
        [8, 9, 10],
        rng.integers(0, 256, 4096, dtype=np.uint8),
        types=[F.XEN_DOMCTL_PFINFO_XTAB, F.XEN_DOMCTL_PFINFO_L1TAB, F.XEN_DOMCTL_PFINFO_XALLOC],
    )
    for i in range(checkpoints):
        w.checkpoint()
        w.emulator_context(b"QEVM-ckpt%d" % i)
        w.checkpoint_end()
        w.page_data_pfns([i], bytes(4096))
    w.tsc_info(0, 2_000_000, 123456789, 2)
    if pv:
        w.x86_pv_vcpu_basic(0, bytes(5168 if width == 8 else 2800))
        w.x86_pv_vcpu_extended(0, bytes(128))
        w.x86_pv_vcpu_xsave(0, b"\x07" * 13)  # 3 bytes of padding
        w.shared_info(bytes(4096))
    else:
        w.hvm_params([(1, 0xFEFFF), (6, 0xFEFFE), (9, 0xFEFFD)])
        w.hvm_context(b"\x55" * 1021)  # 3 bytes of padding
    w.end()
    if framing in ("xl", "libxl"):
        if xenstore:
            w.emulator_xenstore_data([(b"physmap/1/start_addr", b"f0000000")])
        if not pv:
            w.emulator_context(b"QEVM" + bytes(37))
        w.end()
    return V2Sample(out.getvalue(), framing)


V2_SAMPLE_SPECS: dict[str, dict[str, object]] = {
    "pv64-libxc-v3": {"guest": "pv", "width": 8},
    "pv32-libxc-v2": {"guest": "pv", "width": 4, "version": 2},
    "hvm-libxc-v2": {"guest": "hvm", "version": 2},
    "hvm-libxl": {"guest": "hvm", "framing": "libxl"},
    "pv-xl": {"guest": "pv", "framing": "xl"},
}
#: Valid streams Xen's verify-stream-v2 rejects on Python 3 (pinned differences).
V2_SAMPLE_SPECS_XEN_MISREADS: dict[str, dict[str, object]] = {
    "hvm-libxl-xenstore": {"guest": "hvm", "framing": "libxl", "xenstore": True},
    "pv-libxl-checkpointed": {"guest": "pv", "framing": "libxl", "checkpoints": 2},
}


@pytest.fixture(scope="session")
def v2_samples() -> dict[str, V2Sample]:
    """Small valid v2 streams (PV 32/64, HVM, libxc v2/v3, libxl, xl) Xen's verifier accepts."""
    return {name: _v2_sample(**spec) for name, spec in V2_SAMPLE_SPECS.items()}  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def v2_samples_xen_misreads() -> dict[str, V2Sample]:
    """Valid v2 streams that Debian's verify-stream-v2 wrongly rejects."""
    return {
        name: _v2_sample(**spec)  # type: ignore[arg-type]
        for name, spec in V2_SAMPLE_SPECS_XEN_MISREADS.items()
    }


# The stand-in libxenguest (tests/restore_helpers.py) reads these; the restore helper's
# scrubbed environment passes only what XLPY_HELPER_ENV names beyond libxc's own.
os.environ.setdefault("XLPY_HELPER_ENV", "FAKE_REPORT FAKE_CHECKPOINT FAKE_NO_XEN")
