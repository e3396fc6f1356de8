"""The operation-driven libxc restore, against stand-in libraries (no hypervisor).

The stand-ins (from test_binding_generations) read ``io_fd`` to EOF and report what
they got, which is what a 4.0-4.3.1 libxc does after the last checkpoint: so the byte
count shows exactly what framing let through.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from test_binding_generations import _fake_source
from test_receiver_streams import PAGE, XENSERVER_QEMU, build

from xlpy.binding import RestoreRequest
from xlpy.binding.detect import ENV_GENERATION, ENV_LIBRARY
from xlpy.binding.generations import by_name
from xlpy.errors import RestoreRefused, UsageError
from xlpy.toolstack import StreamType, Verdict, restore_libxc_operation


@pytest.fixture(scope="module")
def libs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("NO C COMPILER: cannot build stand-in libraries")
    out = {}
    for gen, soname in (("4.2-4.3.1", "libxenguest.so.4.2"), ("4.14-4.21", "libxenguest.so.4.19")):
        d = tmp_path_factory.mktemp(gen)
        (d / "fake.c").write_text(_fake_source(by_name(gen)))
        cmd = [cc, "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", str(d / soname)]
        subprocess.run([*cmd, str(d / "fake.c")], check=True)
        out[gen] = d / soname
    return out


@pytest.fixture
def use(libs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.delenv(ENV_GENERATION, raising=False)
    monkeypatch.setenv("FAKE_REPORT", str(tmp_path / "report"))

    def pick(gen: str) -> None:
        monkeypatch.setenv(ENV_LIBRARY, str(libs[gen]))

    return pick


def _feed(data: bytes) -> int:
    r, w = os.pipe()

    def send() -> None:
        try:
            os.write(w, data)
        except BrokenPipeError:
            pass
        finally:
            os.close(w)

    threading.Thread(target=send, daemon=True).start()
    return r


def _report(tmp_path: Path) -> dict[str, int]:
    text = (tmp_path / "report").read_text()
    return {k: int(v) for k, v in re.findall(r"^(\w+)=(-?\d+)$", text, re.M)}


@pytest.mark.parametrize("out_of_process", [True, False], ids=["helper", "in-process"])
def test_plain_restore_on_4_2_is_framed(use, tmp_path: Path, out_of_process: bool) -> None:  # type: ignore[no-untyped-def]
    use("4.2-4.3.1")
    image = build("pv", [{2: bytes(PAGE)}], qemu=None)
    src = _feed(image + XENSERVER_QEMU)
    try:
        done = restore_libxc_operation(
            RestoreRequest(io_fd=src, dom=3), "restore", out_of_process=out_of_process
        )
        rest = done.forwarded.rest + os.read(src, 1 << 16) if done.forwarded else b""
    finally:
        os.close(src)
    assert done.decision.verdict is Verdict.FRAME
    assert _report(tmp_path)["bytes"] == len(image)  # libxc saw EOF right after the tail
    assert rest == XENSERVER_QEMU  # nothing eaten, handed back whole


def test_remus_on_4_2_refused_unless_forced(use, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    use("4.2-4.3.1")
    stream = build("pv", [{2: bytes(PAGE)}], qemu=None)
    with pytest.raises(RestoreRefused):
        restore_libxc_operation(RestoreRequest(io_fd=0, dom=3), "remus-receive")
    src = _feed(stream)
    try:
        done = restore_libxc_operation(
            RestoreRequest(io_fd=src, dom=3), "remus-receive", force=True, out_of_process=False
        )
    finally:
        os.close(src)
    assert done.decision.forced and done.forwarded is None
    assert _report(tmp_path)["bytes"] == len(stream)  # not framed: libxc reads on


def test_operation_sets_the_stream_type_on_4_19(use, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    use("4.14-4.21")
    src = _feed(b"v2 image")
    try:
        done = restore_libxc_operation(
            RestoreRequest(io_fd=src, dom=3),
            "remus-receive",
            callbacks={"checkpoint": lambda: 1},
        )
    finally:
        os.close(src)
    assert done.decision.stream_type is StreamType.REMUS and done.forwarded is None
    report = _report(tmp_path)
    assert report["stream_type"] == 1 and report["checkpoint"] == 1


def test_stream_type_only_from_the_operation(use) -> None:  # type: ignore[no-untyped-def]
    use("4.14-4.21")
    with pytest.raises(UsageError, match="comes from the operation"):
        restore_libxc_operation(RestoreRequest(io_fd=0, dom=3, stream_type=1), "restore")
