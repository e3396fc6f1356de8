"""``xlpy verify`` takes Xen's ``verify-stream-v2`` command line: ``-i FD|FILE`` (stdin by
default), ``-f libxc|libxl|xl``, ``-v``, ``-q``, ``--syslog``; ``FILE`` still works."""

from __future__ import annotations

import os
import syslog
from pathlib import Path

import pytest

from tests.helpers.cli import xlpy
from tests.helpers.v2_streams import V2Sample
from xlpy.cli import main


@pytest.fixture
def xl_file(tmp_path: Path, v2_samples: dict[str, V2Sample]) -> Path:
    path = tmp_path / "guest.save"
    path.write_bytes(v2_samples["pv-xl"].data)
    return path


def test_stdin_by_default(v2_samples: dict[str, V2Sample]) -> None:
    res = xlpy("verify", stdin=v2_samples["hvm-libxl"].data)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(b"valid v2 stream")


def test_in_takes_a_path_or_a_descriptor_number(xl_file: Path) -> None:
    assert xlpy("verify", "-i", str(xl_file)).returncode == 0
    fd = os.open(xl_file, os.O_RDONLY)
    try:
        res = xlpy("verify", "--in", str(fd), pass_fds=(fd,))
    finally:
        os.close(fd)
    assert res.returncode == 0, res.stderr
    assert b"framing xl" in res.stdout


def test_in_and_file_together_is_a_usage_error(xl_file: Path) -> None:
    res = xlpy("verify", str(xl_file), "-i", str(xl_file))
    assert res.returncode == 2
    assert b"usage: xlpy verify" in res.stderr and b"not allowed with" in res.stderr


def test_format_xl_wants_an_xl_header(xl_file: Path, v2_samples: dict[str, V2Sample]) -> None:
    ok = xlpy("verify", "-f", "xl", "-i", str(xl_file))
    assert ok.returncode == 0, ok.stderr
    assert b"framing xl, format libxl" in ok.stdout
    bare = xlpy("verify", "-f", "xl", stdin=v2_samples["pv64-libxc-v3"].data)
    assert bare.returncode == 1 and b"INVALID" in bare.stderr
    # -f libxc, as Xen's: an xl header is then not the image marker
    assert xlpy("verify", "-f", "libxc", "-i", str(xl_file)).returncode == 1


def test_quiet_prints_nothing(xl_file: Path) -> None:
    good = xlpy("verify", "-q", "-i", str(xl_file))
    assert (good.returncode, good.stdout, good.stderr) == (0, b"", b"")
    bad = xlpy("verify", "-q", "-f", "libxc", "-i", str(xl_file))
    assert (bad.returncode, bad.stdout, bad.stderr) == (1, b"", b"")
    # -q wins over -v, as in verify-stream-v2; --json and -q contradict each other
    assert xlpy("verify", "-q", "-v", "-i", str(xl_file)).stdout == b""
    assert xlpy("verify", "-q", "--json", "-i", str(xl_file)).returncode == 2


def test_verbose_lists_headers_and_records(xl_file: Path) -> None:
    res = xlpy("verify", "-v", str(xl_file))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.decode().splitlines()
    assert lines[0].split() == ["0", "xl", "save", "header"]
    assert any(line.endswith("libxc record Page data, length 32840") for line in lines)
    summary = next(i for i, line in enumerate(lines) if line.startswith("valid v2 stream"))
    assert summary > 2 and all(" header" in s or " record " in s for s in lines[:summary])


class _Syslog:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.lines: list[tuple[int, str]] = []
        self.ident: list[str] = []
        monkeypatch.setattr(syslog, "openlog", lambda ident, *a: self.ident.append(ident))
        monkeypatch.setattr(syslog, "syslog", lambda prio, msg: self.lines.append((prio, msg)))


def test_syslog_instead_of_stdout_errors_to_both(
    xl_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    log = _Syslog(monkeypatch)
    assert main(["verify", "--syslog", "-i", str(xl_file)]) == 0
    assert capsys.readouterr() == ("", "")
    assert log.ident == ["xlpy-verify"]
    assert log.lines[0][0] == syslog.LOG_INFO and log.lines[0][1].startswith("valid v2 stream")
    log.lines.clear()
    assert main(["verify", "--syslog", "-f", "libxc", "-i", str(xl_file)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "bad image marker" in err
    assert any(p == syslog.LOG_ERR and "bad image marker" in m for p, m in log.lines)


def test_json_takes_no_text_options(xl_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--json", "-v", str(xl_file)]) == 2
    assert "-v and --syslog are for text" in capsys.readouterr().err
