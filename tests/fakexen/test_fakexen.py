"""The real libxc of each release, through xlpy's binding, on the user-space Xen (issue 10).

Each test restores a stream generated here with the real ``xc_domain_restore`` of a
release (built once per machine into ``.cache/libxc``, see :mod:`xlpy.fakexen.builder`)
and compares the domain with xlpy's simulated receiver of the same generation.

Sources: ``$XLPY_XEN_SRC``, else ``../shared/xen-src`` next to the checkout.  Without
them (or gcc) the tests SKIP with the reason, unless ``XLPY_REQUIRE_LIBXC=1`` (CI):
then they FAIL.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.paths import REPO
from xlpy.stream.legacy.format import PAGE_SIZE

LEGACY = ("4.0.4", "4.1.6.1", "4.2.5", "4.3.1", "4.3.2", "4.4.4", "4.5.5")
#: The sim generation and the xlpy sender matching each real release.
SIM = {
    "4.0.4": "xen-4.0",
    "4.1.6.1": "xen-4.1",
    "4.2.5": "xen-4.2.5",
    "4.3.1": "xen-4.3.1",
    "4.3.2": "xen-4.3.2",
    "4.4.4": "xen-4.4",
    "4.5.5": "xen-4.5",
}
SENDER = {
    "4.0.4": "xen-4.0",
    "4.1.6.1": "xen-4.1",
    "4.2.5": "xen-4.2",
    "4.3.1": "xen-4.3",
    "4.3.2": "xen-4.3",
    "4.4.4": "xen-4.3",
    "4.5.5": "xen-4.5",
}

#: Pages real libxc rewrites on a PV restore and the sim leaves as the stream had them
#: (each checked to be exactly these): the guest's p2m frames (libxc writes the new
#: p2m there, xc_domain_restore.c "Copy the P2M we've constructed to the 'live' P2M"),
#: and start_info (libxc fills in the new store/console mfns and shared_info frame,
#: "Uncanonicalise the suspend-record frame number and poke resume record").
PV_REWRITTEN = ("p2m frames", "start_info")


def _sources() -> Path | None:
    env = os.environ.get("XLPY_XEN_SRC")
    if env:
        return Path(env)
    shared = REPO.parent / "shared" / "xen-src"
    return shared if shared.is_dir() else None


def _unavailable(reason: str) -> None:
    if os.environ.get("XLPY_REQUIRE_LIBXC") == "1":
        pytest.fail(f"real libxc required (XLPY_REQUIRE_LIBXC=1) but {reason}")
    pytest.skip(f"REAL LIBXC TESTS SKIPPED: {reason}")


@pytest.fixture(scope="session")
def xen_src() -> Path:
    src = _sources()
    if src is None or not src.is_dir():
        _unavailable("no Xen sources: set XLPY_XEN_SRC or provide ../shared/xen-src")
    assert src is not None
    if shutil.which("gcc") is None:
        _unavailable("gcc is not installed")
    os.environ["XLPY_XEN_SRC"] = str(src)
    return src


def xlpy(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "xlpy", *args], capture_output=True, text=True, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"xlpy {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def streams(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("fakexen-streams")
    out = {}
    for sender in sorted(set(SENDER.values())):
        for guest, ts in (("pv", "bare"), ("hvm", "xend")):
            path = d / f"{guest}-{sender}.img"
            xlpy(
                "gen",
                "--guest",
                guest,
                "--sender",
                sender,
                "--toolstack",
                ts,
                "--memory",
                "4M",
                "--seed",
                "3",
                "-o",
                str(path),
            )
            out[f"{guest}-{sender}"] = path
    return out


def _pages_differing(a: Path, b: Path) -> list[int]:
    x, y = a.read_bytes(), b.read_bytes()
    assert len(x) == len(y), f"{a} is {len(x)} bytes, {b} {len(y)}"
    return [
        p
        for p in range(len(x) // PAGE_SIZE)
        if x[p * PAGE_SIZE : (p + 1) * PAGE_SIZE] != y[p * PAGE_SIZE : (p + 1) * PAGE_SIZE]
    ]


def _pv_rewritten(stream: Path, sim_dir: Path) -> set[int]:
    """The PV_REWRITTEN pages of this stream: its p2m frame list and start_info."""
    from xlpy.stream.legacy import pvcontext
    from xlpy.stream.legacy.reader import LegacyReader
    from xlpy.stream.source import ByteSource

    with open(stream, "rb", buffering=0) as f:
        reader = LegacyReader(ByteSource(f.fileno()))
        reader.read_framing()
        reader.read_header()
        reader.read_pv_ext_info()
        frames = set(reader.read_p2m_frame_list().entries)
    ctx = pvcontext.read_context((sim_dir / "vcpu0.ctx").read_bytes(), 8)
    return frames | {ctx.edx}


def _restore_both(
    release: str, guest: str, streams: dict[str, Path], tmp_path: Path, *extra: str
) -> tuple[Path, Path, Path]:
    stream = streams[f"{guest}-{SENDER[release]}"]
    tmp_path.mkdir(exist_ok=True)
    sim, real = tmp_path / "sim", tmp_path / "real"
    ts = ["--toolstack", "xend"] if guest == "hvm" else []
    cs = (
        ["--checkpointed", "1"]
        if SIM[release] not in ("xen-4.0", "xen-4.1", "xen-4.2.5", "xen-4.3.1")
        else []
    )
    xlpy("restore", str(stream), "--release", SIM[release], "--out", str(sim), "-q", *ts, *cs)
    xlpy(
        "restore",
        str(stream),
        "--backend",
        "fakexen",
        "--release",
        release,
        "--out",
        str(real),
        "-q",
        *ts,
        *(cs or ["--checkpointed", "0"]),
        *extra,
    )
    return stream, sim, real


@pytest.mark.parametrize("release", LEGACY)
def test_hvm_restore_equals_sim(
    xen_src: Path, streams: dict[str, Path], tmp_path: Path, release: str
) -> None:
    _, sim, real = _restore_both(release, "hvm", streams, tmp_path)
    for name in ("memory", "hvm_context", "qemu"):
        assert (sim / name).read_bytes() == (real / name).read_bytes(), name
    domain = json.loads((real / "domain.json").read_text())
    assert domain["receiver"] == f"xen-{release}" and domain["fakexen"]["failed_hypercalls"] == 0


@pytest.mark.parametrize("release", LEGACY)
def test_pv_restore_equals_sim_outside_rewritten_pages(
    xen_src: Path, streams: dict[str, Path], tmp_path: Path, release: str
) -> None:
    # strict: Xen's own checks (the extended context's vcpu field among them) are on
    stream, sim, real = _restore_both(release, "pv", streams, tmp_path)
    differing = set(_pages_differing(sim / "memory", real / "memory"))
    assert differing == _pv_rewritten(stream, sim)
    for ctx in sorted(sim.glob("vcpu*.ext")) + sorted(sim.glob("vcpu*.xsave")):  # xsave: 4.1 on
        assert ctx.read_bytes() == (real / ctx.name).read_bytes(), ctx.name
    assert sorted(p.name for p in sim.glob("vcpu*.ctx")) == sorted(
        p.name for p in real.glob("vcpu*.ctx")
    )


def test_pv_non_identity_p2m_dumps_the_same_domain(
    xen_src: Path, streams: dict[str, Path], tmp_path: Path
) -> None:
    # With mfn = pfn + offset, libxc's (un)canonicalisation is exercised for real; the
    # dump canonicalises back, so only a pfn/mfn mix-up in libxc would differ.
    stream, sim, identity = _restore_both("4.4.4", "pv", streams, tmp_path / "a")
    _, _, offset = _restore_both("4.4.4", "pv", streams, tmp_path / "b", "--p2m-offset", "0x40000")
    # start_info and the p2m frames hold mfns by design (they are the new p2m)
    differing = set(_pages_differing(identity / "memory", offset / "memory"))
    assert differing == _pv_rewritten(stream, sim)
    for ctx in sorted(identity.glob("vcpu*")):
        assert ctx.read_bytes() == (offset / ctx.name).read_bytes(), ctx.name
    types = json.loads((offset / "domain.json").read_text())["fakexen"]["page_types"]
    assert types == json.loads((identity / "domain.json").read_text())["fakexen"]["page_types"]
    assert len(types) >= 4  # the L4..L1 tables of the page-table walk


def test_strict_ext_vcpu_check_refuses_a_bad_vcpu_field(
    xen_src: Path, streams: dict[str, Path], tmp_path: Path
) -> None:
    # Finding 4 of the spike: a stream whose extended vcpu context names a vcpu the
    # domain lacks (xlpy's generator once wrote random bytes there) is refused by
    # Xen's arch_do_domctl with -ESRCH, and real 4.4.4 fails; --lenient accepts it.
    from xlpy.guest import det_bytes

    stream = streams["pv-xen-4.3"]
    blob = struct.pack("<II", 0, 56) + det_bytes(3, 2, 48, 0)
    data = stream.read_bytes()
    assert data.count(blob) == 1
    bad = tmp_path / "bad-ext.img"
    bad.write_bytes(data.replace(blob, struct.pack("<II", 9, 56) + blob[8:]))
    args = ["restore", str(bad), "--backend", "fakexen", "--release", "4.4.4",
            "--checkpointed", "0"]  # fmt: skip
    proc = xlpy(*args, "--out", str(tmp_path / "d"), check=False)
    assert proc.returncode == 1
    assert "Couldn't set extended vcpu0 info (3 = No such process)" in proc.stderr
    assert not (tmp_path / "d").exists()
    xlpy(*args, "--out", str(tmp_path / "lenient"), "--lenient")


def _as_version_2(v3: Path, out: Path) -> None:
    """The stream a 4.6 sender writes: image version 2, without v3's STATIC_DATA_END
    record (0x10, which 4.6's restore refuses as an unknown mandatory record)."""
    data = v3.read_bytes()
    body = bytearray(data[:40])  # image and domain headers
    body[12:16] = (2).to_bytes(4, "big")
    pos = 40
    while pos < len(data):
        rtype, length = struct.unpack_from("<II", data, pos)
        size = 8 + ((length + 7) & ~7)
        if rtype != 0x10:
            body += data[pos : pos + size]
        pos += size
    out.write_bytes(body)


@pytest.mark.parametrize("guest", ["pv", "hvm"])
@pytest.mark.parametrize("release", ["4.6.6", "4.17"])
def test_v2_releases_restore_converted_streams(
    xen_src: Path, streams: dict[str, Path], tmp_path: Path, release: str, guest: str
) -> None:
    from xlpy.fakexen import builder

    if release == builder.DEBIAN and not (builder.debian_root() / "usr/include/xen").is_dir():
        _unavailable("Debian's Xen 4.17 is not unpacked (make xen-cache)")
    legacy = streams[f"{guest}-xen-4.3"]
    v2 = tmp_path / "stream.v2"
    xlpy("convert", "--in", str(legacy), "--out", str(v2), "--width", "64", "--guest", guest)
    if release == "4.6.6":
        _as_version_2(v2, tmp_path / "stream.v2v2")
        v2 = tmp_path / "stream.v2v2"
    sim, real = tmp_path / "sim", tmp_path / "real"
    ts = ["--toolstack", "xend"] if guest == "hvm" else []
    xlpy(
        "restore",
        str(legacy),
        "--release",
        "xen-4.3.2",
        "--checkpointed",
        "1",
        "--out",
        str(sim),
        "-q",
        *ts,
    )
    xlpy(
        "restore",
        str(v2),
        "--backend",
        "fakexen",
        "--release",
        release,
        "--checkpointed",
        "0",
        "--out",
        str(real),
        "-q",
    )
    if guest == "hvm":
        for name in ("memory", "hvm_context"):
            assert (sim / name).read_bytes() == (real / name).read_bytes(), name
    else:
        differing = set(_pages_differing(sim / "memory", real / "memory"))
        assert differing == _pv_rewritten(legacy, sim)


def test_real_40_segfault_is_libxc_crashed(xen_src: Path, tmp_path: Path) -> None:
    # Finding 2: real 4.0.4 has no "xenstore frame number is bad" check and reads
    # ctx->p2m out of bounds at xc_domain_restore.c:1530 on a 4.1 PV Remus stream.
    from xlpy.api import run
    from xlpy.backends import RestoreRequest
    from xlpy.errors import LibxcCrashed
    from xlpy.fakexen.backend import FakeXenOptions

    stream = tmp_path / "remus.img"
    xlpy(
        "gen",
        "--guest",
        "pv",
        "--sender",
        "xen-4.1",
        "--toolstack",
        "bare",
        "--mode",
        "remus",
        "--checkpoints",
        "3",
        "--memory",
        "4M",
        "--seed",
        "1",
        "-o",
        str(stream),
    )
    with open(stream, "rb", buffering=0) as f:
        result = run(
            RestoreRequest(
                fd=f.fileno(),
                operation=None,
                backend="fakexen",
                release="4.0.4",
                guest="pv",
                options=FakeXenOptions(out=tmp_path / "d"),
            )
        )
    if result.ok:
        pytest.fail("real 4.0.4 restored the 4.1 Remus stream; the spike saw SIGSEGV")
    assert isinstance(result.error, LibxcCrashed), result.error
    assert result.error.signal == signal.SIGSEGV
    assert not (tmp_path / "d").exists()


def test_hypercall_log_names_each_call(
    xen_src: Path, streams: dict[str, Path], tmp_path: Path
) -> None:
    log = tmp_path / "hc.log"
    _restore_both("4.4.4", "hvm", streams, tmp_path, "--hypercall-log", str(log))
    lines = log.read_text().splitlines()
    # domctl 34 is sethvmcontext, 60 settscinfo (domctl.h); each with its result
    assert "hypercall domctl(36) sub=34 -> 0" in lines
    assert "hypercall domctl(36) sub=60 -> 0" in lines
    assert any(line.startswith("ioctl MMAPBATCH_V2 dom=7 ") for line in lines)


def test_libxc_list_shows_the_builds(xen_src: Path) -> None:
    from xlpy.fakexen import builder

    builder.build("4.4.4")
    rows = json.loads(xlpy("libxc", "list", "--json").stdout)
    row = next(r for r in rows if r["release"] == "4.4.4")
    assert row["state"] == "ok" and row["hash"] == builder._source_hash("4.4.4")


def test_api_fakexen_backend_frames_on_431(
    xen_src: Path, streams: dict[str, Path], tmp_path: Path
) -> None:
    import xlpy

    stream = streams["hvm-xen-4.0"]
    done = xlpy.restore(
        str(stream),
        operation="migrate-receive",
        backend="fakexen",
        release="xen-4.3.1",
        out=tmp_path / "d",
        toolstack="xend",
    )
    assert done.ok and done.framed and done.backend == "fakexen", done.error
    sim = tmp_path / "sim"
    xlpy_sim = xlpy.restore(
        str(stream), operation="migrate-receive", out=sim, release="xen-4.3.1", toolstack="xend"
    )
    assert xlpy_sim.ok
    for name in ("memory", "hvm_context"):
        assert (sim / name).read_bytes() == (tmp_path / "d" / name).read_bytes(), name


def _lines_on_a_cut_stream(
    stream: Path, tmp_path: Path, release: str, *sims: str
) -> list[list[str]]:
    """libxc's lines from the real ``release`` and then from each sim generation of
    ``sims``, each restoring the first MiB of PV ``stream`` (EOF inside its first
    checkpoint) and failing with exit code 1."""
    cut = tmp_path / "cut.img"
    cut.write_bytes(stream.read_bytes()[: 1 << 20])
    runs = [("--backend", "fakexen", "--release", release)] + [("--release", s) for s in sims]
    lines = []
    for i, args in enumerate(runs):
        out = tmp_path / f"out{i}"
        proc = xlpy("restore", str(cut), "--guest", "pv", "--json", "--out", str(out), *args,
                    check=False)  # fmt: skip
        assert proc.returncode == 1, proc.stderr
        lines.append(json.loads(proc.stdout)["messages"])
    return lines


def test_real_40_error_lines_reach_the_binding_and_match_the_sim_texts(
    xen_src: Path, streams: dict[str, Path], tmp_path: Path
) -> None:
    # Finding 3: 4.0 has no xentoollog; xc_default_error_handler prints
    # "ERROR <desc>: <msg>" where 4.1+ print "xc: error: <msg>: <desc>"; the sim does too.
    real, sim = _lines_on_a_cut_stream(streams["pv-xen-4.0"], tmp_path, "4.0.4", "xen-4.0")
    assert real and all(line.startswith("ERROR Internal error: ") for line in real)
    assert real == sim


def test_real_425_says_rdexact_as_the_sim_425_does(
    xen_src: Path, streams: dict[str, Path], tmp_path: Path
) -> None:
    # Finding 1: 4.2.5 has the backport 50d9892 (rdexact() logs __func__); 4.2.0-4.2.4,
    # the sim's "xen-4.2", keep the read_exact_timed wording.
    real, sim, older = _lines_on_a_cut_stream(
        streams["pv-xen-4.2"], tmp_path, "4.2.5", "xen-4.2.5", "xen-4.2"
    )
    assert "xc: error: rdexact failed (read rc: 0, errno: 0): Internal error" in real
    assert real == sim
    assert older != real
    assert [line.replace("read_exact_timed", "rdexact") for line in older] == real


def test_libxc_build_says_why_a_release_does_not_build(xen_src: Path) -> None:
    # 4.7+ split libxc into tools/libs/*, which the recipe does not build (yet)
    proc = xlpy("libxc", "build", "xen-4.22.0", check=False)
    assert proc.returncode == 1
    assert "tools/libs" in proc.stderr
    rows = json.loads(xlpy("libxc", "list", "--json").stdout)
    assert next(r for r in rows if r["release"] == "4.22.0")["state"] == "failed"
