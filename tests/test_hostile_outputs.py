"""Outputs in a shared directory (issue 12): root in /tmp next to other users.

``--out`` names that appear while a restore runs, dangling symbolic links, another
user's link as ``-o``, and ``fd:N`` outputs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.paths import REPO
from xlpy.errors import UsageError
from xlpy.receiver import restore
from xlpy.stream.source import ByteSource


def xlpy(*args: str, pass_fds: tuple[int, ...] = ()) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "xlpy", *args],
        capture_output=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        pass_fds=pass_fds,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "pv.img"
    p = xlpy("gen", "--guest", "pv", "--sender", "xen-4.3", "--memory", "4M", "-o", str(path))
    assert p.returncode == 0, p.stderr
    return path


@pytest.mark.parametrize("planted", ["empty-dir", "symlink"])
def test_out_name_created_during_restore_is_not_replaced(
    tmp_path: Path, image: Path, planted: str
) -> None:
    """The directory race: the name appears between the start and the final rename."""
    out = tmp_path / "dom"
    victim = tmp_path / "victim"
    victim.mkdir()

    def plant(_event: dict[str, Any]) -> None:
        if os.path.lexists(out):
            return
        if planted == "empty-dir":
            out.mkdir()
        else:
            out.symlink_to(victim)

    with open(image, "rb") as f, pytest.raises(UsageError, match="appeared during the restore"):
        restore(ByteSource(f.fileno()), generation="xen-4.3.2", out=out, progress=plant)
    if planted == "empty-dir":
        assert out.is_dir() and not any(out.iterdir())
    else:
        assert out.is_symlink() and not any(victim.iterdir())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".dom.")] == []


def test_dangling_symlink_out_refused_before_restoring(tmp_path: Path, image: Path) -> None:
    out = tmp_path / "dom"
    out.symlink_to(tmp_path / "nowhere")
    p = xlpy("restore", str(image), "--release", "xen-4.3.2", "--out", str(out))
    assert p.returncode == 2, p.stderr
    assert b"already exists" in p.stderr and b"Traceback" not in p.stderr
    assert out.is_symlink() and not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("command", ["gen", "convert"])
def test_output_onto_another_users_symlink(tmp_path: Path, image: Path, command: str) -> None:
    secret = tmp_path / "shadow"
    secret.write_bytes(b"root:secret\n")
    secret.chmod(0o600)
    link = tmp_path / "out.img"
    link.symlink_to(secret)
    if command == "gen":
        args = ["gen", "--guest", "pv", "--sender", "xen-4.3", "--memory", "4M", "-o", str(link)]
    else:
        args = ["convert", "-i", str(image), "-o", str(link)]
    p = xlpy(*args)
    assert p.returncode == 0, p.stderr
    assert secret.read_bytes() == b"root:secret\n"
    assert secret.stat().st_mode & 0o777 == 0o600
    assert not link.is_symlink() and link.stat().st_size > 4096


@pytest.mark.parametrize("command", ["gen", "convert", "rest-out"])
def test_fd_n_outputs(tmp_path: Path, image: Path, command: str) -> None:
    target = tmp_path / "target"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        if command == "gen":
            args = ["gen", "--guest", "pv", "--sender", "xen-4.3", "--memory", "4M"]
            args += ["-o", f"fd:{fd}"]
        elif command == "convert":
            args = ["convert", "-i", str(image), "-o", f"fd:{fd}"]
        else:
            args = ["restore", str(image), "--operation", "restore", "--release", "xen-4.3.1"]
            args += ["--out", str(tmp_path / "dom"), "--rest-out", f"fd:{fd}"]
        p = subprocess.run(
            [sys.executable, "-m", "xlpy", *args],
            capture_output=True,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            pass_fds=(fd,),
            cwd=tmp_path,
            timeout=120,
            check=False,
        )
    finally:
        os.close(fd)
    assert p.returncode == 0, p.stderr
    assert not (tmp_path / f"fd:{fd}").exists()
    if command != "rest-out":
        assert target.stat().st_size > 4096


@pytest.mark.parametrize("command", ["gen", "convert", "inspect", "verify", "restore"])
def test_fd_garbage_is_a_clean_usage_error(tmp_path: Path, command: str) -> None:
    args = {
        "gen": ["gen", "--guest", "pv", "--sender", "xen-4.3", "--memory", "4M", "-o", "fd:abc"],
        "convert": ["convert", "-i", "fd:abc"],
        "inspect": ["inspect", "fd:abc"],
        "verify": ["verify", "fd:abc"],
        "restore": ["restore", "fd:abc", "--release", "xen-4.3.1", "--out", str(tmp_path / "d")],
    }[command]
    p = xlpy(*args)
    assert p.returncode == 2
    assert b"not a descriptor: 'fd:abc'" in p.stderr, p.stderr
    assert b"invalid literal" not in p.stderr and b"Traceback" not in p.stderr
