"""One error object in every command's JSON (issue 9): ``inspect``, ``verify``,
``convert`` (its ``--progress-fd`` lines), ``restore`` and ``abi`` each describe a
failure as ``{kind, type, offset, record, field, message}``."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.helpers.paths import REPO
from xlpy.errors import StreamTruncated, error_json
from xlpy.guest import GuestSpec
from xlpy.stream.legacy.senders import SenderProfile, generate

ERROR_KEYS = {"kind", "type", "offset", "record", "field", "message"}
PV = GuestSpec(kind="pv", pages=64, seed=3)


def _xlpy(
    *args: str, env: dict[str, str] | None = None, **kw: Any
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xlpy", *args],
        capture_output=True, text=True, check=False,
        env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})), **kw,
    )  # fmt: skip


def _legacy() -> bytes:
    buf = io.BytesIO()
    generate(SenderProfile(sender="xen-4.3"), PV, buf)
    return buf.getvalue()


def test_inspect_restore_and_convert_give_the_same_object(tmp_path: Path) -> None:
    data = _legacy()
    src = tmp_path / "cut.legacy"
    src.write_bytes(data[: len(data) // 2])
    objects: dict[str, dict[str, Any]] = {}

    p = _xlpy("inspect", "--json", str(src))
    assert p.returncode == 1, p.stderr
    objects["inspect"] = json.loads(p.stdout)["error"]

    p = _xlpy("restore", str(src), "--release", "xen-4.5", "--out", str(tmp_path / "d"), "--json")
    assert p.returncode == 1, p.stderr
    objects["restore"] = json.loads(p.stdout)["error"]

    out = tmp_path / "out.v2"
    r_fd, w_fd = os.pipe()
    try:
        p = _xlpy(
            "convert", "-i", str(src), "-o", str(out), "--progress-fd", str(w_fd),
            pass_fds=(w_fd,),
        )  # fmt: skip
        os.close(w_fd)
        lines = os.read(r_fd, 1 << 20).decode().splitlines()
    finally:
        os.close(r_fd)
    assert p.returncode == 1 and not out.exists(), p.stderr
    last = json.loads(lines[-1])
    assert last["phase"] == "error", lines[-3:]
    objects["convert"] = last["error"]

    for name, err in objects.items():
        assert set(err) == ERROR_KEYS, (name, err)
        assert (err["kind"], err["type"]) == ("truncated", "StreamTruncated"), (name, err)
        assert err["message"] and "[offset" not in err["message"], (name, err)
        assert err["offset"] is not None and err["offset"] < len(data) // 2, (name, err)
    # One reader under all three: the same fault is named at the same place.
    assert len({(e["offset"], e["record"], e["field"]) for e in objects.values()}) == 1, objects


def test_verify_and_abi_give_it_too(tmp_path: Path) -> None:
    whole = tmp_path / "whole.legacy"
    whole.write_bytes(_legacy())
    v2 = tmp_path / "whole.v2"
    p = _xlpy("convert", "-i", str(whole), "-o", str(v2))
    assert p.returncode == 0, p.stderr
    cut = tmp_path / "cut.v2"
    cut.write_bytes(v2.read_bytes()[:-100])
    p = _xlpy("verify", "--json", str(cut))
    assert p.returncode == 1, p.stderr
    err = json.loads(p.stdout)["error"]
    assert set(err) == ERROR_KEYS and err["kind"] == "truncated", err

    missing = str(tmp_path / "libxenguest.so.4.17")
    p = _xlpy("abi", "--json", env={"XLPY_LIBXENGUEST": missing})
    assert p.returncode == 2, p.stderr
    err = json.loads(p.stdout)["error"]
    assert set(err) == ERROR_KEYS and err["message"], err


def test_a_stream_error_keeps_its_location_out_of_the_message() -> None:
    e = StreamTruncated("end of stream", offset=12, record=3, field="chunk.header")
    assert error_json(e) == {
        "kind": "truncated",
        "type": "StreamTruncated",
        "offset": 12,
        "record": 3,
        "field": "chunk.header",
        "message": "end of stream",
    }


def test_a_framed_restore_names_the_record_an_unframed_one_names(tmp_path: Path) -> None:
    # 4.3.1 takes no stream type: with an operation xlpy forwards the first checkpoint
    # itself (stream/forward.py), and a fault its reader meets is still the same record.
    from xlpy.stream.legacy.reader import LegacyReader
    from xlpy.stream.legacy.records import PageBatch
    from xlpy.stream.source import ByteSource

    buf = io.BytesIO()
    generate(SenderProfile(sender="xen-4.3", toolstack="xl"), GuestSpec(kind="hvm", pages=64), buf)
    data = bytearray(buf.getvalue())
    batches = [
        r for r in LegacyReader(ByteSource(io.BytesIO(data))).records() if isinstance(r, PageBatch)
    ]
    bad = batches[-1]
    data[bad.offset : bad.offset + 4] = (5000).to_bytes(4, "little", signed=True)
    src = tmp_path / "bad.xl"
    src.write_bytes(data)
    seen = set()
    for name, extra in {
        "inspect": ("inspect", "--json", str(src)),
        "raw": (
            "restore", str(src), "--release", "xen-4.3.1", "--out", str(tmp_path / "a"), "--json",
        ),
        "framed": (
            "restore", str(src), "--release", "xen-4.3.1", "--operation", "restore",
            "--out", str(tmp_path / "b"), "--json",
        ),
    }.items():  # fmt: skip
        p = _xlpy(*extra)
        assert p.returncode == 1, (name, p.stderr)
        err = json.loads(p.stdout)["error"]
        seen.add((err["offset"], err["record"], err["field"]))
    assert seen == {(bad.offset, bad.index, "chunk_header")}, seen
