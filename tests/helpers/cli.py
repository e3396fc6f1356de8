"""The ``xlpy`` command run as a user runs it: a child process, this checkout's package."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers.paths import REPO


def xlpy(
    *args: str,
    stdin: bytes | int | None = None,
    pass_fds: tuple[int, ...] = (),
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """``python -m xlpy ARGS`` with this checkout's package; never raises on exit status.

    ``stdin``: the bytes to send, or a descriptor to read from (a pipe kept open)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    fd = stdin if isinstance(stdin, int) else None
    return subprocess.run(
        [sys.executable, "-m", "xlpy", *args],
        input=None if fd is not None else stdin,
        stdin=fd,
        capture_output=True,
        cwd=cwd,
        env=env,
        pass_fds=pass_fds,
        timeout=60,
        check=False,
    )
