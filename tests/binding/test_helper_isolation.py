"""The out-of-process restore helper runs as root: nothing from the caller's directory or
environment may run in it (issue 12)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.libxc_stand_in import build_stand_in, read_report
from xlpy.binding import RestoreArgs, restore_libxc
from xlpy.binding.detect import ENV_GENERATION, ENV_LIBRARY, Abi, detect
from xlpy.binding.generations import PLAIN, by_name
from xlpy.binding.helper import helper_env


def _restore(abi: Abi) -> None:
    r, w = os.pipe()
    os.write(w, b"x" * 100)
    os.close(w)
    try:
        req = RestoreArgs(io_fd=r, stream_type=PLAIN, send_back_fd=-1, dom=1, store_evtchn=1,
                             store_domid=0, console_evtchn=2, console_domid=0, hvm=False,
                             pae=False, superpages=False)  # fmt: skip
        restore_libxc(req, {}, abi=abi, out_of_process=True, timeout=30)
    finally:
        os.close(r)


def test_helper_ignores_cwd_modules_and_python_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "lib").mkdir()
    lib = build_stand_in(by_name("4.14-4.21"), tmp_path / "lib")
    evil = tmp_path / "cwd"
    evil.mkdir()
    pwned = tmp_path / "pwned"
    (evil / "json.py").write_text(f"open({str(pwned)!r}, 'w').write('ran')\nraise SystemExit\n")
    (evil / "socket.py").write_text(f"open({str(pwned)!r}, 'w').write('ran')\n")
    monkeypatch.setenv(ENV_LIBRARY, str(lib))
    monkeypatch.setenv(ENV_GENERATION, "4.19")
    monkeypatch.setenv("FAKE_REPORT", str(tmp_path / "report"))
    monkeypatch.setenv("PYTHONSTARTUP", str(evil / "json.py"))
    monkeypatch.setenv("PYTHONPATH", str(evil))
    abi = detect()
    monkeypatch.chdir(evil)
    _restore(abi)
    assert not pwned.exists()
    assert read_report(tmp_path / "report")["bytes"] == 100


def test_helper_environment_is_scrubbed() -> None:
    env = {
        "PATH": "/usr/bin",
        "LD_LIBRARY_PATH": "/opt/xen/lib",
        "XENSTORED_PATH": "/run/xs",
        "LC_ALL": "C",
        "PYTHONPATH": "/tmp/evil",
        "AWS_SECRET_ACCESS_KEY": "k",
        "FAKE_REPORT": "/r",
        "XLPY_HELPER_ENV": "FAKE_REPORT",
    }
    kept = helper_env(env)
    assert set(kept) == {"PATH", "LD_LIBRARY_PATH", "XENSTORED_PATH", "LC_ALL", "FAKE_REPORT"}
