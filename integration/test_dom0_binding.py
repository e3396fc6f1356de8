"""xlpy's cffi binding finds and opens the real libxenguest/libxenctrl in dom0 (issue 6 item 1)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dom0lib
import pytest

pytestmark = pytest.mark.dom0

#: Below DOMID_FIRST_RESERVED (0x7FF0), far above any domain these tests create.
NO_SUCH_DOMID = 0x7E00


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
    """No XenUnavailable in dom0: libxc itself answers a restore into a missing domain.

    ``xc_interface_open`` must succeed on /dev/xen/privcmd for ``xc_domain_restore``
    to run at all; it then fails on the domain ("Domain N does not exist" /
    "Failed to get domain info"), which must surface as a ``XenError``.
    """
    try:
        from xlpy.binding import RestoreArgs, restore_libxc
        from xlpy.errors import XenError
    except ImportError as e:
        pytest.skip(f"xlpy.binding has no restore_libxc yet (issue 4): {e}")
    read_end, write_end = os.pipe()
    os.close(write_end)  # an empty stream: libxc must not get past the domain check
    try:
        with pytest.raises(XenError) as failure:
            restore_libxc(RestoreArgs(io_fd=read_end, dom=NO_SUCH_DOMID), timeout=120)
    finally:
        os.close(read_end)
    message = str(failure.value)
    print(repr(failure.value))
    assert f"Domain {NO_SUCH_DOMID} does not exist" in message or "domain info" in message
