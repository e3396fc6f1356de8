"""A tiny PV guest survives ``xl save`` / ``xl restore``; xlpy reads the real image.

The guest is saved once per module; the image is then checked by Xen's own
``verify-stream-v2`` and by xlpy, and restored with ``xl restore``.
"""

from __future__ import annotations

import glob
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import dom0lib
import pytest

pytestmark = pytest.mark.dom0

XL_SAVE_MAGIC = b"Xen saved domain, xl format\n \0 \r"


@dataclass
class SavedGuest:
    guest: dom0lib.PVGuest
    image: Path
    last_tick: int


@pytest.fixture(scope="module")
def saved_guest(pv_guest: dom0lib.PVGuest, dom0_workdir: Path) -> SavedGuest:
    """The guest, ticking, saved with ``xl save`` (which also destroys it)."""
    image = dom0_workdir / "tiny.save"
    pv_guest.wait_tick_after(pv_guest.ticks()[-1], timeout=60)
    dom0lib.xl("save", pv_guest.name, str(image), timeout=300)
    assert not pv_guest.exists(), "xl save must leave no domain behind"
    return SavedGuest(pv_guest, image, pv_guest.ticks()[-1])


def test_xl_save_writes_an_xl_image(saved_guest: SavedGuest) -> None:
    with saved_guest.image.open("rb") as f:
        head = f.read(len(XL_SAVE_MAGIC))
    assert head == XL_SAVE_MAGIC
    # Every page of the guest travels in the image.
    assert saved_guest.image.stat().st_size > saved_guest.guest.memory_mb << 20


def test_guest_is_frozen_while_saved(saved_guest: SavedGuest) -> None:
    time.sleep(2)
    assert saved_guest.guest.ticks()[-1] == saved_guest.last_tick


def test_xen_verify_stream_v2_accepts_the_image(saved_guest: SavedGuest) -> None:
    """Xen's own checker, the reference the xlpy checks below are compared with."""
    tools = sorted(glob.glob("/usr/lib/xen-*/bin/verify-stream-v2"))
    if not tools:
        pytest.skip("Xen's verify-stream-v2 is not installed (Debian: xen-utils-4.17)")
    env = dict(os.environ, PYTHONPATH=str(dom0lib.xen_python_dir()))
    dom0lib.run([tools[-1], "-f", "xl", "-i", str(saved_guest.image)], env=env, timeout=300)


def test_xlpy_verify_accepts_the_image(saved_guest: SavedGuest) -> None:
    missing = dom0lib.xlpy_command_missing("verify")
    if missing:
        pytest.skip(missing)
    # --strict: the checks of verify-stream-v2, which accepted the same image above.
    proc = dom0lib.xlpy("verify", "--strict", "--json", str(saved_guest.image))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["valid"] is True
    assert (report["framing"], report["format"]) == ("xl", "libxl"), report
    assert "pv" in str(report["guest"]).lower(), report
    assert report["checkpoints"] == 0, report
    # A PV save sends every page of the guest at least once.
    assert report["pages"] >= saved_guest.guest.memory_mb * 256, report


def test_xlpy_inspect_handles_the_image(saved_guest: SavedGuest) -> None:
    """inspect reads legacy streams: a real v2 image is summarised or cleanly refused."""
    missing = dom0lib.xlpy_command_missing("inspect")
    if missing:
        pytest.skip(missing)
    proc = dom0lib.xlpy("inspect", str(saved_guest.image))
    print(proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert proc.returncode in (0, 1), proc.stderr
    if proc.returncode == 1:
        # Refused as what it is: a migration v2 stream.
        assert "v2" in proc.stdout + proc.stderr


def test_xl_restore_resumes_the_guest(saved_guest: SavedGuest) -> None:
    guest = saved_guest.guest
    dom0lib.xl("restore", str(saved_guest.image), timeout=300)
    assert guest.exists()
    newest = guest.wait_tick_after(saved_guest.last_tick, timeout=120)
    ticks = guest.ticks()
    # Resumed, not rebooted: one boot, and the tick count runs on without a restart.
    assert guest.boots() == 1, guest.console()[-800:]
    assert ticks == list(range(1, newest + 1)), ticks
