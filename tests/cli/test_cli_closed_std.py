"""A command started with stdin or stdout closed exits 2 with a message, no traceback.

So does one whose stdout is full (``/dev/full``); one whose stdout reader went away
(EPIPE) exits 141 without a word, as a shell reports a command killed by SIGPIPE.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.cli import xlpy
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


@pytest.fixture(scope="module")
def streams(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pv.img`` (legacy, restores on the xen-4.3 sim) and ``pv.v2`` (its conversion)."""
    where = tmp_path_factory.mktemp("streams")
    p = xlpy(*GEN.replace("hvm", "pv").split(), "-o", str(where / "pv.img"))
    assert p.returncode == 0, p.stderr
    p = xlpy("convert", "-i", str(where / "pv.img"), "-o", str(where / "pv.v2"))
    assert p.returncode == 0, p.stderr
    return where


#: Every command's report on stdout: (arguments, the restore's --out when it has one).
REPORTS = [
    "inspect pv.img",
    "inspect pv.img --json",
    "verify pv.v2",
    "verify pv.v2 --json",
    "restore pv.img --release xen-4.3 --out dom",
    "restore pv.img --release xen-4.3 --out dom --json",
    "restore pv.img --operation restore --release xen-4.5 --out dom",
    "repro --only sender=xen-4.0,mode=plain,guest=pv,trailer=eof,receiver=xen-4.3.1",
    "repro --json --only sender=xen-4.0,mode=plain,guest=pv,trailer=eof,receiver=xen-4.3.1",
    "libxc list",
    "libxc list --json",
]


def _sh(streams: Path, args: str, redirect: str) -> subprocess.CompletedProcess[str]:
    cmd = f"exec {shlex.quote(sys.executable)} -m xlpy {args} {redirect}"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        ["sh", "-c", cmd], capture_output=True, text=True, cwd=streams, env=env, check=False
    )


@pytest.mark.parametrize("args", REPORTS)
def test_report_to_a_closed_stdout(streams: Path, args: str) -> None:
    res = _sh(streams, args, ">&-")
    assert res.returncode == 2, res.stderr
    assert "cannot write standard output: it is closed" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    # Checked before restoring: no domain restored whose report is lost.
    assert not (streams / "dom").exists()


@pytest.mark.parametrize("args", REPORTS)
def test_report_to_a_full_stdout(streams: Path, args: str) -> None:
    res = _sh(streams, args, ">/dev/full")
    assert res.returncode == 2, res.stderr
    assert "cannot write standard output: No space left on device" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and "Exception ignored" not in res.stderr
    if (streams / "dom").exists():  # restored before the report could not be written
        subprocess.run(["rm", "-rf", str(streams / "dom")], check=True)


@pytest.mark.parametrize(
    "args", ["inspect pv.img", "verify pv.v2 --json", f"{GEN} -o -", "convert -i pv.img"]
)
def test_stdout_reader_gone_exits_141_quietly(streams: Path, args: str) -> None:
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the first write: EPIPE
    try:
        res = subprocess.run(
            [sys.executable, "-m", "xlpy", *args.split()],
            stdout=w, stderr=subprocess.PIPE, text=True, cwd=streams,
            env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60, check=False,
        )  # fmt: skip
    finally:
        os.close(w)
    assert (res.returncode, res.stderr) == (141, "")
