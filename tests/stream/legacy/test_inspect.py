"""``xlpy inspect``: the summary, the JSON object, exit codes, damaged streams."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.paths import REPO as ROOT
from tests.streams import build as B
from xlpy import cli
from xlpy.guest import GuestSpec
from xlpy.stream.legacy.inspect import inspect_stream, render_text
from xlpy.stream.legacy.senders import SenderProfile, generate
from xlpy.stream.source import ByteSource


@pytest.fixture
def xlpy(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> object:
    """Run ``xlpy inspect ARGS`` in-process; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(cli, "COMMANDS", ["inspect"])  # only the command under test

    def run(*args: str) -> tuple[int, str, str]:
        try:
            rc = cli.main(["inspect", *args])
        except SystemExit as e:  # argparse
            rc = int(e.code or 0)
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def summary(data: bytes, **kw: object) -> dict[str, object]:
    s = inspect_stream(ByteSource(io.BytesIO(data)), **kw)  # type: ignore[arg-type]
    return s.to_json()


def test_json_of_a_plain_hvm_stream() -> None:
    data = B.xl_header() + B.hvm_image()
    j = summary(data)
    hdr = len(B.xl_header())
    assert {k: j[k] for k in ("format", "framing", "guest", "width", "p2m_size")} == {
        "format": "legacy",
        "framing": "xl",
        "guest": "hvm",
        "width": 8,
        "p2m_size": B.HVM_P2M,
    }
    assert j["complete"] is True and j["error"] is None
    assert j["checkpoints"] == [
        {
            "offset": hdr + 8,
            "batches": 1,
            "entries": 3,
            "pages": 3,
            "compressed": False,
            "chunks": {
                "tsc_info": 1,
                "vcpu_info": 1,
                "hvm_ident_pt": 1,
                "toolstack": 1,
                "last_checkpoint": 1,
            },
            "last_checkpoint": True,
            "qemu": {"signature": "DeviceModelRecord0002", "length": 12},
        }
    ]


def test_json_of_remus_format_b() -> None:
    body0 = B.batch([1, 2], 8) + B.vcpu_info(0, [1]) + B.i32(-13) + B.i32(0)
    body1 = (
        B.batch([1, 0xE0000003, 2], 8, data=False)
        + B.compressed_data(b"\0\0", 8)
        + B.vcpu_info(0, [1])
        + B.i32(0)
    )
    data = B.uw(16, 8) + body0 + B.hvm_tail() + B.qemu_remus()
    data += body1 + B.hvm_tail() + B.qemu_remus()
    cps = summary(data)["checkpoints"]
    assert isinstance(cps, list)
    assert [(c["compressed"], c["entries"], c["pages"]) for c in cps] == [
        (False, 2, 2),
        (True, 3, 2),
    ]
    assert cps[1]["chunks"] == {"compressed_data": 1, "vcpu_info": 1}
    assert cps[1]["qemu"] == {"signature": "RemusDeviceModelState", "length": 13}


def test_damaged_stream_reports_progress_and_where_it_stops() -> None:
    data = B.hvm_image()
    cut = len(data) - 40  # inside the HVM tail
    j = summary(data[:cut])
    assert j["complete"] is False
    err = j["error"]
    assert isinstance(err, dict) and err["kind"] == "truncated"
    tail_at = len(data) - len(B.hvm_tail()) - len(B.qemu_0002())
    assert err["offset"] == tail_at and f"ends at offset {cut}" in err["message"]
    cps = j["checkpoints"]
    assert isinstance(cps, list) and cps[0]["pages"] == 3 and cps[0]["last_checkpoint"]


def test_text_report() -> None:
    text = render_text(inspect_stream(ByteSource(io.BytesIO(B.pv_image(8, 4)))))
    assert "PV 32-bit guest" in text and "64-bit toolstack" in text
    assert "checkpoint 0 at offset" in text and "complete" in text


def test_cli_exit_codes(xlpy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    good = tmp_path / "good.bin"
    good.write_bytes(B.hvm_image(4))
    rc, out, _ = xlpy(str(good), "--json")
    assert rc == 0 and json.loads(out)["width"] == 4
    bad = tmp_path / "bad.bin"
    bad.write_bytes(B.hvm_image()[:-3])
    rc, out, err = xlpy(str(bad))
    assert rc == 1 and "ERROR (truncated)" in out and "Traceback" not in out + err
    rc, out, _ = xlpy(str(bad), "--json")
    assert rc == 1 and json.loads(out)["error"]["kind"] == "truncated"
    rc, _, err = xlpy(str(tmp_path / "missing.bin"))
    assert rc == 2 and "cannot open" in err
    rc, _, err = xlpy(str(good), "--width", "5")
    assert rc == 2 and "width" in err
    undecidable = tmp_path / "u.bin"
    undecidable.write_bytes(B.uw(16, 8) + B.uw(0x12345, 8) + B.i32(0))
    rc, _, err = xlpy(str(undecidable))
    assert rc == 2 and "--guest" in err
    rc, out, err = xlpy(str(undecidable), "--json")
    assert rc == 2 and "--guest" in err
    assert json.loads(out)["error"]["kind"] == "usage"
    assert "--guest" in json.loads(out)["error"]["message"]


@pytest.mark.parametrize("toolstack", ["bare", "xl"])
@pytest.mark.parametrize("kind", ["pv", "hvm"])
def test_given_guest_contradicting_the_stream_is_an_error(kind: str, toolstack: str) -> None:
    buf = io.BytesIO()
    generate(
        SenderProfile(sender="xen-4.3", toolstack=toolstack), GuestSpec(kind=kind, pages=64), buf
    )  # type: ignore[arg-type]
    data = buf.getvalue()
    assert inspect_stream(ByteSource(io.BytesIO(data)), guest=kind).complete
    other = "pv" if kind == "hvm" else "hvm"
    s = inspect_stream(ByteSource(io.BytesIO(data)), guest=other)
    assert not s.complete and s.error is not None
    assert (s.error.kind, s.error.field) == ("malformed", "header.guest")
    assert f"guest is {kind.upper()}" in str(s.error)


@pytest.mark.parametrize("flag,width", [("32", 4), ("4", 4), ("64", 8), ("8", 8)])
def test_cli_width_units(xlpy, tmp_path: Path, flag: str, width: int) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "s.bin"
    f.write_bytes(B.hvm_image(width))
    rc, out, _ = xlpy(str(f), "--json", "--width", flag, "--guest", "hvm")
    assert rc == 0 and json.loads(out)["width"] == width


def test_cli_from_a_pipe() -> None:
    data = B.pv_image(4, 4)
    p = subprocess.run(
        [sys.executable, "-m", "xlpy", "inspect", "-", "--json"],
        input=data,
        capture_output=True,
        cwd=ROOT,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    j = json.loads(p.stdout)
    assert (j["guest"], j["width"], j["complete"]) == ("pv", 4, True)
