"""``xlpy restore --json``: one key set for every backend and outcome, ``error`` null on
success and the common error object on failure (issue 9)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.cli import xlpy
from tests.helpers.legacy_streams import XENSERVER_QEMU, build, page
from tests.helpers.v2_streams import v2_stream
from xlpy.backends import RestoreResult

ERROR_KEYS = {"kind", "type", "offset", "record", "field", "message"}
PLAIN = [{2: page(0, 2)}]


def _doc(tmp_path: Path, name: str, data: bytes, *args: str) -> tuple[int, dict[str, object]]:
    src = tmp_path / f"{name}.img"
    src.write_bytes(data)
    p = xlpy("restore", str(src), "--out", str(tmp_path / name), "--json", *args)
    return p.returncode, json.loads(p.stdout)


CASES = {
    # name: (stream, arguments, exit code)
    "legacy-ok": (lambda: build("pv", PLAIN), ("--release", "xen-4.5"), 0),
    "legacy-empty": (lambda: b"", ("--release", "xen-4.5"), 1),
    "v2-ok": (lambda: v2_stream("plain", "pv", "libxc"), ("--release", "xen-4.17"), 0),
    "framed-migrate": (
        lambda: build("hvm", PLAIN, qemu=None, trailer=XENSERVER_QEMU),
        ("--release", "xen-4.3.1", "--toolstack", "xenserver-classic"),
        0,
    ),
    "refused": (lambda: build("pv", PLAIN), ("--release", "xen-4.4"), 1),
}
OPERATION = {
    "legacy-ok": "restore",
    "legacy-empty": "restore",
    "v2-ok": "restore",
    "framed-migrate": "migrate-receive",
    "refused": "remus-receive",
}


@pytest.mark.parametrize("with_operation", [False, True], ids=["raw", "operation"])
def test_one_key_set_for_every_outcome(tmp_path: Path, with_operation: bool) -> None:
    keys = set(RestoreResult(ok=True, backend="sim", release="x", decision=None).to_json())
    for name, (stream, args, rc) in CASES.items():
        if name == "refused" and not with_operation:
            continue  # a raw receiver has no operation to refuse
        extra = ("--operation", OPERATION[name]) if with_operation else ()
        code, doc = _doc(tmp_path, f"{name}-{with_operation}", stream(), *args, *extra)
        assert code == (rc if with_operation or name != "framed-migrate" else 1), (name, doc)
        assert set(doc) == keys, name
        if doc["ok"]:
            assert doc["error"] is None, name
        else:
            assert isinstance(doc["error"], dict) and set(doc["error"]) == ERROR_KEYS, name
            assert doc["error"]["message"], name


def test_the_framed_migrate_succeeds_with_no_error(tmp_path: Path) -> None:
    stream, args, _ = CASES["framed-migrate"]
    code, doc = _doc(tmp_path, "m", stream(), *args, "--operation", "migrate-receive")
    assert code == 0 and doc["ok"] and doc["framed"] and doc["error"] is None
    assert doc["rest_bytes"] == len(XENSERVER_QEMU)


def test_an_empty_stream_says_why(tmp_path: Path) -> None:
    code, doc = _doc(tmp_path, "e", b"", "--release", "xen-4.5")
    assert code == 1 and not doc["ok"]
    err = doc["error"]
    assert isinstance(err, dict) and err["kind"] == "truncated" and err["offset"] == 0


def test_the_eat_cell_names_the_toolstack_rejection(tmp_path: Path) -> None:
    stream, args, _ = CASES["framed-migrate"]
    code, doc = _doc(tmp_path, "eat", stream(), *args)  # raw: 4.3.1 eats "Qemu"
    assert code == 1 and doc["bytes_past_image"] == 4
    err = doc["error"]
    assert isinstance(err, dict) and err["message"]
