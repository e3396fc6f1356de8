"""The reference receiver on hand-built streams: outcomes, messages, memory (§10-§12)."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.legacy_streams import (
    P2M,
    PAGE,
    XENSERVER_QEMU,
    build,
    expected_memory,
    remus_checkpoints,
)
from tests.helpers.paths import TESTS
from xlpy.errors import StreamMalformed, StreamTimeout, StreamTruncated, UsageError
from xlpy.receiver import restore
from xlpy.receiver.domains import Outcome
from xlpy.stream.legacy import format as F
from xlpy.stream.source import ByteSource

HB = 0.2  # short heartbeat for "quiet" peers
EOF_LINES = [
    "xc: error: 0-length read: Internal error",
    "xc: error: read_exact_timed failed (read rc: 0, errno: 0): Internal error",
    "xc: error: Error when reading batch size (0 = Success): Internal error",
    "xc: error: error when buffering batch, finishing (0 = Success): Internal error",
]


def feed(
    data: bytes, *, linger: float = 0.0
) -> tuple[socket.socket, threading.Thread, threading.Event]:
    """A socket delivering ``data``; the peer stays open up to ``linger`` s (until
    the returned event is set) before closing."""
    a, b = socket.socketpair()
    done = threading.Event()

    def send() -> None:
        try:
            a.sendall(data)
            done.wait(linger)
        except OSError:
            pass
        finally:
            a.close()

    t = threading.Thread(target=send, daemon=True)
    t.start()
    return b, t, done


def run(data: bytes, out: Path, gen: str, *, linger: float = 0.0, **kw: object) -> Outcome:
    sock, t, done = feed(data, linger=linger)
    try:
        return restore(ByteSource(sock), generation=gen, out=out, heartbeat=HB, **kw)  # type: ignore[arg-type]
    finally:
        done.set()
        sock.close()
        t.join(5)


def memory(out: Path) -> bytes:
    return (out / "memory").read_bytes()


def state(out: Path) -> dict[str, object]:
    return json.loads((out / "domain.json").read_text())  # type: ignore[no-any-return]


# --- plain streams -------------------------------------------------------------------


@pytest.mark.parametrize("guest", ["pv", "hvm"])
@pytest.mark.parametrize("gen", ["xen-4.1", "xen-4.3.1", "xen-4.3.2", "xen-4.4", "xen-4.5"])
def test_minus9_stream_is_ok0_for_every_receiver_that_knows_it(
    tmp_path: Path, gen: str, guest: str
) -> None:
    cps = [{1: b"\x11" * PAGE, 3: b"\x33" * PAGE}]
    data = build(guest, cps, last=True, trailer=b"Qemu junk the receiver never reads")
    r = run(data, tmp_path / "d", gen)
    assert (r.ok, r.rc, r.committed_checkpoint, r.bytes_past_image) == (True, 0, 0, 0)
    assert r.messages == []
    assert memory(tmp_path / "d") == expected_memory(cps, 0)
    st = state(tmp_path / "d")
    assert st["guest"] == guest and st["p2m_size"] == P2M and st["receiver"] == gen


@pytest.mark.parametrize("guest", ["pv", "hvm"])
def test_r_pre_dies_at_minus9(tmp_path: Path, guest: str) -> None:
    data = build(guest, [{1: bytes(PAGE)}], last=True)
    r = run(data, tmp_path / "d", "xen-4.0")
    assert (r.ok, r.rc, r.domain_destroyed, r.committed_checkpoint) == (False, 1, True, None)
    assert r.messages == [
        "ERROR Internal error: Max batch size exceeded (-9). Giving up.",
        "ERROR Internal error: Error when reading batch",
    ]
    assert isinstance(r.error, StreamMalformed) and r.error.value == -9
    assert not (tmp_path / "d").exists()
    assert list(tmp_path.iterdir()) == []  # no temporary left either


def test_r_pre_dies_at_first_unknown_hvm_param(tmp_path: Path) -> None:
    data = build("hvm", [{1: bytes(PAGE)}], hvm_params={F.XC_SAVE_ID_HVM_CONSOLE_PFN: 9})
    r = run(data, tmp_path / "d", "xen-4.0")
    assert r.messages[0] == "ERROR Internal error: Max batch size exceeded (-8). Giving up."
    assert not r.ok


def test_no_minus9_eof_r_bug_is_ok1(tmp_path: Path) -> None:
    cps = [{2: b"\x22" * PAGE}]
    r = run(build("pv", cps), tmp_path / "d", "xen-4.3.1")
    assert (r.ok, r.rc, r.committed_checkpoint, r.bytes_past_image) == (True, 0, 0, 0)
    assert r.messages == EOF_LINES
    assert isinstance(r.error, StreamTruncated)
    assert memory(tmp_path / "d") == expected_memory(cps, 0)


def test_no_minus9_eof_r_pre_logs_plain_errors(tmp_path: Path) -> None:
    r = run(build("pv", [{2: bytes(PAGE)}]), tmp_path / "d", "xen-4.0")
    assert r.ok
    assert r.messages == [
        "ERROR Internal error: Error when reading batch size",
        "ERROR Internal error: error when buffering batch, finishing",
    ]


def test_rdexact_wording_from_433(tmp_path: Path) -> None:
    r = run(build("pv", [{2: bytes(PAGE)}]), tmp_path / "d", "xen-4.3.3", checkpointed=1)
    assert r.messages[1] == "xc: error: rdexact failed (read rc: 0, errno: 0): Internal error"


def test_r_fix_cs0_never_reads_past_the_tail(tmp_path: Path) -> None:
    data = build("hvm", [{2: bytes(PAGE)}], qemu=None, trailer=XENSERVER_QEMU)
    r = run(data, tmp_path / "d", "xen-4.3.2", toolstack="xenserver-classic")
    assert (r.ok, r.bytes_past_image, r.messages) == (True, 0, [])
    assert state(tmp_path / "d")["checkpointed_stream"] == 0
    # The toolstack's own QEMU record is part of the domain like libxc-read ones.
    assert (tmp_path / "d" / "qemu").read_bytes() == F.QEMU_MAGIC + bytes(12)
    assert state(tmp_path / "d")["qemu"] == {
        "signature": F.XENSERVER_QEMU_SIG.decode(),
        "length": 16,
    }


def test_foreign_trailer_is_eaten_by_r_bug(tmp_path: Path) -> None:
    """The seed's story: XenServer-classic QEMU record after an S-pre HVM image (§12 EAT)."""
    data = build("hvm", [{2: bytes(PAGE)}], qemu=None, trailer=XENSERVER_QEMU)
    r = run(data, tmp_path / "d", "xen-4.3.1", toolstack="xenserver-classic")
    assert r.rc == 0 and not r.ok and r.domain_destroyed
    assert r.bytes_past_image == 4
    assert r.messages[:2] == [
        "xc: error: Max batch size exceeded (1970103633). Giving up.: Internal error",
        "xc: error: error when buffering batch, finishing (90 = Message too long): Internal error",
    ]
    assert r.toolstack_error is not None and "signature" in r.toolstack_error
    assert not (tmp_path / "d").exists()


def test_r_fix44_destroys_after_completion(tmp_path: Path) -> None:
    r = run(build("pv", [{2: bytes(PAGE)}]), tmp_path / "d", "xen-4.4", checkpointed=1)
    assert (r.ok, r.rc, r.domain_destroyed) == (False, 1, True)
    assert r.messages == [m.replace("read_exact_timed", "rdexact") for m in EOF_LINES]
    assert not (tmp_path / "d").exists()


def test_quiet_peer_hits_the_heartbeat(tmp_path: Path) -> None:
    t0 = time.monotonic()
    r = run(build("pv", [{2: bytes(PAGE)}]), tmp_path / "d", "xen-4.3.1", linger=3.0)
    assert time.monotonic() - t0 >= HB
    assert r.ok and isinstance(r.error, StreamTimeout)
    assert r.messages == [
        "xc: error: read_exact_timed failed (select returned 0): Internal error",
        "xc: error: Error when reading batch size (110 = Connection timed out): Internal error",
        "xc: error: error when buffering batch, finishing (110 = Connection timed out): "
        "Internal error",
    ]


# --- Remus -----------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("guest", ["pv", "hvm"])
@pytest.mark.parametrize(
    ("gen", "kw", "committed"),
    [
        ("xen-4.0", {}, 2),
        ("xen-4.3.1", {}, 2),
        ("xen-4.3.2", {"toolstack": "xend"}, 2),
        ("xen-4.5", {"toolstack": "xl-4.4", "checkpointed": 1}, 2),
        ("xen-4.3.2", {"toolstack": "libxl-4.3.2"}, 0),  # R-EARLY
    ],
)
def test_remus_commits_the_last_complete_checkpoint(
    tmp_path: Path, gen: str, kw: dict[str, object], committed: int, guest: str, compress: bool
) -> None:
    cps = remus_checkpoints(3)
    qemu = F.QEMU_SIG_REMUS
    r = run(build(guest, cps, compress=compress, qemu=qemu), tmp_path / "d", gen, **kw)
    if compress and gen == "xen-4.0":  # -13 is unknown to 4.0: DIE in checkpoint 1
        assert not r.ok and r.messages[0] == (
            "ERROR Internal error: Max batch size exceeded (-13). Giving up."
        )
        return
    assert r.ok and r.committed_checkpoint == committed
    assert memory(tmp_path / "d") == expected_memory(cps, committed)
    st = state(tmp_path / "d")
    assert st["committed_checkpoint"] == committed
    if guest == "pv":
        assert (tmp_path / "d" / "shared_info").read_bytes() == bytes([committed + 1]) * PAGE
    else:
        assert (tmp_path / "d" / "hvm_context").read_bytes() == bytes([committed + 1]) * 64


def test_remus_on_44_destroys_the_backup(tmp_path: Path) -> None:
    r = run(build("pv", remus_checkpoints(3)), tmp_path / "d", "xen-4.4", checkpointed=1)
    assert (r.ok, r.rc, r.domain_destroyed) == (False, 1, True)
    assert r.checkpoints_complete == 3
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("guest", ["pv", "hvm"])
def test_partial_checkpoint_is_dropped(tmp_path: Path, guest: str) -> None:
    cps = remus_checkpoints(3)
    full = build(guest, cps, qemu=F.QEMU_SIG_REMUS)
    two = len(build(guest, cps[:2], qemu=F.QEMU_SIG_REMUS))
    cut = full[: two + 40]  # inside checkpoint 3's first batch
    r = run(cut, tmp_path / "d", "xen-4.3.1")
    assert r.ok and r.committed_checkpoint == 1
    assert r.bytes_past_image == 40
    assert memory(tmp_path / "d") == expected_memory(cps, 1)
    assert r.messages[-1] == (
        "xc: error: error when buffering batch, finishing (0 = Success): Internal error"
    )


def test_remus_quiet_gap_fails_over(tmp_path: Path) -> None:
    cps = remus_checkpoints(2)
    r = run(build("pv", cps), tmp_path / "d", "xen-4.3.1", linger=3.0)
    assert r.ok and r.committed_checkpoint == 1 and isinstance(r.error, StreamTimeout)


# --- hostile and malformed input ----------------------------------------------------------


def _first_batch_header(data: bytes, guest: str) -> int:
    """Offset of the first chunk header of a stream built by ``build``."""
    if guest == "hvm":
        return 8
    return 8 + 8 + 4 + 8 + F.VCPU_CONTEXT_SIZE_64 + 8 + 8


@pytest.mark.parametrize(
    ("patch", "first"),
    [
        (struct.pack("<i", 2000), "Max batch size exceeded (2000). Giving up."),
        (struct.pack("<i", -40), "Max batch size exceeded (-40). Giving up."),
        (struct.pack("<iQ", 1, P2M + 5), "pfn out of range"),
        (struct.pack("<iQ", 1, 0x5 << 28 | 3), "Bogus page type 50000000 page table is out of"),
        (struct.pack("<ii", -2, 5000), "Error when reading max_vcpu_id"),
    ],
)
def test_hostile_first_checkpoint_fails_cleanly(tmp_path: Path, patch: bytes, first: str) -> None:
    data = bytearray(build("pv", [{1: bytes(PAGE)}], last=True))
    at = _first_batch_header(bytes(data), "pv")
    data[at : at + len(patch)] = patch
    r = run(bytes(data), tmp_path / "d", "xen-4.3.1")
    assert not r.ok and r.rc == 1 and r.error is not None
    assert any(first in m for m in r.messages), r.messages
    assert not (tmp_path / "d").exists()


def test_hvm_context_length_that_lies(tmp_path: Path) -> None:
    data = bytearray(build("hvm", [{1: bytes(PAGE)}], last=True, qemu=None))
    at = len(data) - 64 - 4
    data[at : at + 4] = struct.pack("<I", 0xFFFFFFF0)
    r = run(bytes(data), tmp_path / "d", "xen-4.3.1")
    assert not r.ok
    assert r.messages[-2:] == [
        "xc: error: Error reading HVM params (0 = Success): Internal error",
        "xc: error: error buffering image tail: Internal error",
    ]


def test_huge_p2m_size_is_refused_without_allocating(tmp_path: Path) -> None:
    data = bytearray(build("hvm", [{1: bytes(PAGE)}], last=True))
    data[0:8] = struct.pack("<Q", 1 << 29)
    r = run(bytes(data), tmp_path / "d", "xen-4.3.1")
    assert not r.ok and r.messages == ["xc: error: memory alloc failed: Internal error"]


def test_invalid_qemu_signature(tmp_path: Path) -> None:
    data = build("hvm", [{1: bytes(PAGE)}], last=True, qemu=None) + b"NotAQemuSignatureAtAll"
    r = run(data, tmp_path / "d", "xen-4.3.1")
    assert not r.ok
    assert r.messages[0] == (
        "xc: error: Invalid QEMU signature: NotAQemuSignatureAtA: Internal error"
    )


def test_toolstack_chunk_without_callback_fails_hvm_finish(tmp_path: Path) -> None:
    from xlpy.stream.legacy.records import Toolstack
    from xlpy.stream.legacy.writer import encode

    chunk = encode([Toolstack(blob=struct.pack("<II", 1, 0))])
    data = bytearray(build("hvm", [{1: bytes(PAGE)}], last=True))
    at = 8
    data[at:at] = chunk
    r = run(bytes(data), tmp_path / "d", "xen-4.3.1")
    assert r.messages == [
        "xc: error: toolstack data available but no callback provided: Internal error"
    ]
    r = run(bytes(data), tmp_path / "e", "xen-4.3.1", toolstack="xend")
    assert not r.ok
    ok = run(bytes(data), tmp_path / "f", "xen-4.3.2", toolstack="libxl-4.3.2")
    assert ok.ok and (tmp_path / "f" / "toolstack").read_bytes() == struct.pack("<II", 1, 0)


def test_usage_errors(tmp_path: Path) -> None:
    data = build("pv", [{1: bytes(PAGE)}], last=True)
    with pytest.raises(UsageError):
        run(data, tmp_path / "a", "xen-9.9")
    with pytest.raises(UsageError):
        run(data, tmp_path / "b", "xen-4.3.1", checkpointed=1)
    with pytest.raises(UsageError):
        run(data, tmp_path / "c", "xen-4.3.2", toolstack="xend", checkpointed=0)
    (tmp_path / "d").mkdir()
    with pytest.raises(UsageError):
        run(data, tmp_path / "d", "xen-4.3.1")


def test_r_pre_does_not_read_xsave_records(tmp_path: Path) -> None:
    """A 4.1 xend-Remus PV stream from an xsave host: 4.0 skips "xcnt" and desyncs (§12)."""
    import io as _io

    from xlpy.guest import GuestSpec
    from xlpy.stream.legacy.senders import SenderProfile, expected_memory, generate

    prof = SenderProfile(sender="xen-4.1", toolstack="xend", mode="remus", checkpoints=2)
    spec = GuestSpec(kind="pv", pages=40, seed=2, vcpus=1, xsave=True)
    buf = _io.BytesIO()
    generate(prof, spec, buf)
    good = run(buf.getvalue(), tmp_path / "ok", "xen-4.1")
    assert good.ok and good.committed_checkpoint == 1
    bad = run(buf.getvalue(), tmp_path / "d", "xen-4.0")
    # Garbage or death: never the sender's last checkpoint.
    from xlpy.guest import Guest

    final = Guest(spec).shared_info(2)
    assert (tmp_path / "ok" / "shared_info").read_bytes() == final
    assert not bad.ok or (tmp_path / "d" / "shared_info").read_bytes() != final
    mem = memory(tmp_path / "ok")
    for pfns, pages in expected_memory(prof, spec):
        for pfn, page_ in zip(pfns.tolist(), pages, strict=True):
            assert mem[pfn * PAGE : (pfn + 1) * PAGE] == page_.tobytes()


def test_hvm_finish_clears_magic_and_console_pages(tmp_path: Path) -> None:
    cps = [{p: bytes([p]) * PAGE for p in (1, 5, 13, 14)}]
    data = build("hvm", cps, last=True, hvm_params={F.XC_SAVE_ID_HVM_CONSOLE_PFN: 5})
    r = run(data, tmp_path / "d", "xen-4.3.1")
    assert r.ok
    mem = memory(tmp_path / "d")
    assert mem[PAGE : 2 * PAGE] == bytes([1]) * PAGE
    for pfn in (5, 13, 14):
        assert mem[pfn * PAGE : (pfn + 1) * PAGE] == bytes(PAGE)
    st = state(tmp_path / "d")
    assert st["zeroed_pfns"] == [5, 13, 14, 15]
    assert st["hvm_params"]["console_pfn"] == 5  # type: ignore[index]


@pytest.mark.parametrize(
    ("gen", "nibble", "ok"),
    [
        ("xen-4.0", 0xE, False),
        ("xen-4.1", 0xE, False),  # XALLOC arrived in 4.2.0 (f35c8f6857)
        ("xen-4.2", 0xE, True),
        ("xen-4.2", 0xD, False),  # BROKEN arrived in 4.3.0 (b7a98e60d4)
        ("xen-4.3.0", 0xD, True),
        ("xen-4.5", 0xD, True),
    ],
)
def test_dataless_page_types_per_generation(
    tmp_path: Path, gen: str, nibble: int, ok: bool
) -> None:
    """A receiver that does not know XALLOC/BROKEN reads a page for it and rejects its type."""
    from xlpy.stream.legacy.records import PageBatch
    from xlpy.stream.legacy.writer import encode

    ent = struct.pack("<QQ", 1, (nibble << 28) | 2)
    batch = encode([PageBatch(width=8, entries=ent, data=b"\x01" * PAGE)])
    base = build("hvm", [{p: b"\x07" * PAGE for p in (3, 4, 5)}], last=True)
    data = base[:8] + batch + base[8:]  # after the 8-byte p2m_size header
    r = run(data, tmp_path / "d", gen, toolstack="xend" if gen == "xen-4.0" else "xc_restore")
    assert r.ok is ok, r.messages
    if not ok:
        bogus = (nibble << 28) & F.XEN_DOMCTL_PFINFO_LTABTYPE_MASK
        want = f"Bogus page type {bogus:x} page table is out of range: i=1 p2m_size={P2M}"
        assert any(want in m for m in r.messages), r.messages
    elif nibble == 0xD:
        assert state(tmp_path / "d")["broken_pfns"] == [2]


def _cut_in_toolstack(into: int) -> bytes:
    """An HVM stream whose -18 chunk (8-byte blob) is cut ``into`` bytes after its id."""
    from xlpy.stream.legacy.records import Toolstack
    from xlpy.stream.legacy.writer import encode

    chunk = encode([Toolstack(blob=struct.pack("<II", 1, 0))])
    data = build("hvm", [{1: bytes(PAGE)}], last=True)
    return data[:8] + chunk[: 4 + into]


EOF_PAIR = EOF_LINES[:2]
RDEXACT_PAIR = [EOF_LINES[0], EOF_LINES[1].replace("read_exact_timed", "rdexact")]


@pytest.mark.parametrize(
    ("into", "gen", "lines"),
    [
        # 4.4+ checks both reads (f46fa80ec4, xc_domain_restore.c in 4.4.0).
        (
            2,
            "xen-4.4",
            [
                *RDEXACT_PAIR,
                "xc: error: error read toolstack id size (0 = Success): Internal error",
            ],
        ),
        (
            6,
            "xen-4.5",
            [*RDEXACT_PAIR, "xc: error: error read toolstack id (0 = Success): Internal error"],
        ),
        # <= 4.3.x ignores them: length (if cut), blob, then the next chunk header fail.
        (2, "xen-4.3.1", [*EOF_PAIR, *EOF_PAIR, *EOF_PAIR, EOF_LINES[2]]),
        (0, "xen-4.3.1", [*EOF_PAIR, *EOF_PAIR, EOF_LINES[2]]),  # length 0: no blob read
        (6, "xen-4.3.1", [*EOF_PAIR, *EOF_PAIR, EOF_LINES[2]]),
    ],
)
def test_cut_toolstack_chunk_messages(
    tmp_path: Path, into: int, gen: str, lines: list[str]
) -> None:
    r = run(_cut_in_toolstack(into), tmp_path / "d", gen, toolstack="libxl-4.3.2")
    assert not r.ok
    assert r.messages == [
        *lines,
        "xc: error: Error when reading batch (0 = Success): Internal error",
    ]


@pytest.mark.parametrize("name", ["2-64-minus-1", "outbuf"])
def test_compressed_length_beyond_the_senders_buffer_fails_the_realloc(
    tmp_path: Path, name: str
) -> None:
    data = (TESTS / "streams" / f"compressed-data-length-{name}.bin").read_bytes()
    r = run(data, tmp_path / "d", "xen-4.3.1", guest="hvm")
    assert not r.ok and r.domain_destroyed
    assert isinstance(r.error, StreamMalformed) and r.error.field == "compressed_data.length"
    assert r.messages == [
        "xc: error: Could not (re)allocate compression buffer: Internal error",
        "xc: error: Error when reading batch (12 = Cannot allocate memory): Internal error",
    ]
