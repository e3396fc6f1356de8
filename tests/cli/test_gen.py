"""``xlpy gen``: output, atomic rename, stdout, sizes and refused combinations."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.helpers.paths import REPO as ROOT
from xlpy.cli import gen as gen_cli
from xlpy.cli import main
from xlpy.cli.common import parse_size
from xlpy.guest import GuestSpec
from xlpy.stream.legacy.senders import SenderProfile, generate


def test_file_output_matches_generate(tmp_path: Path) -> None:
    out = tmp_path / "s.bin"
    rc = main(
        [
            "gen", "--guest", "pv", "--guest-width", "32", "--width", "32",
            "--sender", "xen-4.5", "--toolstack", "xl", "--mode", "remus",
            "--checkpoints", "2", "--compress", "--dirty", "0.3", "--trailer", "foreign",
            "--memory", "2M", "--vcpus", "3", "--seed", "9", "-o", str(out),
        ]
    )  # fmt: skip
    assert rc == 0
    want = io.BytesIO()
    generate(
        SenderProfile(
            sender="xen-4.5", toolstack="xl", mode="remus", checkpoints=2, compress=True,
            trailer="foreign", width=4,
        ),
        GuestSpec(kind="pv", pages=512, seed=9, guest_width=4, vcpus=3, dirty=0.3),
        want,
    )  # fmt: skip
    assert out.read_bytes() == want.getvalue()
    assert os.listdir(tmp_path) == ["s.bin"]
    assert out.stat().st_mode & 0o044  # not mkstemp's private 0600


def test_stdout_output() -> None:
    cmd = [sys.executable, "-m", "xlpy", "gen", "--guest", "hvm", "--sender", "xen-4.3",
           "--memory", "256K", "--seed", "1", "-o", "-"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, cwd=ROOT, check=False)
    assert res.returncode == 0, res.stderr
    want = io.BytesIO()
    generate(SenderProfile(), GuestSpec(kind="hvm", pages=64, seed=1), want)
    assert res.stdout == want.getvalue()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--sender", "xen-4.3", "--compress"], "Remus"),
        (["--sender", "xen-4.0", "--mode", "remus", "--compress"], "compression"),
        (["--sender", "xen-4.0", "--toolstack", "xl"], "xl framing"),
        (["--sender", "xen-4.3", "--checkpoints", "3"], "remus"),
        (["--sender", "xen-4.3", "--memory", "5000"], "multiple of 4 KiB"),
        (["--sender", "xen-4.3", "--dirty", "2"], "dirty"),
        (["--sender", "xen-4.3", "--toolstack", "xend", "--trailer", "foreign"], "EOF"),
    ],
)
def test_refused_combinations_exit_2_without_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], needle: str
) -> None:
    out = tmp_path / "s.bin"
    args = ["gen", "--guest", "hvm", "--memory", "1M", "--seed", "1", "-o", str(out), *extra]
    assert main(args) == 2
    assert needle in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_bad_flag_values_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        main(["gen", "--guest", "pv", "--sender", "xen-4.3", "--memory", "lots", "--seed", "1",
              "-o", "-"])  # fmt: skip
    assert ei.value.code == 2
    assert "bad size" in capsys.readouterr().err


def test_unwritable_output_is_a_clean_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "missing-dir" / "s.bin"
    rc = main(["gen", "--guest", "pv", "--sender", "xen-4.3", "--memory", "1M", "--seed", "1",
               "-o", str(target)])  # fmt: skip
    assert rc == 2
    assert "cannot write" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_write_error_midway_removes_the_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def half_then_write_error(profile: object, spec: object, out: io.BufferedWriter) -> int:
        out.write(b"x" * 100)
        os.close(out.fileno())  # the next write to the output fails (EBADF)
        return out.write(b"y" * (2 << 20))

    monkeypatch.setattr(gen_cli, "generate", half_then_write_error)
    target = tmp_path / "s.bin"
    rc = main(["gen", "--guest", "pv", "--sender", "xen-4.3", "--memory", "1M", "--seed", "1",
               "-o", str(target)])  # fmt: skip
    assert rc == 2
    assert os.listdir(tmp_path) == []


def _gen_into(path: Path) -> int:
    return main(["gen", "--guest", "hvm", "--sender", "xen-4.3", "--memory", "1M", "--seed", "1",
                 "-o", str(path)])  # fmt: skip


def test_device_output_is_written_not_replaced(tmp_path: Path) -> None:
    node = tmp_path / "null"
    try:
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers
    except PermissionError:
        pytest.skip("mknod needs CAP_MKNOD")
    assert _gen_into(node) == 0
    assert stat.S_ISCHR(node.stat().st_mode)
    assert os.listdir(tmp_path) == ["null"]


def test_fifo_output_is_written_not_replaced(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    assert _gen_into(fifo) == 0
    reader.join(30)
    want = io.BytesIO()
    generate(SenderProfile(), GuestSpec(kind="hvm", pages=256, seed=1), want)
    assert got == [want.getvalue()]
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def test_parse_size() -> None:
    assert parse_size("64M") == 64 << 20
    assert parse_size("1G") == 1 << 30
    assert parse_size("512k") == 512 << 10
    assert parse_size("2MiB") == 2 << 20
    assert parse_size("4096") == 4096
    with pytest.raises(ValueError):
        parse_size("1.5G")
