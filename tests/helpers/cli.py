"""The ``xlpy`` command run as a user runs it: a child process, this checkout's package."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers.paths import REPO


def xlpy(
    *args: str, stdin: bytes | None = None, pass_fds: tuple[int, ...] = ()
) -> subprocess.CompletedProcess[bytes]:
    """``python -m xlpy ARGS`` with this checkout's package; never raises on exit status."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "xlpy", *args],
        input=stdin,
        capture_output=True,
        env=env,
        pass_fds=pass_fds,
        timeout=60,
        check=False,
    )
