"""Shared fixtures.

``xen_tools`` gives the tests Debian bookworm's real Xen 4.17 user-space
tools (``convert-legacy-stream``, ``verify-stream-v2``, the ``xen.migration``
modules and the libxen* libraries), unpacked without root by
``tools/fetch-xen.sh``.  The cache folder is ``$XLPY_XEN_CACHE`` (default
``<repo>/.cache/xen-4.17``); when it is missing the fixture runs the fetch
script once per session.  When the tools cannot be had the tests that use the
fixture SKIP with the reason, unless ``XLPY_REQUIRE_XEN_TOOLS=1`` (CI), in
which case they FAIL: CI can never pass by skipping.  Mark such tests
``@pytest.mark.xen_tools``.
"""

from __future__ import annotations

import os

import pytest

from tests.helpers.v2_streams import (
    V2_SAMPLE_SPECS,
    V2_SAMPLE_SPECS_XEN_MISREADS,
    V2Sample,
    v2_sample,
)
from tests.helpers.xen_tools import XenTools, locate


@pytest.fixture(scope="session")
def xen_tools() -> XenTools:
    """Debian's Xen 4.17 tools; skips (or fails with XLPY_REQUIRE_XEN_TOOLS=1) without them."""
    found = locate()
    if isinstance(found, XenTools):
        return found
    reason = f"DEBIAN XEN 4.17 TOOLS UNAVAILABLE: {found}"
    if os.environ.get("XLPY_REQUIRE_XEN_TOOLS") == "1":
        pytest.fail(reason + " (XLPY_REQUIRE_XEN_TOOLS=1)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def v2_samples() -> dict[str, V2Sample]:
    """Small valid v2 streams (PV 32/64, HVM, libxc v2/v3, libxl, xl) Xen's verifier accepts."""
    return {name: v2_sample(**spec) for name, spec in V2_SAMPLE_SPECS.items()}  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def v2_samples_xen_misreads() -> dict[str, V2Sample]:
    """Valid v2 streams that Debian's verify-stream-v2 wrongly rejects."""
    return {
        name: v2_sample(**spec)  # type: ignore[arg-type]
        for name, spec in V2_SAMPLE_SPECS_XEN_MISREADS.items()
    }


# The stand-in libxenguest (tests/helpers/libxc_stand_in.py) reads these; the restore helper's
# scrubbed environment passes only what XLPY_HELPER_ENV names beyond libxc's own.
os.environ.setdefault("XLPY_HELPER_ENV", "FAKE_REPORT FAKE_CHECKPOINT FAKE_NO_XEN")
