"""The operation-driven libxc restore, against stand-in libraries (no hypervisor).

The stand-ins (tests.helpers.libxc_stand_in) read ``io_fd`` to EOF and report what
they got, which is what a 4.0-4.3.1 libxc does after the last checkpoint: so the byte
count shows exactly what framing let through.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

import xlpy
from tests.helpers.legacy_streams import PAGE, XENSERVER_QEMU, build
from tests.helpers.libxc_stand_in import build_stand_in, feed, read_report
from xlpy.api import run
from xlpy.backends import RestoreRequest
from xlpy.backends.libxc import LibxcOptions
from xlpy.binding.detect import ENV_GENERATION, ENV_LIBRARY
from xlpy.binding.generations import by_name
from xlpy.errors import RestoreRefused, UsageError
from xlpy.operation import Operation, StreamType, Verdict

GENS = ("4.2-4.3.1", "4.14-4.21")


@pytest.fixture(scope="module")
def libs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {g: build_stand_in(by_name(g), tmp_path_factory.mktemp(g)) for g in GENS}


@pytest.fixture
def use(libs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.delenv(ENV_GENERATION, raising=False)
    monkeypatch.setenv("FAKE_REPORT", str(tmp_path / "report"))

    def pick(gen: str) -> None:
        monkeypatch.setenv(ENV_LIBRARY, str(libs[gen]))

    return pick


@pytest.mark.parametrize("out_of_process", [True, False], ids=["helper", "in-process"])
def test_plain_restore_on_4_2_is_framed(use, tmp_path: Path, out_of_process: bool) -> None:  # type: ignore[no-untyped-def]
    use("4.2-4.3.1")
    image = build("pv", [{2: bytes(PAGE)}], qemu=None)
    src = feed(image + XENSERVER_QEMU)
    try:
        done = xlpy.restore(
            src, operation="restore", backend="libxc", domid=3, out_of_process=out_of_process
        )
        rest = done.rest + os.read(src, 1 << 16) if done.framed else b""
    finally:
        os.close(src)
    assert done.decision is not None and done.decision.verdict is Verdict.FRAME
    assert read_report(tmp_path / "report")["bytes"] == len(
        image
    )  # libxc saw EOF right after the tail
    assert rest == XENSERVER_QEMU  # nothing eaten, handed back whole


def test_remus_on_4_2_refused_unless_forced(use, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    use("4.2-4.3.1")
    stream = build("pv", [{2: bytes(PAGE)}], qemu=None)
    with pytest.raises(RestoreRefused):
        xlpy.restore(0, operation="remus-receive", backend="libxc", domid=3)
    src = feed(stream)
    try:
        done = xlpy.restore(
            src,
            operation="remus-receive",
            backend="libxc",
            domid=3,
            force=True,
            out_of_process=False,
        )
    finally:
        os.close(src)
    assert done.decision is not None and done.decision.forced and not done.framed
    assert read_report(tmp_path / "report")["bytes"] == len(stream)  # not framed: libxc reads on


def test_operation_sets_the_stream_type_on_4_19(use, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    use("4.14-4.21")
    src = feed(b"v2 image")
    try:
        done = xlpy.restore(
            src,
            operation="remus-receive",
            backend="libxc",
            domid=3,
            callbacks={"checkpoint": lambda: 1},
        )
    finally:
        os.close(src)
    assert done.stream_type is StreamType.REMUS and not done.framed
    report = read_report(tmp_path / "report")
    assert report["stream_type"] == 1 and report["checkpoint"] == 1


def test_stream_type_only_from_the_operation(use) -> None:  # type: ignore[no-untyped-def]
    use("4.14-4.21")
    with pytest.raises(UsageError, match="comes from the operation"):
        run(
            RestoreRequest(
                fd=0,
                operation=Operation.RESTORE,
                backend="libxc",
                checkpointed=1,
                options=LibxcOptions(domid=3),
            )
        )


def test_a_framed_restore_refused_by_the_binding_stops_the_forwarder(use) -> None:  # type: ignore[no-untyped-def]
    use("4.2-4.3.1")
    r_fd, w_fd = os.pipe()  # a silent source: the forwarder waits on it
    try:
        with pytest.raises(UsageError, match="does not fit"):
            xlpy.restore(r_fd, operation="restore", backend="libxc", domid=1 << 32)
        assert [t for t in threading.enumerate() if t.name == "xlpy-forwarder"] == []
    finally:
        os.close(w_fd)
        os.close(r_fd)
