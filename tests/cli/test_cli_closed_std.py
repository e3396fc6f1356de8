"""A command started with stdin or stdout closed exits 2 with a message, no traceback."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.paths import REPO as ROOT

GEN = "gen --guest hvm --sender xen-4.3 --memory 1M --seed 1"


@pytest.mark.parametrize(
    ("args", "redirect", "needle"),
    [
        ("inspect -", "<&-", "standard input is closed"),
        ("convert -i - -o /dev/null", "<&-", "standard input is closed"),
        (f"{GEN} -o -", ">&-", "standard output: it is closed"),
        ("convert -i /dev/null -o -", ">&-", "standard output: it is closed"),
    ],
)
def test_closed_standard_stream(args: str, redirect: str, needle: str) -> None:
    cmd = f"exec {shlex.quote(sys.executable)} -m xlpy {args} {redirect}"
    res = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, cwd=ROOT, check=False)
    assert res.returncode == 2, res.stderr
    assert needle in res.stderr
    assert "Traceback" not in res.stderr


def test_negative_seed_is_a_usage_error(tmp_path: Path) -> None:
    out = tmp_path / "s.bin"
    res = subprocess.run(
        [sys.executable, "-m", "xlpy", *GEN.split()[:-1], "-1", "-o", str(out)],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert "seed must be a non-negative integer" in res.stderr
    assert "Traceback" not in res.stderr
    assert not out.exists()
