"""SIGTERM and SIGHUP stop a run as Ctrl-C does: temporary outputs removed, exit 128+N,
one "interrupted" line on stderr, on a line of its own after a progress bar (issue 12).

Each run reads a stream from a pipe that is fed part of it and kept open, so the signal
lands while the command is in the middle of its work.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.cli import xlpy
from tests.helpers.libxc_stand_in import build_stand_in
from tests.helpers.paths import REPO
from xlpy.binding.detect import ENV_GENERATION, ENV_LIBRARY
from xlpy.binding.generations import by_name

GEN = ("gen", "--guest", "hvm", "--sender", "xen-4.3")
STOPS = [signal.SIGTERM, signal.SIGHUP]


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    out = tmp_path_factory.mktemp("signals") / "s.bin"
    assert xlpy(*GEN, "--memory", "16M", "-o", str(out)).returncode == 0
    return out.read_bytes()


def _start(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, **popen: Any
) -> subprocess.Popen[bytes]:
    """``xlpy ARGS`` in ``cwd`` with a pipe on stdin (stderr a pipe unless ``popen`` says)."""
    full = {k: v for k, v in os.environ.items() if k not in (ENV_LIBRARY, ENV_GENERATION)}
    full.update(env or {}, PYTHONPATH=str(REPO))
    popen = {"stdin": subprocess.PIPE, "stderr": subprocess.PIPE, **popen}
    return subprocess.Popen([sys.executable, "-m", "xlpy", *args], cwd=cwd, env=full, **popen)


def _feed(p: subprocess.Popen[bytes], data: bytes) -> None:
    """Write ``data`` to the command's stdin from a thread and keep the pipe open."""
    assert p.stdin is not None
    stdin = p.stdin

    def send() -> None:
        try:
            stdin.write(data)
            stdin.flush()
        except BrokenPipeError:
            pass

    threading.Thread(target=send, daemon=True).start()


def _wait_for(found: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + 30
    while not found():
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.005)


def _stopped(p: subprocess.Popen[bytes], sig: int) -> str:
    """Send ``sig``; the stderr of a command that exited 128+sig, without a traceback."""
    p.send_signal(sig)
    # Not communicate(): it closes stdin, and an input's end would stop the run too.
    p.wait(timeout=30)
    assert p.stderr is not None
    text = p.stderr.read().decode()
    assert p.returncode == 128 + sig, text
    assert "Traceback" not in text
    return text


@pytest.mark.parametrize("sig", STOPS, ids=lambda s: s.name)
def test_restore_stopped_mid_stream_leaves_no_domain_directory(
    stream: bytes, tmp_path: Path, sig: signal.Signals
) -> None:
    p = _start(["restore", "-", "--release", "xen-4.3.1", "--out", "dom", "-q"], tmp_path)
    _feed(p, stream[: len(stream) // 2])
    _wait_for(lambda: list(tmp_path.glob(".dom.*/memory")), "the domain's memory file")
    err = _stopped(p, sig)
    assert err == f"xlpy restore: interrupted by {sig.name}\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sig", STOPS, ids=lambda s: s.name)
def test_convert_stopped_mid_stream_leaves_no_temporary_output(
    stream: bytes, tmp_path: Path, sig: signal.Signals
) -> None:
    p = _start(["convert", "-o", "out.v2"], tmp_path)
    _feed(p, stream[: len(stream) // 2])
    _wait_for(lambda: [f for f in tmp_path.glob(".out.v2.*.tmp") if f.stat().st_size], "output")
    err = _stopped(p, sig)
    assert err.endswith(f"xlpy convert: interrupted by {sig.name}\n")
    assert len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sig", STOPS, ids=lambda s: s.name)
def test_gen_stopped_mid_write_leaves_no_temporary_output(
    tmp_path: Path, sig: signal.Signals
) -> None:
    # gen reads nothing a test could hold back: it is stopped (SIGSTOP) while its
    # temporary file exists, and meets the signal when it continues.
    p = _start([*GEN, "--memory", "256M", "-o", "s.bin"], tmp_path)
    _wait_for(lambda: list(tmp_path.glob(".s.bin.*.tmp")), "the temporary output")
    p.send_signal(signal.SIGSTOP)
    if (tmp_path / "s.bin").exists():
        p.send_signal(signal.SIGCONT)
        p.communicate(timeout=30)
        pytest.skip("gen finished before it could be stopped")
    p.send_signal(sig)
    p.send_signal(signal.SIGCONT)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 128 + sig, err
    assert err.decode() == f"xlpy gen: interrupted by {sig.name}\n"
    assert list(tmp_path.iterdir()) == []


def test_nohup_keeps_sighup_ignored(stream: bytes, tmp_path: Path) -> None:
    def nohup() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    p = _start(["convert", "-o", "out.v2"], tmp_path, preexec_fn=nohup)
    _feed(p, stream[: len(stream) // 2])
    _wait_for(lambda: list(tmp_path.glob(".out.v2.*.tmp")), "the temporary output")
    p.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert p.poll() is None, "SIGHUP stopped a command started with SIGHUP ignored"
    err = _stopped(p, signal.SIGTERM)
    assert "interrupted by SIGTERM" in err


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def test_libxc_helper_does_not_outlive_a_sigtermed_restore(tmp_path: Path) -> None:
    # The stand-in libxc reads its stream to EOF; this one stays open, so the helper
    # would wait on it for ever once its parent is gone.
    lib = build_stand_in(by_name("4.14-4.21"), tmp_path)
    env = {ENV_LIBRARY: str(lib), "FAKE_REPORT": str(tmp_path / "report")}
    args = ["restore", "-", "--operation", "migrate-receive", "--backend", "libxc", "--domid", "3"]
    p = _start(args, tmp_path, env=env)
    try:
        _feed(p, b"v2 image")
        _wait_for(lambda: _children(p.pid), "the restore helper")
        (helper,) = _children(p.pid)
        err = _stopped(p, signal.SIGTERM)
        assert err.endswith("xlpy restore: interrupted by SIGTERM\n"), err
        _wait_for(lambda: _gone(helper), "the helper's end")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        assert p.stdin is not None
        p.stdin.close()


def _read_until(master: int, done: Callable[[bytes], bool]) -> bytes:
    """What the command wrote to the terminal, until ``done`` says so or it closes."""
    out = b""
    deadline = time.monotonic() + 30
    while not done(out):
        assert time.monotonic() < deadline, out
        if select.select([master], [], [], 0.1)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the last holder of the terminal's other end is gone
                break
            if not chunk:
                break
            out += chunk
    return out


def test_ctrl_c_on_a_terminal_says_interrupted_after_the_bar(stream: bytes, tmp_path: Path) -> None:
    master, slave = pty.openpty()
    try:
        # The terminal becomes the command's controlling one, so ^C typed into it is
        # the line discipline's SIGINT to the command, as in a shell.
        p = _start(
            ["restore", "-", "--release", "xen-4.3.1", "--out", "dom"], tmp_path,
            stderr=slave, start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(2, termios.TIOCSCTTY, 0),
        )  # fmt: skip
        os.close(slave)
        slave = -1
        _feed(p, stream[: len(stream) // 2])
        shown = _read_until(master, lambda out: b"MiB" in out)
        os.write(master, b"\x03")
        shown += _read_until(master, lambda out: b"interrupted" in out and out.endswith(b"\n"))
        assert p.wait(timeout=30) == 130
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    text = shown.decode()
    assert re.search(r"pages +[0-9.]+ MiB", text), text
    # The bar's line ends (after the terminal's own ^C echo) before the message starts.
    assert re.search(r"MiB(\^C)?\r\nxlpy restore: interrupted by SIGINT\r\n$", text), text
    assert list(tmp_path.iterdir()) == []
