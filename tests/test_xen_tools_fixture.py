"""The ``xen_tools`` fixture skips loudly without Debian's tools, and fails instead
when ``XLPY_REQUIRE_XEN_TOOLS=1`` (so CI cannot pass by skipping)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers.paths import REPO


def _run_without_apt(tmp_path: Path, require: bool) -> subprocess.CompletedProcess[str]:
    # A PATH with bash but no apt-get: tools/fetch-xen.sh exits 3.
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    for tool in ("bash", "dirname"):
        found = shutil.which(tool)
        assert found is not None
        (bindir / tool).unlink(missing_ok=True)
        (bindir / tool).symlink_to(found)
    env = {
        **os.environ,
        "PATH": str(bindir),
        "XLPY_XEN_CACHE": str(tmp_path / "no-cache"),
        "XLPY_REQUIRE_XEN_TOOLS": "1" if require else "0",
    }
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         "tests/stream/legacy/test_xen_tools_legacy.py", "-k", "pinned"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip


def test_skips_with_reason_without_tools(tmp_path: Path) -> None:
    res = _run_without_apt(tmp_path, require=False)
    assert res.returncode == 0, res.stdout
    assert "1 skipped" in res.stdout
    assert "DEBIAN XEN 4.17 TOOLS UNAVAILABLE" in res.stdout and "apt-get not found" in res.stdout


def test_fails_when_required(tmp_path: Path) -> None:
    res = _run_without_apt(tmp_path, require=True)
    assert res.returncode != 0
    assert "1 error" in res.stdout and "XLPY_REQUIRE_XEN_TOOLS=1" in res.stdout
