"""Restoring xenopsd images: round trips, the process_header-style API, the libxc path.

Round trip for both generations, PV and HVM: gen → inspect → convert → restore, the
domain's memory equal to the generated guest's pages and every non-libxc record
byte-equal in the domain directory.
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.libxc_stand_in import build_stand_in, feed, read_report
from tests.helpers.xenopsd_images import convert_on_pipes, spans
from xlpy.binding.detect import ENV_GENERATION, ENV_LIBRARY
from xlpy.binding.generations import by_name
from xlpy.cli import main as xlpy_main
from xlpy.errors import StreamMalformed, StreamTruncated, UsageError
from xlpy.guest import Guest, GuestSpec
from xlpy.stream import xenopsd as X
from xlpy.stream.legacy import format as LF
from xlpy.stream.legacy.senders import SenderProfile
from xlpy.stream.xenopsd_gen import generate_image
from xlpy.xenopsd import Image, restore_image

SENDER = "xen-4.0"  # no LAST_CHECKPOINT: the sender whose images 4.1-4.3.1 libxc eats into
EXTRAS = {X.VARSTORED: 3000, X.SWTPM: 500}
SPECS = {
    "pv": GuestSpec(kind="pv", pages=48, seed=11, vcpus=2),
    "hvm": GuestSpec(kind="hvm", pages=48, seed=12, vcpus=2),
}


def gen(guest: str, kind: str, libxc: str = "legacy") -> bytes:
    out = io.BytesIO()
    width = 4 if kind == "xenopsd-legacy" else 8
    extras = EXTRAS if kind == "xenopsd" else {}
    generate_image(
        SenderProfile(sender=SENDER, width=width),
        SPECS[guest],
        out,
        kind=kind,
        libxc=libxc,
        extras=extras,
    )
    return out.getvalue()


def memory_ok(guest: str, out: Path) -> bool:
    """``out/memory`` holds the guest's pages (HVM finish clears the magic pfns)."""
    g = Guest(SPECS[guest])
    mem = np.fromfile(out / "memory", dtype=np.uint8).reshape(-1, LF.PAGE_SIZE)
    pop = np.flatnonzero(g.populated)
    want = g.pages(pop.astype(np.uint64), 0)
    if guest == "hvm":
        want[np.isin(pop, list(g.hvm_magic_pfns))] = 0
    return bool(np.array_equal(mem[pop], want) and not mem[np.flatnonzero(~g.populated)].any())


def inspect_json(data: bytes) -> dict[str, object]:
    p = subprocess.run(
        [sys.executable, "-m", "xlpy", "inspect", "-", "--json"],
        input=data,
        capture_output=True,
        check=True,
    )
    doc: dict[str, object] = json.loads(p.stdout)
    return doc


def restore_on_pipe(data: bytes, out: Path, receiver: str) -> dict[str, object]:
    """``xlpy restore - --xenopsd`` with the image on a pipe."""
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "xlpy",
            "restore",
            "-",
            "--xenopsd",
            "--release",
            receiver,
            "--out",
            str(out),
            "--json",
        ],
        input=data,
        capture_output=True,
        check=False,
    )
    doc: dict[str, object] = json.loads(p.stdout)
    assert (p.returncode == 0) == doc["ok"], p.stderr.decode()
    return doc


@pytest.mark.parametrize("guest", ["pv", "hvm"])
@pytest.mark.parametrize("kind", ["xenopsd-legacy", "xenopsd"])
def test_round_trip(tmp_path: Path, guest: str, kind: str) -> None:
    data = gen(guest, kind)
    assert inspect_json(data)["complete"]
    converted = convert_on_pipes(data)
    doc = inspect_json(converted)
    assert doc["complete"] and [r["name"] for r in doc["records"]][1] == "Libxc"  # type: ignore[index]
    before, after = spans(data), spans(converted)
    qemu = Guest(SPECS[guest]).qemu_data(0)
    for image, receiver in (
        (data, "xen-4.3.1"),
        (data, "xen-4.3.2"),
        (data, "xen-4.17"),
        (converted, "xen-4.17"),
    ):
        out = tmp_path / f"{receiver}-{len(image)}"
        res = restore_on_pipe(image, out, receiver)
        assert res["ok"], res
        assert memory_ok(guest, out)
        files = res["xenopsd"]["files"]  # type: ignore[index]
        for name in ("Varstored", "Swtpm", "Xenops"):
            if name in before and name in files:
                assert (out / name).read_bytes() == before[name]
        assert set(files) >= {n for n in ("Varstored", "Swtpm") if n in before}
        if guest == "hvm":
            # xenopsd's own record, or libxc's (Libxc_legacy, kept by a legacy receiver)
            got = (out / "Qemu_trad") if "Qemu_trad" in files else (out / "qemu")
            assert got.read_bytes() == qemu
        if image is converted:
            assert files["Xenops"] and (out / "Xenops").read_bytes() == after["Xenops"]


def test_image_api_reads_the_next_header_after_the_libxc_record(tmp_path: Path) -> None:
    """The process_header loop over a socket: the receiver gets the record, the toolstack
    reads every header after it."""
    data = gen("hvm", "xenopsd")
    tx, rx = socket.socketpair()
    threading.Thread(target=lambda: (tx.sendall(data), tx.close()), daemon=True).start()
    seen = []
    bodies = {}
    try:
        image = Image(rx.fileno())
        for rec in image:
            seen.append(rec.name)
            if rec.type == X.LIBXC_LEGACY:
                done = image.restore(
                    rec, operation="restore", out=tmp_path / "dom", release="xen-4.3.1"
                )
                assert done.ok and done.framed and done.rest == b""
            elif rec.body_length:
                bodies[rec.name] = image.read_body(rec)
    finally:
        rx.close()
    assert seen == ["Xenops", "Libxc_legacy", "Varstored", "Swtpm", "End_of_image"]
    assert bodies["Varstored"] == spans(data)["Varstored"]
    assert memory_ok("hvm", tmp_path / "dom")
    with pytest.raises(UsageError):
        image.read_body(X.XenopsdRecord(offset=0, index=0, type=X.SWTPM, length=0, body_offset=0))


def test_in_place_receiver_eats_the_next_header_framed_one_does_not(tmp_path: Path) -> None:
    """xenguest reading xenopsd's descriptor: a 4.3.1 libxc given an old sender's legacy
    image reads xenopsd's QEMU record as a page count ("Qemu"), and the toolstack then
    finds no QEMU signature; through :meth:`Image.restore` nothing is eaten."""
    data = gen("hvm", "xenopsd-legacy")
    image = Image(feed(data))
    with pytest.raises(StreamMalformed) as e:
        for rec in image:
            r = image.receive_in_place(rec, generation="xen-4.3.1", out=tmp_path / "a")
            assert any("Max batch size exceeded (1970103633)" in m for m in r.messages)
            assert r.bytes_past_image == 4
    assert e.value.field == "qemu.signature"
    assert e.value.offset == data.index(X.LEGACY_QEMU_SIGNATURE) + 4
    names = []
    image = Image(feed(data))
    for rec in image:
        names.append(rec.name)
        if rec.type == X.LIBXC_LEGACY:
            assert image.restore(
                rec, operation="restore", out=tmp_path / "b", release="xen-4.3.1"
            ).ok
    assert names == ["Libxc_legacy", "Qemu_trad"]


def test_truncated_image_is_a_typed_error_and_leaves_no_record_files(tmp_path: Path) -> None:
    data = gen("pv", "xenopsd")
    cut = data[: data.rindex(X.HEADER.pack(X.SWTPM, 500)) + 100]
    res = restore_image(feed(cut), out=tmp_path / "d", release="xen-4.3.2")
    assert isinstance(res.error, StreamTruncated) and not res.ok
    assert res.error.offset == data.rindex(X.HEADER.pack(X.SWTPM, 500))
    assert not (tmp_path / "d" / "Varstored").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".d.xenopsd-")]


def test_hostile_record_after_libxc(tmp_path: Path) -> None:
    data = gen("pv", "xenopsd")
    at = data.rindex(X.HEADER.pack(X.END_OF_IMAGE, 0))
    bad = data[:at] + X.HEADER.pack(X.QEMU_TRAD, X.QEMU_TRAD_MAX + 1)
    res = restore_image(feed(bad), out=tmp_path / "d", release="xen-4.17")
    assert isinstance(res.error, StreamMalformed)
    assert (res.error.offset, res.error.field) == (at, "Qemu_trad.length")


def test_v2_record_for_a_legacy_receiver_is_a_usage_error(tmp_path: Path) -> None:
    data = gen("pv", "xenopsd", libxc="v2")
    with pytest.raises(UsageError, match=r"4\.6\+"):
        restore_image(feed(data), out=tmp_path / "d", release="xen-4.3.2")
    path = tmp_path / "v2.img"
    path.write_bytes(data)  # a regular file: detected without --xenopsd
    args = ["restore", str(path), "--release", "xen-4.3.2", "--out", str(tmp_path / "e")]
    assert xlpy_main(args) == 2 and not (tmp_path / "e").exists()


# --- the libxc backend: libxc gets exactly the record -------------------------------------------


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Stand-in libxenguests that read io_fd to EOF and count the bytes (4.2 and 4.19)."""
    return {
        name: build_stand_in(by_name(name), tmp_path_factory.mktemp(name))
        for name in ("4.2-4.3.1", "4.14-4.21")
    }


@pytest.mark.parametrize("guest", ["pv", "hvm"])
@pytest.mark.parametrize(
    ("kind", "libxc", "lib"),
    [
        ("xenopsd", "legacy", "4.2-4.3.1"),
        ("xenopsd-legacy", "legacy", "4.2-4.3.1"),
        ("xenopsd", "v2", "4.14-4.21"),
    ],
)
def test_libxc_backend_gets_exactly_the_record(
    stand_ins: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    guest: str,
    kind: str,
    libxc: str,
    lib: str,
) -> None:
    monkeypatch.setenv(ENV_LIBRARY, str(stand_ins[lib]))
    monkeypatch.delenv(ENV_GENERATION, raising=False)
    monkeypatch.setenv("FAKE_REPORT", str(tmp_path / "report"))
    data = gen(guest, kind, libxc)
    parts = spans(data)
    name = "Libxc" if libxc == "v2" else "Libxc_legacy"
    res = restore_image(feed(data), out=tmp_path / "recs", backend="libxc", domid=9, guest=guest)
    assert res.ok, res.error or (res.libxc and res.libxc.error)
    assert read_report(tmp_path / "report")["bytes"] == len(parts[name])
    for other in ("Varstored", "Swtpm", "Qemu_trad"):
        if other in parts:
            assert (tmp_path / "recs" / other).read_bytes() == parts[other]
    assert res.libxc is not None and res.libxc.domid == 9


def test_legacy_pv_image_on_a_connection_left_open(tmp_path: Path) -> None:
    """A PV legacy image ends with its libxc part: nothing after it is waited for."""
    data = gen("pv", "xenopsd-legacy")
    tx, rx = socket.socketpair()
    t = threading.Thread(target=tx.sendall, args=(data,), daemon=True)
    t.start()  # and the sender keeps its end open
    try:
        res = restore_image(rx.fileno(), out=tmp_path / "d", release="xen-4.3.2")
    finally:
        t.join(10)
        tx.close()
        rx.close()
    assert res.ok and res.kind == X.LEGACY and memory_ok("pv", tmp_path / "d")


def test_every_record_type_lands_as_its_file(tmp_path: Path) -> None:
    data = gen("hvm", "xenopsd")
    end = data.rindex(X.HEADER.pack(X.END_OF_IMAGE, 0))
    more = {X.SWTPM0: b"old vtpm", X.SWTPM: b"second vtpm", X.DEMU: b"vgpu" * 9}
    extra = b"".join(X.HEADER.pack(t, len(b)) + b for t, b in more.items())
    res = restore_image(
        feed(data[:end] + extra + data[end:]), out=tmp_path / "d", release="xen-4.3.2"
    )
    assert res.ok
    d = tmp_path / "d"
    assert (d / "Swtpm0").read_bytes() == more[X.SWTPM0]
    assert (d / "Swtpm.2").read_bytes() == more[X.SWTPM]
    assert (d / "Swtpm").read_bytes() == spans(data)["Swtpm"]
    assert (d / "Demu").read_bytes() == more[X.DEMU]
    assert list(res.files) == ["Xenops", "Varstored", "Swtpm", "Swtpm0", "Swtpm.2", "Demu"]
