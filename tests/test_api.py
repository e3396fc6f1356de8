"""``xlpy.restore``: the operation decides, the rules hold, both backends answer alike.

The decision table runs through the public entry point on the simulated backend, so
each rule shows the outcome it prevents (EAT, R-DIE44) and the outcome it allows
(R-OK, framed OK); the libxc backend runs against a stand-in libxenguest (framing
through a real pipe) and against Debian's real 4.17 library (no hypervisor here).
"""

from __future__ import annotations

import io
import logging
import os
import pydoc
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import xlpy
from tests.helpers.legacy_streams import (
    XENSERVER_QEMU,
    build,
    expected_memory,
    page,
    remus_checkpoints,
)
from tests.helpers.libxc_stand_in import build_stand_in, feed, read_report
from tests.helpers.paths import REPO
from xlpy.backends import RestoreResult
from xlpy.backends.sim import DEFAULT_SIM_RELEASE, default_sim_release
from xlpy.binding.detect import ENV_GENERATION, ENV_LIBRARY
from xlpy.binding.generations import by_name
from xlpy.errors import RestoreRefused, StreamTruncated, UsageError, XenError, XenUnavailable
from xlpy.guest import GuestSpec
from xlpy.operation import Operation, StreamType, Verdict
from xlpy.receiver.domains import Outcome
from xlpy.stream.legacy.senders import SenderProfile, generate

R, M, RE, C = "restore", "migrate-receive", "remus-receive", "colo-receive"


def _sim(data: bytes, out: Path, gen: str, op: str, **kw: object) -> RestoreResult:
    fd = feed(data)
    try:
        return xlpy.restore(fd, operation=op, out=out, release=gen, heartbeat=0.2, **kw)  # type: ignore[arg-type]
    finally:
        os.close(fd)


PLAIN_CPS = [{1: page(0, 1), 4: page(0, 4)}]

# receiver generation: (restore, migrate-receive, remus-receive, colo-receive) through
# xlpy.restore on the sim: "framed"/"ok" restored, "refused" RestoreRefused.
SIM_TABLE = {
    "xen-4.0": ("framed", "framed", "refused", "refused"),
    "xen-4.1": ("framed", "framed", "refused", "refused"),
    "xen-4.2": ("framed", "framed", "refused", "refused"),
    "xen-4.3.1": ("framed", "framed", "refused", "refused"),
    "xen-4.3.2": ("ok", "ok", "ok", "refused"),
    "xen-4.4": ("ok", "ok", "refused", "refused"),
    "xen-4.5": ("ok", "ok", "ok", "refused"),
}

#: Generations with the ``checkpointed_stream`` argument.
TOLD = {"xen-4.3.2", "xen-4.4", "xen-4.5"}


@pytest.mark.parametrize("gen", list(SIM_TABLE))
def test_decision_table_through_the_entry_point(
    gen: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="xlpy.toolstack")
    plain = build("pv", PLAIN_CPS)
    remus = build("pv", remus_checkpoints(2))
    for op, want in zip((R, M, RE, C), SIM_TABLE[gen], strict=True):
        data = remus if op == RE else plain
        out = tmp_path / op
        if want == "refused":
            with pytest.raises(RestoreRefused, match=op):
                _sim(data, out, gen, op)
            assert not out.exists()
            continue
        r = _sim(data, out, gen, op)
        assert r.ok, (gen, op, r.messages)
        assert r.operation is Operation(op) and r.backend == "sim"
        assert r.framed == (want == "framed")
        st = StreamType.REMUS if op == RE else StreamType.PLAIN
        assert r.stream_type is st
        # Told where the generation takes the argument, never otherwise.
        assert r.sim is not None
        assert r.sim.checkpointed == (int(st) if gen in TOLD else None)
        last = 1 if op == RE else 0
        cps = remus_checkpoints(2) if op == RE else PLAIN_CPS
        assert r.committed_checkpoint == last
        assert (out / "memory").read_bytes() == expected_memory(cps, last)
    assert f"stream type REMUS: operation is {RE}" in caplog.text


@pytest.mark.parametrize("guest", ["pv", "hvm"])
def test_framing_turns_the_4_3_1_eat_cell_into_success(guest: str, tmp_path: Path) -> None:
    # An old-sender stream (no -9) with XenServer-classic's QEMU record after the image.
    data = build(guest, PLAIN_CPS, qemu=None, trailer=XENSERVER_QEMU)
    ts = "xenserver-classic"
    raw = xlpy_receiver_restore(data, tmp_path / "raw", ts)
    assert raw.bytes_past_image == 4  # EAT: "Qemu" read as a batch size...
    assert raw.ok == (guest == "pv")  # ...so an HVM toolstack finds no record and fails
    assert "Max batch size exceeded (1970103633)" in raw.messages[0]

    r = _sim(data, tmp_path / "framed", "xen-4.3.1", R, toolstack=ts)
    assert r.ok and r.framed and r.decision.verdict is Verdict.FRAME
    assert r.bytes_past_image == 0 and r.committed_checkpoint == 0
    assert r.rest == XENSERVER_QEMU  # handed back whole, for the toolstack to read
    assert r.image_bytes is not None and r.image_bytes + len(r.rest) == len(data)
    assert (tmp_path / "framed" / "memory").read_bytes() == expected_memory(PLAIN_CPS, 0)
    assert r.sim is not None and r.sim.toolstack == ts


def xlpy_receiver_restore(data: bytes, out: Path, ts: str) -> Outcome:
    from xlpy.receiver import restore

    fd = feed(data)
    try:
        return restore(fd, generation="xen-4.3.1", out=out, toolstack=ts, heartbeat=0.2)
    finally:
        os.close(fd)


def test_framed_hvm_with_upstream_qemu_record_and_trailer(tmp_path: Path) -> None:
    # Upstream libxc reads the HVM QEMU record in its tail: it is forwarded, the
    # trailer is not.
    data = build("hvm", PLAIN_CPS, trailer=b"toolstack trailer")
    r = _sim(data, tmp_path / "d", "xen-4.3.1", M)
    assert r.ok and r.framed and r.rest == b"toolstack trailer"
    assert (tmp_path / "d" / "qemu").exists()


def test_rest_from_a_path_is_read_to_the_end(tmp_path: Path) -> None:
    src = tmp_path / "s.img"
    src.write_bytes(build("hvm", PLAIN_CPS, qemu=None, trailer=XENSERVER_QEMU * 300))
    r = xlpy.restore(
        src,
        operation=R,
        out=tmp_path / "d",
        release="xen-4.3.1",
        toolstack="xenserver-classic",
        heartbeat=0.2,
    )
    assert r.ok and r.rest == XENSERVER_QEMU * 300
    with open(src, "rb", buffering=0) as f:  # a file object: the caller reads on
        r = xlpy.restore(
            f,
            operation=R,
            out=tmp_path / "e",
            release="xen-4.3.1",
            toolstack="xenserver-classic",
            heartbeat=0.2,
        )
        assert r.rest + f.read() == XENSERVER_QEMU * 300


def test_remus_on_4_4_refused_and_forced_destroys_the_backup(tmp_path: Path) -> None:
    data = build("pv", remus_checkpoints(3))
    with pytest.raises(RestoreRefused, match="destroys the backup"):
        _sim(data, tmp_path / "a", "xen-4.4", RE)
    forced = _sim(data, tmp_path / "b", "xen-4.4", RE, force=True)
    assert forced.decision.forced and forced.stream_type is StreamType.REMUS
    assert not forced.ok and forced.sim is not None and forced.sim.domain_destroyed  # R-DIE44
    assert not (tmp_path / "b").exists()
    ok = _sim(data, tmp_path / "c", "xen-4.5", RE)
    assert ok.ok and ok.committed_checkpoint == 2  # R-OK
    assert (tmp_path / "c" / "memory").read_bytes() == expected_memory(remus_checkpoints(3), 2)


def test_remus_without_argument_refused_forced_is_not_framed(tmp_path: Path) -> None:
    data = build("pv", remus_checkpoints(3))
    with pytest.raises(RestoreRefused, match="cannot tell it this is Remus"):
        _sim(data, tmp_path / "a", "xen-4.3.1", RE)
    forced = _sim(data, tmp_path / "b", "xen-4.3.1", RE, force=True)
    # Not framed (that would cut the Remus stream after checkpoint 0); R-bug waits on.
    assert forced.ok and not forced.framed and forced.committed_checkpoint == 2


def test_colo_refused_even_forced(tmp_path: Path) -> None:
    from tests.helpers.v2_streams import v2_stream

    colo = v2_stream("remus", "pv", "libxc")  # a checkpointed v2 stream, as COLO sends
    with pytest.raises(RestoreRefused, match=r"COLO needs libxc 4\.7"):
        _sim(colo, tmp_path / "a", "xen-4.5", C, force=True)
    # What it prevents: the closest 4.5 can be told (checkpointed, i.e. Remus) cannot
    # even read the stream, and the secondary is gone.
    closest = _sim(colo, tmp_path / "b", "xen-4.5", RE)
    assert not closest.ok and closest.committed_checkpoint is None
    assert closest.sim is not None and closest.sim.domain_destroyed
    assert _sim(colo, tmp_path / "c", "xen-4.17", C).ok


def test_default_sim_release(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_LIBRARY, str(tmp_path / "libxenguest.so.4.17"))
    assert default_sim_release() == DEFAULT_SIM_RELEASE  # nothing there
    r = _sim(build("pv", PLAIN_CPS), tmp_path / "d", None, R)  # type: ignore[arg-type]
    assert r.ok and r.sim is not None and r.sim.generation == DEFAULT_SIM_RELEASE


def test_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown operation"):
        xlpy.restore(0, operation="checkpoint", out=tmp_path / "a")
    with pytest.raises(UsageError, match="unknown backend"):
        xlpy.restore(0, operation=R, out=tmp_path / "a", backend="qemu")
    with pytest.raises(UsageError, match="out=DIR"):
        xlpy.restore(0, operation=R, domid=3)
    with pytest.raises(UsageError, match="domid=N"):
        xlpy.restore(0, operation=R, backend="libxc", out=tmp_path / "a")
    with pytest.raises(UsageError, match="cannot open"):
        xlpy.restore(tmp_path / "missing", operation=R, out=tmp_path / "a")
    with pytest.raises(UsageError, match="unknown receiver generation"):
        _sim(b"", tmp_path / "a", "xen-9.9", R)


def test_help_documents_the_entry_point() -> None:
    text = pydoc.plain(pydoc.render_doc(xlpy.restore))
    for word in ("remus-receive", "RestoreRefused", "force", "framed", "RestoreResult", "domid"):
        assert word in text, word
    assert "rest" in (RestoreResult.__doc__ or "")


def test_import_xlpy_stays_cheap() -> None:
    code = "import sys, xlpy; print(sorted({'numpy', 'cffi', 'xlpy.api'} & set(sys.modules)))"
    p = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        check=True,
    )
    assert p.stdout.strip() == "[]"


# --- the libxc backend ---------------------------------------------------------------


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4.2 libxenguest stand-in that reads io_fd to EOF (what 4.0-4.3.1 libxc does)."""
    return build_stand_in(by_name("4.2-4.3.1"), tmp_path_factory.mktemp("api-4.2"))


@pytest.mark.parametrize("guest", ["pv", "hvm"])
def test_libxc_backend_frames_and_hands_back(
    guest: str, stand_in: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_LIBRARY, str(stand_in))
    monkeypatch.delenv(ENV_GENERATION, raising=False)
    monkeypatch.setenv("FAKE_REPORT", str(tmp_path / "report"))
    image = build(guest, PLAIN_CPS, qemu=None)
    fd = feed(image + XENSERVER_QEMU)
    try:
        r = xlpy.restore(
            fd, operation=M, backend="libxc", domid=7, guest=guest, toolstack="xenserver-classic"
        )
        rest = r.rest + os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    assert r.ok and r.backend == "libxc" and r.framed and r.domid == 7
    report = read_report(tmp_path / "report")
    assert report["bytes"] == len(image) and report["hvm"] == (guest == "hvm")
    assert rest == XENSERVER_QEMU
    assert r.store_mfn == 0x10000 + len(image) and r.console_mfn == 0x20000 + len(image)
    assert r.libxc is not None and r.libxc.generation == "4.2-4.3.1"
    with pytest.raises(RestoreRefused):
        xlpy.restore(0, operation=RE, backend="libxc", domid=7)


@pytest.mark.xen_tools
def test_libxc_backend_without_hypervisor(
    xen_tools: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib_dirs = xen_tools.lib_dirs  # type: ignore[attr-defined]
    libs = [p / "libxenguest.so.4.17" for p in lib_dirs if (p / "libxenguest.so.4.17").exists()]
    monkeypatch.setenv(ENV_LIBRARY, str(libs[0]))
    monkeypatch.delenv(ENV_GENERATION, raising=False)
    data = build("pv", PLAIN_CPS)
    fd = feed(data)
    try:
        with pytest.raises(XenUnavailable, match="/dev/xen/privcmd") as e:
            xlpy.restore(fd, operation=R, backend="libxc", domid=3)
    finally:
        os.close(fd)
    assert not isinstance(e.value, XenError)  # not a failed restore: no libxc at all


def test_framed_restore_that_libxc_fails_early_neither_raises_nor_hangs(tmp_path: Path) -> None:
    # Far more than a pipe holds: the forwarder is cut off when libxc gives up.
    data = build("hvm", [{p: page(0, p) for p in range(1000)}], p2m_size=1 << 29)
    r = _sim(data, tmp_path / "d", "xen-4.3.1", R)
    assert not r.ok and r.framed and r.rest == b""
    assert r.messages == ("xc: error: memory alloc failed: Internal error",)
    assert not (tmp_path / "d").exists()


def test_framed_restore_of_a_stream_with_last_checkpoint(tmp_path: Path) -> None:
    # An S-post sender's -9: libxc stops after the tail by itself; framing changes nothing
    # but still hands back what follows.
    data = build("pv", PLAIN_CPS, last=True, trailer=b"after")
    r = _sim(data, tmp_path / "d", "xen-4.1", R)
    assert r.ok and r.framed and r.rest == b"after" and r.messages == ()


def test_v2_generation_takes_every_operation(tmp_path: Path) -> None:
    from tests.helpers.v2_streams import v2_stream
    from xlpy import repro

    remus = v2_stream("remus", "pv", "libxc")
    plain = _sim(v2_stream("plain", "pv", "libxc"), tmp_path / "p", "xen-4.17", M)
    assert plain.ok and not plain.framed and plain.sim is not None
    assert plain.sim.checkpointed == StreamType.PLAIN
    # The operation, not the stream, decides: a Remus stream received as a plain
    # migration fails as libxc 4.17 does.
    wrong = _sim(remus, tmp_path / "w", "xen-4.17", M)
    assert not wrong.ok and "Found checkpoint in non-checkpointed stream" in wrong.messages[0]
    for op, st in ((RE, StreamType.REMUS), (C, StreamType.COLO)):
        r = _sim(remus, tmp_path / op, "xen-4.17", op)
        assert r.ok and r.sim is not None and r.sim.checkpointed == st, op
        assert r.committed_checkpoint == repro.REMUS_CHECKPOINTS - 1


def _forwarders() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "xlpy-forwarder"]


def test_framed_restore_of_a_truncated_input_reports_the_input(tmp_path: Path) -> None:
    # The forwarder never passes on a half batch, so libxc only sees its pipe end after
    # the header; the input's own error says where the input really ends.
    data = build("hvm", [{p: page(0, p) for p in range(64)}])
    cut = data[: len(data) // 2]
    r = _sim(cut, tmp_path / "d", "xen-4.3.1", M)
    assert not r.ok and r.framed and isinstance(r.error, StreamTruncated)
    assert f"the stream ends at offset {len(cut)}" in str(r.error)
    assert r.error.field == "batch.pages"
    assert any("0-length read" in m for m in r.messages)  # libxc's own view stays
    assert not (tmp_path / "d").exists()


def test_failed_framed_restore_stops_the_forwarder(tmp_path: Path) -> None:
    # libxc gives up on the header while the source stays open and silent before the
    # tail: the forwarder, waiting on it, must not outlive the call (it would read from
    # whatever file reuses the descriptor number once the caller closed it).
    data = build("hvm", [{p: page(0, p) for p in range(4)}], p2m_size=1 << 29)
    r_fd, w_fd = os.pipe()
    try:
        os.write(w_fd, data[:-8])
        r = xlpy.restore(r_fd, operation=R, out=tmp_path / "d", release="xen-4.3.1")
        assert not r.ok and "memory alloc failed" in r.messages[0]
        assert _forwarders() == []
    finally:
        os.close(w_fd)
        os.close(r_fd)


def _sender_stream(sender: str, toolstack: str) -> bytes:
    profile = SenderProfile(sender=sender, toolstack=toolstack, mode="remus", checkpoints=2)
    out = io.BytesIO()
    generate(profile, GuestSpec(kind="pv", pages=64, seed=1), out)
    return out.getvalue()


# Forced Remus where libxc cannot be told (legacy-stream.md §12, S-post/S-pre Remus rows):
# what the backup does is the sender's doing.  xl 4.3 writes its toolstack chunk (-18)
# into every checkpoint; 4.0 (R-pre) and 4.1 (no -18 yet) die on it and lose the backup,
# while the same receivers take xend 4.0's stream.  4.2-4.3.1 (R-bug) take both senders
# modelled here: there the rule only records that the operation cannot reach libxc.
WITHOUT_ARGUMENT = {
    # receiver: (xl-4.3 sender, xend-4.0 sender) -> None: R-OK, else libxc's error
    "xen-4.0": ("Max batch size exceeded (-18)", None),
    "xen-4.1": ("Max batch size exceeded (-18)", None),
    "xen-4.2": (None, None),
    "xen-4.3.1": (None, None),
}


@pytest.mark.parametrize("gen", list(WITHOUT_ARGUMENT))
def test_remus_without_argument_forced_is_up_to_the_sender(gen: str, tmp_path: Path) -> None:
    senders = (("xen-4.3", "xl"), ("xen-4.0", "xend"))
    for (sender, ts), dies in zip(senders, WITHOUT_ARGUMENT[gen], strict=True):
        data = _sender_stream(sender, ts)
        with pytest.raises(RestoreRefused, match="cannot tell it this is Remus"):
            _sim(data, tmp_path / "refused", gen, RE)
        assert not (tmp_path / "refused").exists()
        out = tmp_path / f"{sender}-{ts}"
        r = _sim(data, out, gen, RE, force=True)
        assert r.decision.forced and r.decision.verdict is Verdict.REFUSE and not r.framed
        if dies is None:
            assert r.ok and r.committed_checkpoint == 1, (gen, sender, r.messages)
        else:  # the backup is lost before its first checkpoint
            assert not r.ok and r.committed_checkpoint is None and not out.exists()
            assert dies in r.messages[0], (gen, sender, r.messages)
    # Told it is Remus, a receiver with the argument takes both senders' streams.
    for sender, ts in senders:
        r = _sim(_sender_stream(sender, ts), tmp_path / f"4.5-{ts}", "xen-4.5", RE)
        assert r.ok and r.committed_checkpoint == 1, (sender, r.messages)
