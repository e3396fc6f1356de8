"""`make run` (README's first command) must keep telling the story correctly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.paths import REPO


def test_demo_runs_every_step_and_checks_each_outcome(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "xlpy.demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "Max batch size exceeded (1970103633). Giving up." in out
    assert out.count("\n  as expected ") == 4 and "NOT as expected" not in out
    # readable, not JSON: facts as name: value lines, "Qemu" spelled out as the number
    assert '{"ok"' not in out and out.count("\nNotice: ") == 5
    assert "= bytes 51 65 6d 75 = 'Qemu' (little-endian int32)" in out
    assert "QEMU record signature:           b'QemuDeviceModelRecord\\n'" in out
    assert "QEMU record length:              4096 bytes" in out
    assert (tmp_path / "out/demo/dom-remus/memory").exists()
    assert not (tmp_path / "out/demo/dom-4.3.1").exists()  # the EAT cell leaves no domain
