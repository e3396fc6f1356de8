"""``xlpy convert`` (legacy → v2): page contents, Remus layering, failover, errors, CLI.

Streams are generated at test time by :mod:`xlpy.stream.legacy.senders`; the v2
output is read back with :class:`V2Reader` and judged by ``verify_stream`` and
against the guest's expected final memory.  The differential tests against
Debian's tools are in ``test_convert_xen.py``.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.paths import REPO
from xlpy.cli import main as xlpy_main
from xlpy.errors import NotRepresentable, StreamError, UsageError
from xlpy.guest import GuestSpec
from xlpy.stream.convert import legacy_to_v2, physmap_xenstore, v2_entries
from xlpy.stream.legacy import format as LF
from xlpy.stream.legacy.records import Tmem, TmemPool
from xlpy.stream.legacy.senders import (
    SenderProfile,
    expected_memory,
    generate,
    stream_records,
)
from xlpy.stream.legacy.writer import LegacyWriter
from xlpy.stream.source import ByteSource
from xlpy.stream.v2 import format as F
from xlpy.stream.v2.reader import V2Reader
from xlpy.stream.v2.records import PageData, V2Record
from xlpy.stream.v2.verify import verify_stream


def legacy(profile: SenderProfile, spec: GuestSpec) -> bytes:
    buf = io.BytesIO()
    generate(profile, spec, buf)
    return buf.getvalue()


def convert(data: bytes, **kw: object) -> tuple[bytes, object]:
    out = io.BytesIO()
    report = legacy_to_v2(ByteSource(io.BytesIO(data)), out, **kw)  # type: ignore[arg-type]
    return out.getvalue(), report


def v2_records(data: bytes, fmt: str | None = None) -> list[V2Record]:
    reader = V2Reader(ByteSource(io.BytesIO(data)), fmt=fmt)
    return [e for e in reader.elements() if isinstance(e, V2Record)]


def v2_memory(data: bytes) -> dict[int, bytes]:
    """pfn → the last page content the v2 stream carries for it."""
    mem: dict[int, bytes] = {}
    for rec in v2_records(data):
        if rec.layer == "libxc" and rec.type == F.REC_TYPE_PAGE_DATA:
            pd = rec.decode()
            assert isinstance(pd, PageData)
            data_pfns = [
                int(p) for p, t in zip(pd.pfns, pd.type_nibbles, strict=True) if int(t) < 0xD
            ]
            for i, pfn in enumerate(data_pfns):
                mem[pfn] = bytes(pd.pages[i * 4096 : (i + 1) * 4096])
    return mem


def assert_memory(data: bytes, profile: SenderProfile, spec: GuestSpec) -> None:
    mem = v2_memory(data)
    n = 0
    for pfns, pages in expected_memory(profile, spec):
        for pfn, page in zip(pfns.tolist(), pages, strict=True):
            assert mem.get(pfn) == page.tobytes(), f"pfn {pfn:#x} differs"
            n += 1
    assert len(mem) == n


def names(data: bytes) -> list[str]:
    return [f"{r.layer}:{r.name}" for r in v2_records(data)]


PV = GuestSpec(kind="pv", pages=96, seed=11)
PV32 = GuestSpec(kind="pv", pages=96, seed=12, guest_width=4)
HVM = GuestSpec(kind="hvm", pages=256, seed=13)


@pytest.mark.parametrize("spec", [PV, PV32, HVM], ids=["pv64", "pv32", "hvm"])
@pytest.mark.parametrize(
    ("mode", "compress", "toolstack"),
    [
        ("plain", False, "xl"),
        ("remus", False, "xl"),
        ("remus", True, "xl"),
        ("remus", True, "xend"),
        ("remus", False, "bare"),
    ],
)
@pytest.mark.parametrize("fmt", ["libxc", "libxl"])
def test_pages_survive(
    spec: GuestSpec, mode: str, compress: bool, toolstack: str, fmt: str
) -> None:
    profile = SenderProfile(
        sender="xen-4.3",
        toolstack=toolstack,
        mode=mode,
        checkpoints=4 if mode == "remus" else 1,
        compress=compress,
    )
    out, report = convert(legacy(profile, spec), fmt=fmt)
    assert_memory(out, profile, spec)
    assert report.checkpoints == profile.checkpoints  # type: ignore[attr-defined]
    strict = verify_stream(ByteSource(io.BytesIO(out)), strict=True, fmt=fmt)
    assert strict.valid, strict.error
    assert strict.checkpoints == (profile.checkpoints if mode == "remus" else 0)


def test_remus_libxl_layering() -> None:
    """CHECKPOINT, then the checkpoint's libxl records and CHECKPOINT_END; END, END at last."""
    profile = SenderProfile(sender="xen-4.5", toolstack="xl", mode="remus", checkpoints=2)
    out, _ = convert(legacy(profile, HVM), fmt="libxl")
    seq = [n for n in names(out) if n != "libxc:Page data"]
    cp = [
        "libxc:HVM params",
        "libxc:HVM params",
        "libxc:HVM context",
        "libxc:Checkpoint",
        "libxl:Emulator xenstore data",
        "libxl:Emulator context",
        "libxl:Checkpoint end",
    ]
    assert seq[:2] == ["libxl:Libxc context", "libxc:Static data end"]
    rest = [n for n in seq[2:] if n != "libxc:x86 TSC info"]
    assert rest == cp + cp + ["libxc:End", "libxl:End"]


def test_plain_libxl_ends_like_xens_converter() -> None:
    profile = SenderProfile(sender="xen-4.5", toolstack="xl")
    out, _ = convert(legacy(profile, HVM), fmt="libxl")
    assert names(out)[-5:] == [
        "libxc:HVM context",
        "libxc:End",
        "libxl:Emulator xenstore data",
        "libxl:Emulator context",
        "libxl:End",
    ]


@pytest.mark.parametrize(
    ("toolstack", "mode"),
    [("xend", "plain"), ("xend", "remus"), ("xl", "plain"), ("xenserver-classic", "plain")],
)
def test_every_qemu_signature_becomes_the_emulator_record(toolstack: str, mode: str) -> None:
    profile = SenderProfile(sender="xen-4.2", toolstack=toolstack, mode=mode)
    data = legacy(profile, HVM)
    out, _ = convert(data, fmt="libxl")
    emu = [r for r in v2_records(out) if r.layer == "libxl" and r.name == "Emulator context"]
    assert emu and emu[-1].body[8:].startswith(LF.QEMU_MAGIC)
    # libxc format: the record follows the image in the DeviceModelRecord0002 form
    out, _ = convert(data, fmt="libxc")
    end = sum(1 for _ in v2_records(out))
    assert end and LF.QEMU_SIG_0002 in out[-(len(emu[-1].body) + 40) :]
    skipped, _ = convert(data, fmt="libxc", qemu=False)
    assert len(skipped) < len(out) and LF.QEMU_SIG_0002 not in skipped[-4096:]


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("spec", [PV, HVM], ids=["pv", "hvm"])
def test_abandoned_last_checkpoint_is_dropped(spec: GuestSpec, compress: bool) -> None:
    """Cut inside checkpoint 3 of 3: the output holds checkpoints 1-2 and ends cleanly."""
    three = SenderProfile(
        sender="xen-4.3", toolstack="xl", mode="remus", checkpoints=3, compress=compress
    )
    two = SenderProfile(
        sender="xen-4.3", toolstack="xl", mode="remus", checkpoints=2, compress=compress
    )
    full = legacy(three, spec)
    prefix = legacy(two, spec)
    assert full.startswith(prefix)
    for cut in (len(prefix) + 8, (len(prefix) + len(full)) // 2, len(full) - 1):
        out, report = convert(full[:cut], fmt="libxl")
        assert report.abandoned is not None  # type: ignore[attr-defined]
        assert report.checkpoints == 2  # type: ignore[attr-defined]
        assert_memory(out, two, spec)
        assert verify_stream(ByteSource(io.BytesIO(out)), strict=True).valid


def test_truncated_first_checkpoint_is_an_error() -> None:
    data = legacy(SenderProfile(sender="xen-4.3"), PV)
    with pytest.raises(StreamError) as e:
        convert(data[: len(data) // 2])
    assert e.value.offset is not None


def _with_tmem(profile: SenderProfile, spec: GuestSpec) -> bytes:
    recs = list(stream_records(profile, spec))
    first_batch = next(i for i, r in enumerate(recs) if type(r).__name__ == "PageBatch")
    pool = TmemPool(pool_id=0, flags=0, n_pages=0, uuid=(0, 0), pages=())
    tmem = Tmem(version=1, max_pools=1, client_flags=0, weight=0, cap=0, pools=(pool,))
    recs.insert(first_batch, tmem)
    buf = io.BytesIO()
    LegacyWriter(buf, width=profile.width).write_all(recs)
    return buf.getvalue()


def test_tmem_is_not_representable() -> None:
    data = _with_tmem(SenderProfile(sender="xen-4.1"), PV)
    with pytest.raises(NotRepresentable, match="not representable in v2"):
        convert(data)


def test_verify_mode_chunk_is_accepted() -> None:
    profile = SenderProfile(sender="xen-4.3")
    recs = list(stream_records(profile, PV))
    from xlpy.stream.legacy.records import EnableVerifyMode

    at = next(i for i, r in enumerate(recs) if type(r).__name__ == "PageBatch")
    recs.insert(at, EnableVerifyMode())
    buf = io.BytesIO()
    LegacyWriter(buf).write_all(recs)
    out, _ = convert(buf.getvalue())
    assert_memory(out, profile, PV)


def test_width_is_the_streams_own() -> None:
    profile = SenderProfile(sender="xen-4.3", width=4)
    data = legacy(profile, PV)
    out, report = convert(data, width=8)
    assert report.width == 4 and report.warnings  # type: ignore[attr-defined]
    assert out == convert(data, width=4)[0]


def test_v2_entries_drop_bare_xtab_and_move_the_type() -> None:
    raw = np.array([5, 0xF0000000, 0x10000007, 0xF0000009], dtype="<u8").tobytes()
    assert np.frombuffer(v2_entries(raw, 8), "<u8").tolist() == [5, (1 << 60) | 7, (0xF << 60) | 9]
    raw4 = np.array([0xF0000000] * 3, dtype="<u4").tobytes()
    assert v2_entries(raw4, 4) == b""
    # the upper half of a W=8 entry is ignored; an unaligned XTAB pattern drops nothing
    raw = np.array([(1 << 40) | 0x20000003, 0xF0000000_00000000], dtype="<u8").tobytes()
    assert np.frombuffer(v2_entries(raw, 8), "<u8").tolist() == [(2 << 60) | 3, 0]
    raw4 = np.array([0x12345678, 3], dtype="<u4").tobytes()
    assert np.frombuffer(v2_entries(raw4, 4), "<u8").tolist() == [(1 << 60) | 0x2345678, 3]


def test_physmap_xenstore_matches_xens_keys() -> None:
    blob = struct.pack("<II", 1, 1) + struct.pack("<QQQI", 0x1000, 0xF0000000, 0x800000, 4)
    pairs = physmap_xenstore(blob + b"vga\0" + bytes(4), 8)
    assert pairs == (
        b"physmap/1000/start_addr\0f0000000\0physmap/1000/size\0800000\0physmap/1000/name\0vga\0"
    )
    with pytest.raises(StreamError, match="NUL"):
        physmap_xenstore(blob + b"vgaX", 4)


# --- command line ----------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "xlpy", "convert", *args], capture_output=True, env=env, check=False
    )


def test_cli_paths_and_fds(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.write_bytes(legacy(SenderProfile(sender="xen-4.3", toolstack="xl"), HVM))
    dst = tmp_path / "out"
    assert (
        xlpy_main(
            ["convert", "-i", str(src), "-o", str(dst), "--guest", "hvm", "-f", "libxl", "-x"]
        )
        == 0
    )
    by_path = dst.read_bytes()
    # libxl's argv: --in FD --out FD --width 64 --guest hvm --format libxl
    with open(src, "rb") as fin, open(tmp_path / "fdout", "wb") as fout:
        rc = subprocess.run(
            [
                sys.executable,
                "-m",
                "xlpy",
                "convert",
                "--in",
                str(fin.fileno()),
                "--out",
                str(fout.fileno()),
                "--width",
                "64",
                "--guest",
                "hvm",
                "--format",
                "libxl",
            ],
            pass_fds=(fin.fileno(), fout.fileno()),
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            check=False,
        ).returncode
    assert rc == 0
    assert (tmp_path / "fdout").read_bytes() == by_path


def test_cli_errors_leave_no_output(tmp_path: Path) -> None:
    data = legacy(SenderProfile(sender="xen-4.3"), PV)
    cases = {
        "truncated": (data[: len(data) // 2], [], 1, b"end of stream"),
        "tmem": (_with_tmem(SenderProfile(sender="xen-4.1"), PV), [], 1, b"not representable"),
        "no-xl": (data, ["-x"], 1, b"No xl header"),
        "bad-width": (data, ["-w", "48"], 2, b"width"),
    }
    for name, (blob, extra, code, msg) in cases.items():
        src = tmp_path / f"{name}.in"
        src.write_bytes(blob)
        dst = tmp_path / f"{name}.out"
        r = _cli("-i", str(src), "-o", str(dst), *extra)
        assert r.returncode == code, (name, r.stderr)
        assert msg in r.stderr, (name, r.stderr)
        assert b"Traceback" not in r.stderr
        assert not dst.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.in" for n in cases)


def test_cli_progress_fd(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.write_bytes(legacy(SenderProfile(sender="xen-4.3", mode="remus", checkpoints=2), PV))
    r_fd, w_fd = os.pipe()
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "xlpy",
                "convert",
                "-i",
                str(src),
                "-o",
                str(tmp_path / "out"),
                "--progress-fd",
                str(w_fd),
            ],
            pass_fds=(w_fd,),
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            capture_output=True,
            check=False,
        )
        os.close(w_fd)
        lines = os.read(r_fd, 1 << 20).decode().splitlines()
    finally:
        os.close(r_fd)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""  # no bar: stderr is not a terminal
    import json

    events = [json.loads(x) for x in lines]
    assert events[-1]["phase"] == "done" and events[-1]["checkpoint"] == 2
    assert events[-1]["bytes"] == src.stat().st_size


def test_cli_names_match_the_sender_model() -> None:
    from xlpy.cli import convert as cli
    from xlpy.stream.legacy import senders

    assert (cli.SENDERS, cli.TOOLSTACKS, cli.TRAILERS) == (
        senders.SENDERS,
        senders.TOOLSTACKS,
        senders.TRAILERS,
    )


def test_cli_to_legacy_needs_a_sender(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.write_bytes(b"")
    r = _cli("--to", "legacy", "-i", str(src), "-o", str(tmp_path / "out"))
    assert r.returncode == 2
    assert b"--to legacy" in r.stderr


def test_usage_error_for_undetectable_guest() -> None:
    with pytest.raises(UsageError):
        convert(struct.pack("<Q", 16) + b"\x00" * 4)


def test_cli_writes_into_a_fifo_instead_of_replacing_it(tmp_path: Path) -> None:
    """A device or FIFO given as -o is written to; only regular files go via rename."""
    import threading

    src = tmp_path / "in"
    src.write_bytes(legacy(SenderProfile(sender="xen-4.3"), PV))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    t = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    t.start()
    r = _cli("-i", str(src), "-o", str(fifo))
    t.join(30)
    assert r.returncode == 0, r.stderr
    assert fifo.is_fifo()
    assert got and got[0] == convert(src.read_bytes())[0]


def test_compressed_checkpoints_beyond_the_delta_cache() -> None:
    """More distinct dirty pages than the sender's 8192-page cache: evictions, then FULL
    pages again; the replayed cache must agree with the sender's at every page."""
    spec = GuestSpec(kind="hvm", pages=16384, seed=5, dirty=0.25, vcpus=1)
    profile = SenderProfile(
        sender="xen-4.3", toolstack="xl", mode="remus", checkpoints=4, compress=True
    )
    out, report = convert(legacy(profile, spec), fmt="libxl")
    assert report.decoded_pages > 9000  # type: ignore[attr-defined]
    assert_memory(out, profile, spec)


@pytest.mark.parametrize("fmt", ["libxc", "libxl"])
def test_committed_checkpoint_reaches_a_live_reader(fmt: str) -> None:
    """Live Remus (libxl pipes our output into libxc): once checkpoint 3 begins, checkpoint
    2 is committed and must be delivered whole while the input pipe stays open, not sit
    in the output buffer until more output or EOF."""
    import select
    import time

    three = SenderProfile(sender="xen-4.3", toolstack="xl", mode="remus", checkpoints=3)
    two = SenderProfile(sender="xen-4.3", toolstack="xl", mode="remus", checkpoints=2)
    full, prefix = legacy(three, PV), legacy(two, PV)
    assert full.startswith(prefix)
    # the whole of checkpoint 2 up to its CHECKPOINT (libxc) or CHECKPOINT_END (libxl):
    # everything but the END record(s) a complete 2-checkpoint stream ends with
    done = convert(prefix, fmt=fmt)[0]
    expected = done[: -16 if fmt == "libxl" else -8]
    proc = subprocess.Popen(
        [sys.executable, "-m", "xlpy", "convert", "-i", "0", "-o", "1", "-f", fmt],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert proc.stdin is not None and proc.stdout is not None
    got = bytearray()
    try:
        proc.stdin.write(full[: len(prefix) + 100])
        proc.stdin.flush()
        deadline = time.monotonic() + 30
        while len(got) < len(expected) and time.monotonic() < deadline:
            if select.select([proc.stdout], [], [], 0.2)[0]:
                chunk = os.read(proc.stdout.fileno(), 1 << 20)
                if not chunk:
                    break
                got += chunk
        assert bytes(got) == expected
    finally:
        proc.stdin.close()
        got += proc.stdout.read()
        proc.wait(30)
    assert proc.returncode == 0
    assert bytes(got) == done


def test_cli_help_is_the_drop_in_manual() -> None:
    r = _cli("--help")
    assert r.returncode == 0
    text = r.stdout.decode()
    for needle in (
        "LIBXL_CONVERT_HELPER",
        "--in <fd> --out <fd> --width 64|32 --guest pv|hvm --format libxl",
        'exec xlpy convert "$@"',
        "Differences from Xen's tool",
        "Found checkpoint in non-checkpointed stream",
        "Exit status: 0 ok, 1 stream error, 2 usage or program error",
    ):
        assert needle in text, needle


def test_cli_version() -> None:
    import xlpy

    r = _cli("--version")
    assert r.returncode == 0, r.stderr
    assert xlpy.__version__ in r.stdout.decode()


class _FakeSyslog:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import syslog

        self.lines: list[tuple[int, str]] = []
        monkeypatch.setattr(syslog, "openlog", lambda *a, **k: None)
        monkeypatch.setattr(syslog, "syslog", lambda prio, msg: self.lines.append((prio, msg)))


def test_cli_syslog_replaces_stderr_but_errors_go_to_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Xen's tool: with --syslog, messages go to syslog instead of stdout/stderr; errors
    are printed on stderr as well."""
    import syslog

    src = tmp_path / "in"
    data = legacy(SenderProfile(sender="xen-4.3"), PV)  # a 64-bit toolstack's stream
    src.write_bytes(data)
    # -v summary and a width warning: stderr without --syslog ...
    args = ["convert", "-i", str(src), "-o", str(tmp_path / "out"), "-v", "-w", "32"]
    log = _FakeSyslog(monkeypatch)
    assert xlpy_main(args) == 0
    err = capsys.readouterr().err
    assert "converted pv stream" in err and "64-bit toolstack" in err
    assert log.lines == []
    # ... syslog instead with it
    assert xlpy_main([*args, "--syslog"]) == 0
    assert capsys.readouterr().err == ""
    prios = {p for p, _ in log.lines}
    assert prios == {syslog.LOG_INFO, syslog.LOG_WARNING}
    assert any("64-bit toolstack" in m for _, m in log.lines)
    # an error: both
    log.lines.clear()
    src.write_bytes(data[: len(data) // 2])
    assert xlpy_main([*args, "--syslog"]) == 1
    assert "end of stream" in capsys.readouterr().err
    assert any(p == syslog.LOG_ERR and "end of stream" in m for p, m in log.lines)


def test_page_store_replays_the_senders_lru() -> None:
    """The decoding store follows the sender's cache (compression.DeltaCache) batch after
    batch, pages new to it and pages it holds alike, and keeps each cached pfn's page."""
    from xlpy.stream.convert import STORE_RAM_PAGES, _PageStore
    from xlpy.stream.legacy.compression import DeltaCache

    rng = np.random.default_rng(7)
    store, sender = _PageStore(), DeltaCache(STORE_RAM_PAGES)
    want: dict[int, int] = {}
    sent = 0
    # new pages only (free slots, then evictions), a mix of new and cached, repeats
    batches = [np.arange(0, 6000), np.arange(6000, 9000), np.arange(9000, 10024)]
    batches += [rng.choice(12000, 1024, replace=False) for _ in range(6)]
    batches += [np.array([5, 5, 11000, 5])]
    for b in batches:
        pfns = [int(p) for p in b]
        pages = np.zeros((len(pfns), LF.PAGE_SIZE), np.uint8)
        pages[:, :8] = np.arange(sent, sent + len(pfns), dtype="<u8").view(np.uint8).reshape(-1, 8)
        store.store(pfns, [False] * len(pfns), pages)
        for i, pfn in enumerate(pfns):
            sender.store(pfn, sent + i)
            want[pfn] = sent + i
        sent += len(pfns)
        assert list(store._lru) == list(sender._lru)
    got = np.zeros((len(sender), LF.PAGE_SIZE), np.uint8)
    cached = list(sender._lru)
    store.fill(cached, got)
    assert got[:, :8].copy().view("<u8").ravel().tolist() == [want[p] for p in cached]
