"""The stall bound: a sender that keeps the connection open and sends nothing more.

Every reader of a stream (``restore``, ``inspect``, ``convert``, ``verify``; ``xlpy.restore``'s
``timeout=``) fails after ``--timeout`` seconds without a byte with a typed timeout error
(kind ``timeout``, exit 1) at the offset of the element it was reading, saying after which
byte the sender stopped, and leaves no temporary output.  A Remus receiver keeps libxc's
rule: before the first complete checkpoint only the caller's bound ends a stall (a failed
restore); after it the heartbeat commits the last complete checkpoint.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import xlpy
from tests.helpers.cli import xlpy as xlpy_cmd
from tests.helpers.legacy_streams import build, page, remus_checkpoints
from xlpy.errors import StreamTimeout
from xlpy.stream.convert import legacy_to_v2
from xlpy.stream.legacy.records import XlHeader
from xlpy.stream.legacy.writer import encode
from xlpy.stream.source import ByteSource

#: The bound the tests give, and how long a run may take in all (start-up on a busy
#: machine included); without the bound each of them would hang.
BOUND = 0.5
WITHIN = 15.0

#: A plain PV stream with enough page data to stall inside a batch.
PLAIN = build("pv", [{p: page(0, p) for p in range(1, 40)}])
#: Where the sender stops: inside the page data of the one batch of 39 pages.
CUT = len(PLAIN) - 60_000


def _v2() -> bytes:
    out = io.BytesIO()
    legacy_to_v2(ByteSource(io.BytesIO(PLAIN)), out, fmt="libxc")
    return out.getvalue()


V2 = _v2()


@contextmanager
def stalled(data: bytes) -> Iterator[int]:
    """A pipe's read end: ``data`` is written, then the write end stays open, silent."""
    r, w = os.pipe()
    done = threading.Event()

    def send() -> None:
        try:
            os.write(w, data)  # blocks until the reader drained what the pipe cannot hold
            done.wait(60)
        finally:
            os.close(w)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    try:
        yield r
    finally:
        done.set()
        os.close(r)
        t.join(5)


def run_stalled(
    data: bytes, *args: str, cwd: Path
) -> tuple[subprocess.CompletedProcess[bytes], float]:
    """``xlpy ARGS`` with a stalled pipe as stdin: its result and how long it took."""
    with stalled(data) as r:
        t0 = time.monotonic()
        p = xlpy_cmd(*args, stdin=r, cwd=cwd)
        return p, time.monotonic() - t0


def assert_timed_out(p: subprocess.CompletedProcess[bytes], took: float, error: dict) -> None:
    assert p.returncode == 1, p.stderr
    assert BOUND <= took < WITHIN
    assert (error["kind"], error["type"]) == ("timeout", "StreamTimeout")
    assert 0 < error["offset"] <= CUT
    assert f"after byte {CUT}: the sender stalled" in error["message"]


@pytest.mark.parametrize(("release", "data"), [("xen-4.5", PLAIN), ("xen-4.17", V2)])
def test_restore_sim(release: str, data: bytes, tmp_path: Path) -> None:
    """sim: the bound reaches the receiver (it was accepted and ignored)."""
    args = ["restore", "-", "--release", release, "--out", "dom", "--json"]
    p, took = run_stalled(data[:CUT], *args, "--timeout", str(BOUND), cwd=tmp_path)
    doc = json.loads(p.stdout)
    assert_timed_out(p, took, doc["error"])
    assert (doc["ok"], doc["domain_destroyed"]) == (False, True)
    assert list(tmp_path.iterdir()) == []  # no domain directory, no temporary one


def test_restore_text_names_the_offset(tmp_path: Path) -> None:
    p, _ = run_stalled(
        PLAIN[:CUT], "restore", "-", "--release", "xen-4.5", "--out", "dom", "--timeout",
        str(BOUND), cwd=tmp_path,
    )  # fmt: skip
    assert p.returncode == 1
    last = p.stderr.decode().splitlines()[-1]
    assert last.startswith(f"xlpy restore: failed (no byte within {BOUND:g} s after byte {CUT}")
    assert "[offset " in last and "field batch.pages" in last


def test_inspect(tmp_path: Path) -> None:
    p, took = run_stalled(
        PLAIN[:CUT], "inspect", "-", "--json", "--timeout", str(BOUND), cwd=tmp_path
    )
    doc = json.loads(p.stdout)
    assert_timed_out(p, took, doc["error"])
    assert doc["complete"] is False


def test_convert(tmp_path: Path) -> None:
    """The output path is written under a temporary name: nothing is left."""
    p, took = run_stalled(
        PLAIN[:CUT], "convert", "-o", "out.v2", "--progress-fd", "2", "--timeout", str(BOUND),
        cwd=tmp_path,
    )  # fmt: skip
    lines = [json.loads(line) for line in p.stderr.decode().splitlines() if line.startswith("{")]
    assert lines[-1]["phase"] == "error"
    assert_timed_out(p, took, lines[-1]["error"])
    assert list(tmp_path.iterdir()) == []


def test_verify(tmp_path: Path) -> None:
    p, took = run_stalled(V2[:CUT], "verify", "-", "--json", "--timeout", str(BOUND), cwd=tmp_path)
    doc = json.loads(p.stdout)
    assert doc["valid"] is False
    assert_timed_out(p, took, doc["error"])


def test_remus_stall_in_checkpoint_0_fails_with_the_bound(tmp_path: Path) -> None:
    """libxc has no heartbeat before the first complete checkpoint: the caller's bound
    ends the stall, and nothing was committed."""
    data = build("pv", remus_checkpoints(3))
    first = build("pv", remus_checkpoints(1))
    cut = len(first) // 2
    p, took = run_stalled(
        data[:cut], "restore", "-", "--operation", "remus-receive", "--release", "xen-4.5",
        "--out", "dom", "--heartbeat", "0.2", "--timeout", str(BOUND), "--json", cwd=tmp_path,
    )  # fmt: skip
    doc = json.loads(p.stdout)
    assert p.returncode == 1 and BOUND <= took < WITHIN
    assert (doc["error"]["kind"], doc["committed_checkpoint"]) == ("timeout", None)
    assert f"after byte {cut}:" in doc["error"]["message"]
    assert list(tmp_path.iterdir()) == []


def test_remus_stall_after_checkpoint_0_commits_it_at_the_heartbeat(tmp_path: Path) -> None:
    """After the first complete checkpoint the heartbeat governs, not the (longer) bound."""
    data = build("pv", remus_checkpoints(3))
    first = build("pv", remus_checkpoints(1))
    p, took = run_stalled(
        data[: len(first) + 100], "restore", "-", "--operation", "remus-receive", "--release",
        "xen-4.5", "--out", "dom", "--heartbeat", "0.2", "--timeout", "30", "--json",
        cwd=tmp_path,
    )  # fmt: skip
    doc = json.loads(p.stdout)
    assert p.returncode == 0, p.stderr
    assert (doc["ok"], doc["committed_checkpoint"]) == (True, 0)
    assert took < WITHIN  # well before the 30 s bound
    assert (tmp_path / "dom").is_dir()


@pytest.mark.parametrize(
    ("release", "data", "framing"),
    [
        ("xen-4.5", PLAIN, b""),
        # framed: xlpy's forwarder reads the input (after xl's header) and times out
        ("xen-4.3.1", PLAIN, encode([XlHeader()])),
        ("xen-4.17", V2, b""),
    ],
)
def test_api_timeout_on_the_sim(release: str, data: bytes, framing: bytes, tmp_path: Path) -> None:
    """``xlpy.restore(timeout=)``: a failed result with the stall error at the input's
    offset (framed: the input's, not the pipe's to libxc)."""
    stream = framing + data
    cut = len(framing) + CUT
    with stalled(stream[:cut]) as r:
        t0 = time.monotonic()
        result = xlpy.restore(
            r, operation="restore", release=release, out=tmp_path / "dom", timeout=BOUND
        )
        took = time.monotonic() - t0
    assert BOUND <= took < WITHIN
    assert not result.ok and isinstance(result.error, StreamTimeout)
    assert result.framed == (release == "xen-4.3.1")
    assert result.error.offset is not None and len(framing) < result.error.offset <= cut
    assert f"after byte {cut}:" in result.error.message
    assert list(tmp_path.iterdir()) == []


def test_timeout_must_be_positive(tmp_path: Path) -> None:
    for cmd in (["inspect", "-"], ["verify", "-"], ["convert"]):
        p, _ = run_stalled(b"", *cmd, "--timeout", "0", cwd=tmp_path)
        assert p.returncode == 2
        assert b"not a positive number of seconds" in p.stderr
