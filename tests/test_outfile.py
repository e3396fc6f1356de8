"""xlpy.outfile: atomic replacement of regular files, in-place writes to fds, devices, FIFOs."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from xlpy.errors import UsageError
from xlpy.outfile import open_output, rename_noreplace


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".tmp"))


def test_regular_file_written_and_renamed(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with open_output(str(target)) as f:
        f.write(b"abc")
        # Nothing is visible under the target name until the writer is done.
        assert not target.exists()
    assert target.read_bytes() == b"abc"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert _leftovers(tmp_path) == []


def test_failure_keeps_old_content_and_removes_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), open_output(str(target)) as f:
        f.write(b"new half")
        raise RuntimeError("stream error")
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_symlink_replaced_its_target_untouched(tmp_path: Path) -> None:
    # Another user's link in a shared /tmp must not redirect a root-run write onto the
    # file it names (issue 12: a root-owned 0600 file became the stream, mode 0644).
    real = tmp_path / "real.bin"
    real.write_bytes(b"old")
    real.chmod(0o600)
    link = tmp_path / "link.bin"
    link.symlink_to(real)
    with open_output(str(link)) as f:
        f.write(b"new")
    assert not link.is_symlink()
    assert link.read_bytes() == b"new"
    assert real.read_bytes() == b"old"
    assert real.stat().st_mode & 0o777 == 0o600


def test_dangling_symlink_replaced_not_followed(tmp_path: Path) -> None:
    link = tmp_path / "link.bin"
    link.symlink_to(tmp_path / "elsewhere.bin")
    with open_output(str(link)) as f:
        f.write(b"new")
    assert not (tmp_path / "elsewhere.bin").exists()
    assert link.read_bytes() == b"new"


def test_fd_colon_n_written_in_place(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with open_output(f"fd:{fd}") as f:
            f.write(b"through fd")
    finally:
        os.close(fd)
    assert path.read_bytes() == b"through fd"
    assert not (Path.cwd() / f"fd:{fd}").exists()


def test_fd_colon_garbage_is_usage_error() -> None:
    with pytest.raises(UsageError, match="not a descriptor: 'fd:abc'"), open_output("fd:abc"):
        pass


def test_rename_noreplace_refuses_existing_names(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for kind in ("dir", "link", "file"):
        dst = tmp_path / kind
        if kind == "dir":
            dst.mkdir()
        elif kind == "link":
            dst.symlink_to(tmp_path / "nowhere")
        else:
            dst.write_bytes(b"x")
        with pytest.raises(FileExistsError):
            rename_noreplace(src, dst)
        assert src.is_dir()
    rename_noreplace(src, tmp_path / "new")
    assert (tmp_path / "new").is_dir()


def test_character_device_written_in_place(tmp_path: Path) -> None:
    node = tmp_path / "null"
    try:
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers
    except PermissionError:
        pytest.skip("mknod needs CAP_MKNOD")
    with open_output(str(node)) as f:
        f.write(b"x" * 100_000)
    assert stat.S_ISCHR(node.stat().st_mode)
    assert _leftovers(tmp_path) == []


def test_device_write_error_is_usage_error(tmp_path: Path) -> None:
    node = tmp_path / "full"
    try:
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 7))  # /dev/full: ENOSPC
    except PermissionError:
        pytest.skip("mknod needs CAP_MKNOD")
    with pytest.raises(UsageError, match=r"cannot write .*full"), open_output(str(node)) as f:
        f.write(b"x" * (4 << 20))
    assert stat.S_ISCHR(node.stat().st_mode)


def test_fifo_written_in_place(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    with open_output(str(fifo)) as f:
        f.write(b"through the pipe")
    reader.join(10)
    assert got == [b"through the pipe"]
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def test_fd_number_written_in_place(tmp_path: Path) -> None:
    target = tmp_path / "fd.bin"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with open_output(str(fd), fd_numbers=True) as f:
            f.write(b"by fd")
        os.fstat(fd)  # still open: the caller owns it
    finally:
        os.close(fd)
    assert target.read_bytes() == b"by fd"
    # Without fd_numbers a number is a file name.
    with open_output(str(tmp_path / "7")) as f:
        f.write(b"seven")
    assert (tmp_path / "7").read_bytes() == b"seven"


def test_closed_fd_is_usage_error(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "x", os.O_WRONLY | os.O_CREAT, 0o644)
    os.close(fd)
    with pytest.raises(UsageError, match=f"fd {fd}"), open_output(str(fd), fd_numbers=True):
        pass


def test_missing_directory_is_usage_error(tmp_path: Path) -> None:
    with (
        pytest.raises(UsageError, match="cannot write"),
        open_output(str(tmp_path / "no" / "such")),
    ):
        pass
