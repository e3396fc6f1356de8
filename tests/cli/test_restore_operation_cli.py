"""``xlpy restore --operation/--backend``: what a toolstack using xlpy would do, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.cli import xlpy
from tests.helpers.legacy_streams import (
    XENSERVER_QEMU,
    build,
    expected_memory,
    page,
    remus_checkpoints,
)
from tests.helpers.libxc_stand_in import build_stand_in, read_report
from tests.helpers.paths import REPO
from xlpy.binding.detect import ENV_GENERATION, ENV_LIBRARY
from xlpy.binding.generations import by_name

PLAIN_CPS = [{2: page(0, 2)}]


def _stream(tmp_path: Path, data: bytes) -> str:
    src = tmp_path / "s.img"
    src.write_bytes(data)
    return str(src)


def test_remus_on_4_5_commits_the_last_complete_checkpoint(tmp_path: Path) -> None:
    cps = remus_checkpoints(3)
    data = build("hvm", cps) + build("hvm", cps)[:100]  # a cut 4th checkpoint: dropped
    out = tmp_path / "d"
    p = xlpy(
        "restore", _stream(tmp_path, data), "--operation", "remus-receive", "--release", "xen-4.5",
        "--out", str(out), "--heartbeat", "0.2", "--json",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["ok"] and doc["committed_checkpoint"] == 2  # R-OK
    assert (doc["operation"], doc["stream_type"], doc["verdict"]) == (
        "remus-receive",
        "REMUS",
        "allow",
    )
    assert json.loads((out / "domain.json").read_text())["checkpointed_stream"] == 1
    assert (out / "memory").read_bytes() == expected_memory(cps, 2)


def test_remus_on_4_4_refused_then_forced_dies(tmp_path: Path) -> None:
    src = _stream(tmp_path, build("pv", remus_checkpoints(3)))
    args = (
        "restore",
        src,
        "--operation",
        "remus-receive",
        "--release",
        "xen-4.4",
        "--heartbeat",
        "0.2",
    )
    p = xlpy(*args, "--out", str(tmp_path / "a"))
    assert p.returncode == 1 and b"destroys the backup" in p.stderr and b"--force" in p.stderr
    assert p.stderr.count(b"refused") == 1 and b"Traceback" not in p.stderr
    p = xlpy(*args, "--out", str(tmp_path / "b"), "--force")
    assert p.returncode == 1  # R-DIE44: the backup is gone
    assert b"warning: forced" in p.stderr and b"domain destroyed" in p.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_framed_restore_hands_the_qemu_record_back(tmp_path: Path) -> None:
    data = build("hvm", PLAIN_CPS, qemu=None, trailer=XENSERVER_QEMU)
    common = ("--release", "xen-4.3.1", "--toolstack", "xenserver-classic")
    raw = xlpy("restore", "-", *common, "--out", str(tmp_path / "raw"), stdin=data)
    assert raw.returncode == 1 and b"1970103633" in raw.stderr  # EAT without --operation
    rest = tmp_path / "rest"
    p = xlpy(
        "restore", "-", *common, "--operation", "restore", "--out", str(tmp_path / "d"),
        "--rest-out", str(rest), stdin=data,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert b"framed" in p.stdout
    assert rest.read_bytes() == XENSERVER_QEMU
    assert (tmp_path / "d" / "memory").read_bytes() == expected_memory(PLAIN_CPS, 0)


@pytest.mark.parametrize(
    ("operation", "checkpointed"),
    [("remus-receive", "0"), ("restore", "1"), ("migrate-receive", "1"), ("colo-receive", "0")],
)
def test_contradicting_checkpointed_is_a_usage_error(
    tmp_path: Path, operation: str, checkpointed: str
) -> None:
    p = xlpy(
        "restore", _stream(tmp_path, b""), "--operation", operation, "--checkpointed",
        checkpointed, "--release", "xen-4.5", "--out", str(tmp_path / "d"),
    )  # fmt: skip
    assert p.returncode == 2 and b"contradicts --operation" in p.stderr


def test_agreeing_checkpointed_is_accepted(tmp_path: Path) -> None:
    p = xlpy(
        "restore", _stream(tmp_path, build("pv", PLAIN_CPS)), "--operation", "migrate-receive",
        "--checkpointed", "0", "--release", "xen-4.5", "--out", str(tmp_path / "d"),
    )  # fmt: skip
    assert p.returncode == 0, p.stderr


def test_colo_refused_exit_1(tmp_path: Path) -> None:
    p = xlpy(
        "restore", _stream(tmp_path, b""), "--operation", "colo-receive", "--release", "xen-4.5",
        "--out", str(tmp_path / "d"), "--force",
    )  # fmt: skip
    assert p.returncode == 1 and b"COLO needs libxc 4.7" in p.stderr


def test_flag_combinations(tmp_path: Path) -> None:
    src = _stream(tmp_path, build("pv", PLAIN_CPS))
    for args, what in (
        (("--release", "xen-4.5", "--out", str(tmp_path / "d"), "--force"), b"needs --operation"),
        (("--out", str(tmp_path / "d")), b"--release and --out are required"),
        (("--operation", "restore", "--release", "xen-4.5"), b"out=DIR"),
        (("--operation", "bogus"), b"invalid choice"),
        (("--backend", "libxc", "--out", str(tmp_path / "d")), b"domid=N"),
    ):
        p = xlpy("restore", src, *args)
        assert p.returncode == 2 and what in p.stderr, (args, p.stderr)


def test_libxc_without_library_names_the_package(tmp_path: Path) -> None:
    env = {ENV_LIBRARY: str(tmp_path / "libxenguest.so.4.17")}
    p = _xlpy_env(env, "restore", _stream(tmp_path, b""), "--backend", "libxc", "--domid", "3")
    assert p.returncode == 2
    assert b"libxenmisc4.17" in p.stderr and b"Traceback" not in p.stderr


@pytest.mark.xen_tools
@pytest.mark.parametrize("operation", [(), ("--operation", "migrate-receive")])
def test_libxc_backend_without_hypervisor_exits_2(
    xen_tools: object, tmp_path: Path, operation: tuple[str, ...]
) -> None:
    """No hypervisor is the machine's setup, as a missing libxenguest is: exit 2, not the
    1 of a failed restore (issue 12)."""
    libdirs = os.pathsep.join(str(p) for p in xen_tools.lib_dirs)  # type: ignore[attr-defined]
    p = _xlpy_env(
        {"LD_LIBRARY_PATH": libdirs},
        "restore", _stream(tmp_path, build("pv", PLAIN_CPS)), "--backend", "libxc",
        "--domid", "3", *operation,
    )  # fmt: skip
    assert p.returncode == 2, p.stderr
    err = p.stderr.decode()
    assert "xc_interface_open failed" in err and "/dev/xen/privcmd" in err
    assert "Traceback" not in err


@pytest.mark.xen_tools
def test_json_without_hypervisor_exits_2(xen_tools: object, tmp_path: Path) -> None:
    libdirs = os.pathsep.join(str(p) for p in xen_tools.lib_dirs)  # type: ignore[attr-defined]
    p = _xlpy_env(
        {"LD_LIBRARY_PATH": libdirs},
        "restore", _stream(tmp_path, build("pv", PLAIN_CPS)), "--backend", "libxc",
        "--domid", "3", "--json",
    )  # fmt: skip
    assert p.returncode == 2, p.stderr
    doc = json.loads(p.stdout)
    assert doc["ok"] is False and doc["error"]["kind"] == "unavailable"
    assert "/dev/xen/privcmd" in doc["error"]["message"]


def _xlpy_env(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    full = {k: v for k, v in os.environ.items() if k not in (ENV_LIBRARY, ENV_GENERATION)}
    full.update(env, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "xlpy", *args],
        capture_output=True,
        env=full,
        timeout=60,
        check=False,
    )


def test_unwritable_rest_out_is_a_usage_error_before_restoring(tmp_path: Path) -> None:
    src = _stream(tmp_path, build("hvm", PLAIN_CPS, qemu=None, trailer=XENSERVER_QEMU))
    p = xlpy(
        "restore", src, "--operation", "migrate-receive", "--release", "xen-4.3.1", "--toolstack",
        "xenserver-classic", "--out", str(tmp_path / "k1"),
        "--rest-out", str(tmp_path / "nonexistent" / "dir" / "rest.bin"),
    )  # fmt: skip
    assert p.returncode == 2, p.stderr
    assert b"cannot write" in p.stderr and b"rest.bin" in p.stderr
    assert b"Traceback" not in p.stderr
    assert not (tmp_path / "k1").exists()  # nothing restored


def test_failed_framed_restore_writes_no_rest_out(tmp_path: Path) -> None:
    data = build("hvm", [{n: page(0, n) for n in range(64)}], qemu=None, trailer=XENSERVER_QEMU)
    rest = tmp_path / "rest.bin"
    p = xlpy(
        "restore", _stream(tmp_path, data[: len(data) // 2]), "--operation", "migrate-receive",
        "--release", "xen-4.3.1", "--toolstack", "xenserver-classic",
        "--out", str(tmp_path / "d"), "--rest-out", str(rest),
    )  # fmt: skip
    assert p.returncode == 1
    # The input's error, at the input's offset (not the forwarding pipe's).
    assert f"the stream ends at offset {len(data) // 2}".encode() in p.stderr
    assert not rest.exists() and os.listdir(tmp_path) == ["s.img"]


def test_rest_out_of_a_restore_that_is_not_framed_warns(tmp_path: Path) -> None:
    rest = tmp_path / "rest.bin"
    p = xlpy(
        "restore", _stream(tmp_path, build("pv", PLAIN_CPS, trailer=b"after")), "--operation",
        "migrate-receive", "--release", "xen-4.5", "--out", str(tmp_path / "d"),
        "--rest-out", str(rest),
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert b"warning: --rest-out" in p.stderr and b"not framed" in p.stderr
    assert not rest.exists()


def test_json_on_refusal_and_forcing(tmp_path: Path) -> None:
    src = _stream(tmp_path, build("pv", remus_checkpoints(2)))
    args = (
        "restore",
        src,
        "--operation",
        "remus-receive",
        "--release",
        "xen-4.4",
        "--heartbeat",
        "0.2",
    )
    p = xlpy(*args, "--out", str(tmp_path / "a"), "--json")
    assert p.returncode == 1
    doc = json.loads(p.stdout)
    assert (doc["ok"], doc["verdict"], doc["forced"], doc["error"]["type"]) == (
        False,
        "refuse",
        False,
        "OperationRefused",
    )
    assert doc["release"] == "xen-4.4" and "destroys the backup" in doc["reason"]
    p = xlpy(*args, "--out", str(tmp_path / "b"), "--json", "--force")
    doc = json.loads(p.stdout)
    assert p.returncode == 1 and (doc["verdict"], doc["forced"]) == ("refuse", True)


def test_json_without_libxenguest(tmp_path: Path) -> None:
    env = {ENV_LIBRARY: str(tmp_path / "libxenguest.so.4.17")}
    p = _xlpy_env(
        env, "restore", _stream(tmp_path, b""), "--operation", "migrate-receive",
        "--backend", "libxc",
        "--domid", "3", "--json",
    )  # fmt: skip
    assert p.returncode == 2
    doc = json.loads(p.stdout)
    assert doc["ok"] is False and doc["error"]["type"] == "LibraryNotFound"
    assert "libxenmisc4.17" in doc["error"]["message"] and doc["stream_type"] == "PLAIN"


@pytest.fixture(scope="module")
def lib419(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_stand_in(by_name("4.14-4.21"), tmp_path_factory.mktemp("cli-4.19"))


def test_libxc_remus_secondary_answers_checkpoints(lib419: Path, tmp_path: Path) -> None:
    env = {ENV_LIBRARY: str(lib419), "FAKE_REPORT": str(tmp_path / "report")}
    common = ("restore", _stream(tmp_path, b"v2 image"), "--backend", "libxc", "--domid", "3")
    p = _xlpy_env(env, *common, "--operation", "remus-receive")
    assert p.returncode == 0, p.stderr
    report = read_report(tmp_path / "report")
    assert report["stream_type"] == 1 and report["checkpoint"] == 1  # XGR_CHECKPOINT_SUCCESS
    p = _xlpy_env(env, *common, "--operation", "colo-receive")
    assert p.returncode == 2 and b"cannot act as a COLO secondary" in p.stderr


def test_libxc_timeout_kills_a_hung_restore(lib419: Path, tmp_path: Path) -> None:
    # The stand-in reads its stream to EOF; this one never ends: libxc hangs.
    env = {ENV_LIBRARY: str(lib419), "FAKE_REPORT": str(tmp_path / "report")}
    r_fd, w_fd = os.pipe()
    try:
        full = {k: v for k, v in os.environ.items() if k not in (ENV_LIBRARY, ENV_GENERATION)}
        full.update(env, PYTHONPATH=str(REPO))
        p = subprocess.run(
            [sys.executable, "-m", "xlpy", "restore", "-", "--operation", "migrate-receive",
             "--backend", "libxc", "--domid", "3", "--timeout", "0.5"],
            stdin=r_fd, capture_output=True, env=full, timeout=60, check=False,
        )  # fmt: skip
    finally:
        os.close(w_fd)
        os.close(r_fd)
    assert p.returncode == 1 and b"hung" in p.stderr and b"Traceback" not in p.stderr
    assert xlpy("restore", "-", "--timeout", "0").returncode == 2
