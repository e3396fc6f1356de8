"""A binary stream is never read from, or written to, a terminal (issue 12).

A command left without its FILE at a prompt prints its usage and exits 2 instead of
waiting in silence on the keyboard (Xen's ``convert-legacy-stream`` prints its usage);
``gen -o -`` to a terminal refuses instead of filling the screen with binary.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers.paths import REPO

GEN = ["gen", "--guest", "pv", "--sender", "xen-4.5", "--memory", "1M", "-o", "-"]


def _with_terminal(args: list[str]) -> subprocess.CompletedProcess[bytes]:
    """``xlpy ARGS`` with stdin and stdout a terminal, stderr captured."""
    master, slave = os.openpty()
    try:
        return subprocess.run(
            [sys.executable, "-m", "xlpy", *args],
            stdin=slave,
            stdout=slave,
            stderr=subprocess.PIPE,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            timeout=30,
            check=False,
        )
    finally:
        os.close(slave)
        os.close(master)


@pytest.mark.parametrize(
    "args",
    [
        ["convert"],
        ["convert", "-i", "-", "-o", "out"],
        ["verify"],
        ["inspect", "-"],
        ["restore", "-", "--release", "xen-4.5", "--out", "d"],
    ],
)
def test_a_stream_from_a_terminal_gives_usage(args: list[str]) -> None:
    p = _with_terminal(args)
    err = p.stderr.decode()
    assert p.returncode == 2, err
    assert err.startswith(f"usage: xlpy {args[0]} "), err
    assert err.endswith(
        f"xlpy {args[0]}: error: reading a stream from a terminal: give FILE or pipe one in\n"
    ), err


def test_gen_refuses_to_write_binary_to_a_terminal() -> None:
    p = _with_terminal(GEN)
    err = p.stderr.decode()
    assert p.returncode == 2, err
    assert err.endswith(
        "xlpy gen: error: refusing to write a binary stream to a terminal: use -o FILE or a pipe\n"
    ), err


def test_gen_to_a_pipe_still_writes() -> None:
    p = subprocess.run(
        [sys.executable, "-m", "xlpy", *GEN],
        capture_output=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=30,
        check=False,
    )
    assert p.returncode == 0 and len(p.stdout) > 1 << 20, p.stderr
