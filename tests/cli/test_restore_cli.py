"""``xlpy restore`` as a user runs it: files, pipes, ``fd:N``, JSON, progress, exit codes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.helpers.cli import xlpy
from tests.helpers.legacy_streams import PAGE, XENSERVER_QEMU, build, expected_memory

CPS = [{1: b"\x01" * PAGE, 4: b"\x04" * PAGE}]


def test_restore_file_json(tmp_path: Path) -> None:
    src = tmp_path / "s.img"
    src.write_bytes(build("pv", CPS, last=True))
    p = xlpy("restore", str(src), "--release", "xen-4.3.1", "--out", str(tmp_path / "d"), "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    expected = {
        "ok": True,
        "rc": 0,
        "committed_checkpoint": 0,
        "bytes_past_image": 0,
        "domain_destroyed": False,
        "messages": [],
        "out": str(tmp_path / "d"),
    }
    assert {k: doc[k] for k in expected} == expected
    assert doc["error"] is None
    assert (tmp_path / "d" / "memory").read_bytes() == expected_memory(CPS, 0)
    assert p.stderr == b""


def test_restore_from_stdin_pipe_reports_eat_and_exit_1(tmp_path: Path) -> None:
    data = build("hvm", CPS, qemu=None, trailer=XENSERVER_QEMU)
    p = xlpy(
        "restore",
        "-",
        "--release",
        "xen-4.3.1",
        "--toolstack",
        "xenserver-classic",
        "--out",
        str(tmp_path / "d"),
        stdin=data,
    )
    assert p.returncode == 1
    err = p.stderr.decode()
    assert "xc: error: Max batch size exceeded (1970103633). Giving up.: Internal error" in err
    assert "Traceback" not in err
    assert not (tmp_path / "d").exists()


def test_restore_fd_source_and_progress_fd(tmp_path: Path) -> None:
    data = build("pv", CPS, last=True)
    r_data, w_data = os.pipe()
    r_prog, w_prog = os.pipe()
    assert len(data) < 60000  # fits the pipe buffer: written before the reader starts
    os.write(w_data, data)
    os.close(w_data)
    try:
        p = xlpy(
            "restore",
            f"fd:{r_data}",
            "--release",
            "xen-4.5",
            "--out",
            str(tmp_path / "d"),
            "--progress-fd",
            str(w_prog),
            pass_fds=(r_data, w_prog),
        )
        os.close(w_prog)
        with os.fdopen(r_prog, "rb") as f:
            lines = f.read().decode().splitlines()
    finally:
        os.close(r_data)
    assert p.returncode == 0, p.stderr
    events = [json.loads(x) for x in lines]
    assert events and {"bytes", "pages", "checkpoint", "phase"} <= set(events[0])
    assert events[-1]["phase"] == "done" and events[-1]["pages"] == 2 + 1  # CPS + the L4
    assert events[-1]["bytes"] == len(data)
    assert b"restored" in p.stdout


def test_quiet_prints_nothing_on_failure_but_exit_code(tmp_path: Path) -> None:
    src = tmp_path / "s.img"
    src.write_bytes(build("pv", CPS, last=True)[:100])
    p = xlpy("restore", str(src), "--release", "xen-4.3.1", "--out", str(tmp_path / "d"), "-q")
    assert p.returncode == 1
    assert b"xc: error" not in p.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--release", "xen-9"],
        ["--release", "xen-4.3.1", "--checkpointed", "1"],
        ["--release", "xen-4.3.2", "--toolstack", "xend", "--checkpointed", "0"],
        ["--release", "xen-4.3.2", "--toolstack", "nope"],
        ["--release", "xen-4.3.1", "--json", "--progress-fd", "1"],
        ["--release", "xen-4.3.1", "--heartbeat", "0"],
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    src = tmp_path / "s.img"
    src.write_bytes(build("pv", CPS, last=True))
    p = xlpy("restore", str(src), "--out", str(tmp_path / "d"), *args)
    assert p.returncode == 2, p.stderr
    assert b"Traceback" not in p.stderr
    assert not (tmp_path / "d").exists()


def test_missing_source_is_usage_error(tmp_path: Path) -> None:
    p = xlpy("restore", str(tmp_path / "nope"), "--release", "xen-4.3.1", "--out", "x")
    assert p.returncode == 2


def test_broken_progress_pipe_fails_cleanly_and_leaves_no_directory(tmp_path: Path) -> None:
    src = tmp_path / "s.img"
    src.write_bytes(build("pv", CPS, last=True))
    r_prog, w_prog = os.pipe()
    os.close(r_prog)  # nobody reads progress: the first write gets EPIPE
    try:
        p = xlpy(
            "restore",
            str(src),
            "--release",
            "xen-4.3.1",
            "--out",
            str(tmp_path / "d"),
            "--progress-fd",
            str(w_prog),
            pass_fds=(w_prog,),
        )
    finally:
        os.close(w_prog)
    assert p.returncode == 1
    assert b"--progress-fd" in p.stderr and b"Traceback" not in p.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == ["s.img"]


def test_out_parent_missing_is_usage_error(tmp_path: Path) -> None:
    src = tmp_path / "s.img"
    src.write_bytes(build("pv", CPS, last=True))
    out = tmp_path / "nonexist" / "x" / "d"
    p = xlpy("restore", str(src), "--release", "xen-4.3.1", "--out", str(out))
    assert p.returncode == 2, p.stderr
    assert b"Traceback" not in p.stderr and b"nonexist" in p.stderr


def test_quiet_keeps_an_explicit_progress_fd(tmp_path: Path) -> None:
    src = tmp_path / "s.img"
    src.write_bytes(build("pv", CPS, last=True))
    r_prog, w_prog = os.pipe()
    p = xlpy(
        "restore",
        str(src),
        "--release",
        "xen-4.3.1",
        "--out",
        str(tmp_path / "d"),
        "-q",
        "--progress-fd",
        str(w_prog),
        pass_fds=(w_prog,),
    )
    os.close(w_prog)
    with os.fdopen(r_prog, "rb") as f:
        lines = f.read().decode().splitlines()
    assert p.returncode == 0, p.stderr
    assert p.stderr == b""
    assert json.loads(lines[-1])["phase"] == "done"
