"""The progress bar on a terminal and the checkpoint numbers of progress events (issue 12).

The bar is read off a pseudo-terminal's master side, as a person at a terminal sees it;
the numbers are compared with the result each command reports.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.cli import xlpy
from tests.helpers.paths import REPO
from xlpy.cli.progress import bar_line

GEN = ("gen", "--guest", "pv", "--sender", "xen-4.5", "--toolstack", "xl", "--seed", "1")


@pytest.fixture(scope="module")
def remus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Remus stream of three checkpoints, a few MiB."""
    out = tmp_path_factory.mktemp("progress") / "remus.img"
    args = (*GEN, "--mode", "remus", "--checkpoints", "3", "--memory", "8M", "-o", str(out))
    assert xlpy(*args).returncode == 0
    return out


def _on_terminal(args: list[str], stdin: int | Path, cwd: Path) -> tuple[int, str]:
    """``xlpy ARGS`` with stderr a terminal: its exit status and what the terminal shows."""
    master, slave = os.openpty()
    with open(stdin, "rb") if isinstance(stdin, Path) else open(os.dup(stdin), "rb") as f:
        p = subprocess.Popen(
            [sys.executable, "-m", "xlpy", *args],
            stdin=f,
            stdout=subprocess.DEVNULL,
            stderr=slave,
            cwd=cwd,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
    os.close(slave)
    shown = b""
    try:
        while chunk := os.read(master, 65536):
            shown += chunk
    except OSError:  # EIO: the command, the last holder of the slave side, is gone
        pass
    finally:
        os.close(master)
    return p.wait(timeout=60), shown.decode()


def test_a_file_input_shows_a_bar_with_percentage_ending_its_line(
    remus: Path, tmp_path: Path
) -> None:
    rc, shown = _on_terminal(
        ["convert", "-i", str(remus), "-o", "out.v2"], Path(os.devnull), tmp_path
    )
    assert rc == 0, shown
    assert re.search(r"\[[#.]{20}\] +\d+%", shown), shown
    last = shown.split("\r\x1b[K")[-1]
    assert re.fullmatch(r"\[#{20}\] 100%.* done .*MiB / [0-9.]+ MiB\r\n", last), shown


def test_a_pipe_input_shows_bytes_but_no_percentage(remus: Path, tmp_path: Path) -> None:
    r, w = os.pipe()
    feeder = subprocess.Popen(["cat", str(remus)], stdout=w)
    os.close(w)
    try:
        rc, shown = _on_terminal(["convert", "-o", "out.v2"], r, tmp_path)
    finally:
        os.close(r)
        feeder.wait()
    assert rc == 0, shown
    assert "%" not in shown and "ETA" not in shown and "/ " not in shown
    assert re.search(r"done  \d+ pages  [0-9.]+ MiB\r\n$", shown), shown


def test_bar_line_known_and_unknown_size() -> None:
    event = {"phase": "buffering", "checkpoint": 3, "pages": 4909, "bytes": 430 << 20}
    assert bar_line(event, 1 << 30, 2.0) == (
        "[########............]  42%  215.0 MiB/s  ETA 0:03  checkpoint 3  buffering"
        "  4909 pages  430.0 MiB / 1.0 GiB"
    )
    assert bar_line(event, None, 2.0) == (
        "215.0 MiB/s  checkpoint 3  buffering  4909 pages  430.0 MiB"
    )
    # No rate (hence no ETA) in the first moments, when it is mostly start-up.
    assert bar_line(event, None, 0.1) == "checkpoint 3  buffering  4909 pages  430.0 MiB"


def _events(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess[bytes], list[dict]]:
    r, w = os.pipe()
    try:
        p = xlpy(*args, "--progress-fd", str(w), pass_fds=(w,), cwd=cwd)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            lines = f.read().decode().splitlines()
    except BaseException:
        os.close(w)
        raise
    return p, [json.loads(x) for x in lines]


def _completions(events: list[dict]) -> list[int]:
    return [e["checkpoint"] for e in events if e["phase"] == "checkpoint"]


@pytest.mark.parametrize("release", ["xen-4.5", "xen-4.17"])
def test_restore_progress_numbers_checkpoints_as_its_result(
    remus: Path, tmp_path: Path, release: str
) -> None:
    source = remus
    if release == "xen-4.17":  # the same checkpoints as a v2 stream, for the v2 receiver
        source = tmp_path / "remus.v2"
        assert xlpy("convert", "-i", str(remus), "-o", str(source), "-f", "libxl").returncode == 0
    args = ["restore", str(source), "--operation", "remus-receive", "--release", release]
    p, events = _events([*args, "--toolstack", "xl-4.4", "--out", "d", "--json"], tmp_path)
    result = json.loads(p.stdout)
    assert result["ok"], result
    assert result["committed_checkpoint"] == 2
    assert events[-1]["phase"] == "done"
    assert events[-1]["checkpoint"] == result["committed_checkpoint"]
    # Each checkpoint's completion names it, as the result numbers them: from 0.
    assert sorted(set(_completions(events))) == [0, 1, 2]


def test_convert_progress_numbers_checkpoints_as_its_report(remus: Path, tmp_path: Path) -> None:
    p, events = _events(["convert", "-i", str(remus), "-o", "out.v2", "-v"], tmp_path)
    assert p.returncode == 0, p.stderr
    assert b": 3 checkpoint(s)," in p.stderr
    # The conversion counts its checkpoints from 1: the first is read as checkpoint 1.
    assert events[0]["checkpoint"] == 1
    assert _completions(events) == [1, 2, 3]
    assert events[-1] == {**events[-1], "phase": "done", "checkpoint": 3}
