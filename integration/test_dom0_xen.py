"""Xen 4.17 is running and Debian's own Python bindings work in dom0."""

from __future__ import annotations

import json
import os
import sys

import dom0lib
import pytest

pytestmark = pytest.mark.dom0

_BINDINGS_PROBE = """
import json
import xen.lowlevel.xc as xc
import xen.lowlevel.xs as xs
x = xc.xc()
h = xs.xs()
info = x.xeninfo()
print(json.dumps({
    "xc": xc.__file__,
    "major": info["xen_major"], "minor": info["xen_minor"],
    "domids": [d["domid"] for d in x.domain_getinfo()],
    "dom0_name": h.read("", "/local/domain/0/name").decode(),
}))
"""


def test_xen_4_17_is_running() -> None:
    info = dom0lib.xl_info()
    assert (info["xen_major"], info["xen_minor"]) == ("4", "17"), info
    assert "pv" in info["virt_caps"].split(), info["virt_caps"]
    domains = dom0lib.xl("list").stdout
    assert "Domain-0" in domains


def test_xen_lowlevel_xc_xs_import_with_dom0_python() -> None:
    """xend's bindings, which the Python-toolstack restore path builds on (issue 6 item 2)."""
    pydir = dom0lib.xen_python_dir()
    env = dict(os.environ, PYTHONPATH=str(pydir))
    out = dom0lib.run([sys.executable, "-c", _BINDINGS_PROBE], env=env, timeout=120).stdout
    probe = json.loads(out.splitlines()[-1])
    print(f"xen python dir {pydir}: {probe}")
    assert probe["xc"].startswith(str(pydir))
    assert (probe["major"], probe["minor"]) == (4, 17)
    assert 0 in probe["domids"]
    assert probe["dom0_name"] == "Domain-0"
