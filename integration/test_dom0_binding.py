"""xlpy's cffi binding finds and opens the real libxenguest/libxenctrl in dom0 (issue 6 item 1)."""

from __future__ import annotations

import json
from pathlib import Path

import dom0lib
import pytest

pytestmark = pytest.mark.dom0


def test_xlpy_abi_detects_the_installed_libxenguest() -> None:
    missing = dom0lib.xlpy_command_missing("abi")
    if missing:
        pytest.skip(missing)
    proc = dom0lib.xlpy("abi", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    abi = json.loads(proc.stdout)
    print(abi)
    assert abi["soname"] == "libxenguest.so.4.17", abi
    assert abi["generation"] == "4.14-4.21", abi
    assert Path(abi["library"]).is_file(), abi


def test_binding_opens_a_real_xc_interface() -> None:
    """No XenUnavailable in dom0: ``xc_interface_open`` succeeds on /dev/xen/privcmd."""
    try:
        from xlpy.binding import open_interface  # type: ignore[attr-defined]
    except ImportError as e:
        pytest.skip(f"xlpy.binding has no public open_interface() yet (issue 4): {e}")
    with open_interface() as xch:
        assert xch is not None
