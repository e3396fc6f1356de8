"""pytest set-up for the dom0 integration suite.

Every test marked ``dom0`` needs a running Xen dom0 with root.  Without one it
is skipped with the reason, unless ``XLPY_REQUIRE_XEN_VM=1`` (set by the
harness's VM and by CI), which turns the skip into a failure so a broken VM
can never pass by skipping.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import dom0lib
import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "dom0: needs a real Xen dom0 (root, /dev/xen/privcmd, xl)")


@pytest.fixture(scope="session")
def _xen_reason() -> str | None:
    reason = dom0lib.xen_unavailable_reason()
    if reason is None and os.geteuid() != 0:
        reason = "dom0 tests need root"
    return reason


def _unusable(reason: str) -> None:
    if os.environ.get("XLPY_REQUIRE_XEN_VM") == "1":
        pytest.fail(f"XLPY_REQUIRE_XEN_VM=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _require_dom0(request: pytest.FixtureRequest, _xen_reason: str | None) -> None:
    if request.node.get_closest_marker("dom0") is not None and _xen_reason is not None:
        _unusable(_xen_reason)


@pytest.fixture(scope="module")
def dom0_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch directory in dom0 (save images, guest configs) for one test module."""
    return tmp_path_factory.mktemp("dom0")


@pytest.fixture(scope="module")
def pv_guest(dom0_workdir: Path, _xen_reason: str | None) -> Iterator[dom0lib.PVGuest]:
    """A tiny PV guest, created and ticking; destroyed after the module."""
    # Module fixtures run before the autouse check above: check here too.
    if _xen_reason is not None:
        _unusable(_xen_reason)
    guest = dom0lib.PVGuest(name="xlpy-tiny", workdir=dom0_workdir / "guest")
    guest.destroy()
    guest.create()
    try:
        if not guest.console_log_appears(timeout=60):
            _unusable(
                f"xenconsoled writes no {guest.console_log}: run it with --log=guest "
                "(Debian: XENCONSOLED_TRACE=guest in /etc/default/xencommons)"
            )
        guest.wait_tick_after(1, timeout=180)
        yield guest
    finally:
        guest.destroy()
