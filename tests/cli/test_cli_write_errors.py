"""A write that fails (a full disk, a full device) is a typed error naming the output and
the errno, exit 2, never a traceback, and no temporary left (issue 12).

The page data of ``convert`` and of a restore's memory file go input to output in the
kernel (``splice``, ``sendfile``, ``copy_file_range``): those writes fail too, on a
1 MiB tmpfs (mounted when the test may; skipped otherwise) and on ``/dev/full``.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.cli import xlpy
from xlpy.errors import OutputError, UsageError
from xlpy.outfile import check_room

GEN = ("gen", "--guest", "pv", "--sender", "xen-4.3", "--seed", "1")


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An 8 MiB PV guest's legacy stream: eight times what the small file system holds."""
    path = tmp_path_factory.mktemp("img") / "pv.img"
    p = xlpy(*GEN, "--memory", "8M", "-o", str(path))
    assert p.returncode == 0, p.stderr
    return path


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Path]:
    """A directory on a 1 MiB tmpfs."""
    where = tmp_path / "small"
    where.mkdir()
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)],
            capture_output=True,
            timeout=30,
            check=False,
        )
    except FileNotFoundError:
        pytest.skip("no mount command")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 1 MiB tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], timeout=30, check=False)


def _failed_cleanly(p: subprocess.CompletedProcess[bytes], name: str) -> None:
    err = p.stderr.decode()
    assert p.returncode == 2, err
    assert f"cannot write {name}: No space left on device (errno 28, ENOSPC)" in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("via", ["pipe", "file"])
def test_convert_onto_a_full_file_system(image: Path, small: Path, via: str) -> None:
    out = str(small / "o")
    if via == "pipe":
        p = xlpy("convert", "-o", out, stdin=image.read_bytes())
    else:
        p = xlpy("convert", "-i", str(image), "-o", out)
    _failed_cleanly(p, out)
    assert os.listdir(small) == []


@pytest.mark.parametrize("via", ["pipe", "file"])
@pytest.mark.parametrize("operation", [(), ("--operation", "restore")])
def test_restore_onto_a_full_file_system(
    image: Path, small: Path, via: str, operation: tuple[str, ...]
) -> None:
    out = small / "d"
    args = ("--release", "xen-4.3", "--out", str(out), *operation)
    if via == "pipe":
        p = xlpy("restore", "-", *args, stdin=image.read_bytes())
    else:
        p = xlpy("restore", str(image), *args)
    _failed_cleanly(p, f"{out}/memory")
    assert os.listdir(small) == []


@pytest.mark.parametrize("via", ["pipe", "file"])
def test_convert_onto_a_full_device(image: Path, via: str) -> None:
    if via == "pipe":
        p = xlpy("convert", "-o", "/dev/full", stdin=image.read_bytes())
    else:
        p = xlpy("convert", "-i", str(image), "-o", "/dev/full")
    _failed_cleanly(p, "/dev/full")


def test_gen_refuses_a_guest_the_disk_cannot_hold(tmp_path: Path) -> None:
    out = tmp_path / "huge.img"
    p = xlpy(*GEN, "--memory", "1T", "-o", str(out))
    err = p.stderr.decode()
    assert p.returncode == 2, err
    assert f"cannot write {out}: it needs at least" in err and "ENOSPC" in err, err
    assert "Traceback" not in err
    assert os.listdir(tmp_path) == []  # refused before anything was written


def test_check_room_looks_at_regular_files_only(tmp_path: Path) -> None:
    huge = 1 << 62
    for stream in ("-", "fd:1", "/dev/null"):
        check_room(stream, huge)
    check_room("7", huge, fd_numbers=True)
    check_room(str(tmp_path / "f"), 1)
    with pytest.raises(OutputError) as ei:
        check_room(str(tmp_path / "f"), huge)
    assert ei.value.errno == errno.ENOSPC and ei.value.filename == str(tmp_path / "f")
    assert isinstance(ei.value, UsageError) and isinstance(ei.value, OSError)
