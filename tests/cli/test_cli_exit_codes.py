"""Exit codes mean what the README says: 1 a stream error or a failed restore, 2 a usage
or setup problem, whichever command meets it (issue 12)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.cli import xlpy

#: p2m_size, then bytes that are neither PV ext-info nor an HVM chunk header.
UNDETECTABLE = b"hello world this is text\n"


@pytest.mark.parametrize(
    "args",
    [
        ("inspect",),
        ("inspect", "--json"),
        ("restore", "--release", "xen-4.3", "--out", "{out}"),
        ("restore", "--operation", "restore", "--release", "xen-4.3.1", "--out", "{out}"),
        ("restore", "--operation", "migrate-receive", "--release", "xen-4.5", "--out", "{out}"),
    ],
)
def test_a_guest_type_the_stream_cannot_tell_is_a_usage_error(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    """The fix is a flag (``--guest``): 2 in inspect and restore alike (restore said 1)."""
    src = tmp_path / "s.img"
    src.write_bytes(UNDETECTABLE)
    out = tmp_path / "dom"
    command, *rest = (a.format(out=out) for a in args)
    p = xlpy(command, str(src), *rest)
    err = p.stderr.decode()
    assert p.returncode == 2, err
    assert f"xlpy {command}: error: cannot tell whether the image" in err, err
    assert "pass the guest type (--guest pv|hvm)" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("command", ["inspect", "restore"])
def test_the_same_bytes_read_as_a_given_guest_are_a_stream_error(
    tmp_path: Path, command: str
) -> None:
    src = tmp_path / "s.img"
    src.write_bytes(UNDETECTABLE)
    extra = ("--release", "xen-4.3", "--out", str(tmp_path / "dom")) if command == "restore" else ()
    p = xlpy(command, str(src), "--guest", "pv", *extra)
    assert p.returncode == 1, p.stderr
    assert b"p2m_frame_list.entries" in p.stderr + p.stdout
