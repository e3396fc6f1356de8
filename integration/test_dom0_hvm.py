"""An HVM guest through xlpy's legacy round trips and simulated restore, on real Xen 4.17.

Issue 6 item 3 for HVM: the ``xl save`` image of an HVM guest (qemu-xen device model)
is written as a xen-4.3 sender's legacy stream, with its QEMU record as xl wrote it
(``DeviceModelRecord0002``) or as XenServer-classic did (``QemuDeviceModelRecord``
trailer), converted back to v2 and restored with ``xl restore``: the guest comes back
alive, which needs that QEMU record intact.  Item 5 for HVM: the image restored paused
on real Xen, its pages read in place (every pfn the stream carries), matches xlpy's
simulated restore page for page, except the pages libxc clears.

The guest (``dom0lib.HVMGuest``: a 32 MiB multiboot kernel ticking on its serial port)
boots and is saved once per module; the streams go through pipes, so dom0's small /tmp
holds only the saved image and one converted copy.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import dom0lib
import pytest

pytestmark = pytest.mark.dom0

#: HVM params naming the pages libxc clears while restoring (handle_hvm_params calls
#: xc_clear_domain_page): the console and xenstore rings start empty for the new
#: consoled/xenstored connections, the legacy ioreq pages for the new device model.
LIBXC_CLEARS = {
    1: "HVM_PARAM_STORE_PFN: the xenstore ring, cleared for the new connection",
    5: "HVM_PARAM_IOREQ_PFN: the synchronous ioreq page, cleared for the new device model",
    6: "HVM_PARAM_BUFIOREQ_PFN: the buffered ioreq ring, cleared likewise",
    17: "HVM_PARAM_CONSOLE_PFN: the console ring, cleared for the new connection",
}


@dataclass
class HvmSaved:
    guest: dom0lib.HVMGuest
    image: Path
    last_tick: int
    workdir: Path


@pytest.fixture(scope="module")
def hvm_saved(dom0_workdir: Path, _xen_reason: str | None) -> Iterator[HvmSaved]:
    from conftest import _unusable

    if _xen_reason is not None:
        _unusable(_xen_reason)
    guest = dom0lib.HVMGuest(name="xlpy-hvm", workdir=dom0_workdir / "hvm")
    image = dom0_workdir / "hvm.save"
    guest.destroy()
    guest.create()
    try:
        assert guest.console_log_appears(timeout=60), f"qemu wrote no {guest.console_log}"
        # Up within seconds when all is well: the bound only decides how soon a guest
        # that will never tick is reported.
        guest.wait_tick_after(1, timeout=120)
        guest.wait_tick_after(guest.ticks()[-1], timeout=60)
        dom0lib.xl("save", guest.name, str(image), timeout=300)
        assert not guest.exists()
        yield HvmSaved(guest, image, guest.ticks()[-1], dom0_workdir)
    finally:
        guest.destroy()
        image.unlink(missing_ok=True)


@pytest.fixture
def hvm_cleanup(hvm_saved: HvmSaved) -> Iterator[None]:
    yield
    hvm_saved.guest.destroy()
    assert not hvm_saved.guest.exists()


def _hvm_params(image: Path) -> dict[int, int]:
    """The HVM_PARAMS record of the image: index -> value."""
    from xlpy.stream.source import ByteSource
    from xlpy.stream.v2.reader import V2Reader
    from xlpy.stream.v2.records import LIBXC, HvmParams, V2Record

    with image.open("rb", buffering=0) as f:
        for el in V2Reader(ByteSource(f.fileno())).elements():
            if isinstance(el, V2Record) and el.layer == LIBXC:
                body = el.decode()
                if isinstance(body, HvmParams):
                    return dict(body.params)
    raise AssertionError(f"{image}: no HVM_PARAMS record")


def test_paused_hvm_restore_matches_the_simulated_restore_page_for_page(
    hvm_saved: HvmSaved, hvm_cleanup: None
) -> None:
    import xlpy

    saved = hvm_saved
    out = saved.workdir / "sim-hvm"
    # The simulated restore first: its memory file is what the paused domain is read against.
    try:
        sim = xlpy.restore(saved.image, operation="restore", out=out, release="xen-4.17")
        assert sim.ok, sim.error
        mark = dom0lib.console_mark(saved.guest)
        dom0lib.xl("restore", "-p", str(saved.image), timeout=300)
        try:
            domid = int(dom0lib.xl("domid", saved.guest.name).stdout.strip())
            compared, differ = dom0lib.pages_differing_in_domain(
                domid, dom0lib.stream_data_pfns(saved.image), out / "memory"
            )
            # The comparison means something only if the guest never ran since the
            # restore: a running guest rewrites its tick counter and stack pages.
            state = dom0lib.xl("list", saved.guest.name).stdout.splitlines()[-1].split()[4]
            assert "p" in state, f"the restored domain is not paused: state {state}"
            assert not dom0lib.ticks_since(saved.guest, mark), "the paused guest ticked"
        finally:
            saved.guest.destroy()
    finally:
        shutil.rmtree(out, ignore_errors=True)
    params = _hvm_params(saved.image)
    cleared = {params[i]: why for i, why in LIBXC_CLEARS.items() if params.get(i)}
    unexplained = sorted(set(differ) - set(cleared))
    print(f"{compared} pages compared; differ: {[hex(p) for p in differ]}; cleared: {cleared}")
    assert compared >= saved.guest.memory_mb * 256 - 1024, compared
    assert not unexplained, f"pages libxc does not clear differ: {[hex(p) for p in unexplained]}"


def _relay(src: IO[bytes], dst: IO[bytes], skip_xl_header: bool, tail: bytearray) -> None:
    """Copy ``src`` to ``dst`` (dropping an xl header if asked), keeping the last 1 MiB."""
    try:
        if skip_xl_header:
            head = src.read(dom0lib.XL_HEADER_PEEK)
            src.read(dom0lib.xl_header_size(head) - len(head))
        while chunk := src.read(1 << 20):
            dst.write(chunk)
            tail += chunk
            del tail[: -(1 << 20)]
    finally:
        # Closing both ends also unblocks a producer whose consumer died.
        for f in (dst, src):
            with contextlib.suppress(OSError):
                f.close()


@pytest.mark.parametrize(
    ("framing", "converter"),
    [("xl", "xlpy"), ("xl", "xen"), ("xenserver-classic", "xlpy")],
)
def test_hvm_legacy_round_trip_comes_back_alive(
    hvm_saved: HvmSaved, framing: str, converter: str, hvm_cleanup: None
) -> None:
    """xen-4.3 legacy (xl or XenServer-classic QEMU framing) -> v2 -> ``xl restore``."""
    saved = hvm_saved
    back = saved.workdir / "hvm-back.xl"
    tolegacy = [sys.executable, "-m", "xlpy", "convert", "--to", "legacy", "--sender", "xen-4.3"]
    tolegacy += ["--toolstack", framing, "-i", str(saved.image), "-o", "1"]
    common = ["-w", "64", "-g", "hvm", "-f", "libxl"]
    env = dict(os.environ)
    # xlpy reads the legacy xl header itself; otherwise the converter gets the bare libxc
    # stream and the original xl header goes in front (as libxl does; Xen 4.17's
    # convert-legacy-stream -x is broken under Python 3).
    keep_xl = framing == "xl" and converter == "xlpy"
    if converter == "xlpy":
        convert = [sys.executable, "-m", "xlpy", "convert", *(["-x"] if keep_xl else [])]
    else:
        found = sorted(Path("/").glob("usr/lib/xen-*/bin/convert-legacy-stream"))[-1:]
        convert = [str(c) for c in found]
        assert convert, "Xen's convert-legacy-stream is not installed"
        env["PYTHONPATH"] = str(dom0lib.xen_python_dir())
    tail = bytearray()
    perr_path, cerr_path = saved.workdir / "tolegacy.err", saved.workdir / "convert.err"
    try:
        with (
            back.open("wb") as fout,
            perr_path.open("wb") as perr,
            cerr_path.open("wb") as cerr,
        ):
            if not keep_xl:
                with saved.image.open("rb") as f:
                    head = f.read(dom0lib.XL_HEADER_PEEK)
                    fout.write(head + f.read(dom0lib.xl_header_size(head) - len(head)))
                fout.flush()
            producer = subprocess.Popen(tolegacy, stdout=subprocess.PIPE, stderr=perr)
            consumer = subprocess.Popen(
                [*convert, "-i", "0", "-o", "1", *common],
                stdin=subprocess.PIPE, stdout=fout, stderr=cerr, env=env,
            )  # fmt: skip
            assert producer.stdout is not None and consumer.stdin is not None
            relay = threading.Thread(
                target=_relay,
                args=(producer.stdout, consumer.stdin, framing == "xl" and not keep_xl, tail),
            )
            relay.start()
            # Only the relay reads the producer's stdout and writes the consumer's stdin.
            bound = dom0lib.bound(900)
            producer.wait(timeout=bound)
            relay.join(timeout=bound)
            consumer.wait(timeout=bound)
        print(f"to legacy: rc {producer.returncode} {perr_path.read_text()[-1500:]}")
        print(f"{convert[-1]}: rc {consumer.returncode} {cerr_path.read_text()[-1500:]}")
        assert producer.returncode == 0 and consumer.returncode == 0
        # The QEMU record travelled in the legacy framing asked for.
        sig = b"DeviceModelRecord0002" if framing == "xl" else b"QemuDeviceModelRecord\n"
        assert sig in tail, bytes(tail[-200:])
        mark = dom0lib.console_mark(saved.guest)
        dom0lib.xl("restore", str(back), timeout=300)
    finally:
        back.unlink(missing_ok=True)
    dom0lib.assert_resumed_since(saved.guest, mark, saved.last_tick)
