"""The toolstack decision (operation → stream type) and its safety rules per libxc release.

Each rule also gets a run on the simulated backend showing the outcome it prevents, and
the framing rule is shown turning the 4.3.1 EAT cell into a restore that eats nothing.
"""

from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path

import pytest

from tests.helpers.legacy_streams import PAGE, XENSERVER_QEMU, build, remus_checkpoints
from tests.helpers.libxc_stand_in import feed
from xlpy.backends.libxc import secondary_callbacks
from xlpy.binding.detect import Abi
from xlpy.binding.generations import by_name
from xlpy.decision import OperationRefused, check_operation
from xlpy.errors import RestoreRefused, UsageError
from xlpy.operation import (
    RULES,
    Operation,
    StreamType,
    Verdict,
    decide,
    release_span,
    stream_type_for,
)
from xlpy.receiver import restore
from xlpy.receiver.domains import Outcome
from xlpy.stream.forward import Forwarder
from xlpy.stream.legacy.reader import LegacyReader
from xlpy.stream.source import ByteSource

R, M, RE, C = "restore", "migrate-receive", "remus-receive", "colo-receive"
ALLOW, FRAME, REFUSE, IMPOSSIBLE = "allow", "frame", "refuse", "impossible"


def test_operation_decides_the_stream_type(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="xlpy.toolstack")
    assert [stream_type_for(op) for op in Operation] == [0, 0, 1, 2]
    assert stream_type_for("remus-receive") is StreamType.REMUS
    assert "stream type REMUS: operation is remus-receive" in caplog.text
    assert [int(s) for s in StreamType] == [0, 1, 2]  # libxc's values


def test_the_api_takes_no_sender_version() -> None:
    assert list(inspect.signature(stream_type_for).parameters) == ["operation"]
    assert list(inspect.signature(check_operation).parameters) == [
        "operation",
        "release",
        "force",
    ]


def test_unknown_operation_and_release() -> None:
    with pytest.raises(ValueError, match="unknown operation"):
        stream_type_for("checkpoint")
    with pytest.raises(UsageError, match="not a Xen release"):
        check_operation(R, "bookworm")


TABLE = {
    # release: (restore, migrate-receive, remus-receive, colo-receive)
    "4.0": (FRAME, FRAME, REFUSE, IMPOSSIBLE),
    "4.1": (FRAME, FRAME, REFUSE, IMPOSSIBLE),
    "4.2": (FRAME, FRAME, REFUSE, IMPOSSIBLE),
    "4.3.1": (FRAME, FRAME, REFUSE, IMPOSSIBLE),
    "xen-4.3.1": (FRAME, FRAME, REFUSE, IMPOSSIBLE),
    "4.3": (FRAME, FRAME, REFUSE, IMPOSSIBLE),  # 4.3.0/4.3.1 or 4.3.2+: strictest wins
    "4.3.2": (ALLOW, ALLOW, ALLOW, IMPOSSIBLE),
    "4.4": (ALLOW, ALLOW, REFUSE, IMPOSSIBLE),
    "4.4.4": (ALLOW, ALLOW, REFUSE, IMPOSSIBLE),
    "4.3.2-4.4": (ALLOW, ALLOW, REFUSE, IMPOSSIBLE),
    "4.5": (ALLOW, ALLOW, ALLOW, IMPOSSIBLE),
    "4.6": (ALLOW, ALLOW, ALLOW, IMPOSSIBLE),
    "4.7": (ALLOW, ALLOW, ALLOW, ALLOW),
    "4.14-4.21": (ALLOW, ALLOW, ALLOW, ALLOW),
    "4.17": (ALLOW, ALLOW, ALLOW, ALLOW),
    "4.22": (ALLOW, ALLOW, ALLOW, ALLOW),
}


def _verdict(operation: str, release: str) -> str:
    return decide(operation, release).verdict.value


@pytest.mark.parametrize("release", list(TABLE))
def test_decision_table(release: str) -> None:
    assert tuple(_verdict(op, release) for op in (R, M, RE, C)) == TABLE[release]


@pytest.mark.parametrize("release", list(TABLE))
def test_check_operation_raises_exactly_for_refusals(release: str) -> None:
    for op, expected in zip((R, M, RE, C), TABLE[release], strict=True):
        if expected in (REFUSE, IMPOSSIBLE):
            with pytest.raises(RestoreRefused, match=op):
                check_operation(op, release)
        else:
            assert check_operation(op, release).verdict.value == expected


def test_every_rule_is_reachable() -> None:
    hits = {r.name for r in RULES}
    for rule in RULES:
        first = ".".join(map(str, rule.first))
        op = {0: R, 1: RE, 2: C}[rule.stream_type]
        assert _verdict(op, first) == rule.verdict.value, rule.name
        hits.discard(rule.name)
    assert not hits


def test_force_overrides_refusal_but_not_impossibility(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="xlpy.toolstack")
    with pytest.raises(OperationRefused, match="destroys the backup") as refused:
        check_operation(RE, "4.4")
    assert refused.value.decision == decide(RE, "4.4")
    d = check_operation(RE, "4.4", force=True)
    # The original verdict stays: a report shows both the refusal and the forcing.
    assert (d.verdict, d.forced, d.stream_type) == (Verdict.REFUSE, True, StreamType.REMUS)
    assert "forced by the caller" in caplog.text
    d = check_operation(RE, "4.3.1", force=True)
    assert d.forced and not d.framed  # framing would cut a Remus stream short
    with pytest.raises(RestoreRefused, match=r"COLO needs libxc 4\.7"):
        check_operation(C, "4.6", force=True)


def test_release_spans() -> None:
    assert release_span("4.4") == ((4, 4, 0), (4, 4, 999))
    assert release_span("xen-4.3.1") == ((4, 3, 1), (4, 3, 1))
    assert release_span("4.2-4.3.1") == ((4, 2, 0), (4, 3, 1))
    assert release_span("4.0") == ((4, 0, 0), (4, 0, 999))


# --- what each rule prevents, on the simulated backend -------------------------------


def _sim(fd: int, out: Path, gen: str, **kw: object) -> Outcome:
    try:
        return restore(ByteSource(fd), generation=gen, out=out, heartbeat=0.2, **kw)  # type: ignore[arg-type]
    finally:
        os.close(fd)


def test_framing_turns_the_4_3_1_eat_cell_into_success(tmp_path: Path) -> None:
    data = build("pv", [{2: bytes(PAGE)}], qemu=None, trailer=XENSERVER_QEMU)
    eaten = _sim(feed(data), tmp_path / "direct", "xen-4.3.1")
    assert eaten.bytes_past_image == 4  # "Qemu" read as a batch size: EAT
    assert "Max batch size exceeded (1970103633)" in eaten.messages[0]

    assert check_operation(R, "4.3.1").framed
    src = feed(data)
    fwd = Forwarder(src)
    # The forwarder owns its pipe: result() closes it.
    framed = restore(ByteSource(fwd.read_fd), generation="xen-4.3.1", out=tmp_path / "framed")
    done = fwd.result(timeout=10)
    rest = done.rest + os.read(src, 1 << 16)
    os.close(src)
    assert framed.ok and framed.rc == 0 and framed.bytes_past_image == 0
    assert framed.committed_checkpoint == 0
    assert done.image_bytes + len(rest) == len(data)
    assert rest == XENSERVER_QEMU  # handed back whole: the toolstack reads its record
    qemu = LegacyReader(ByteSource(feed(rest)), guest="hvm").read_qemu_record()
    assert qemu is not None and qemu.signature.startswith(b"QemuDeviceModelRecord")


def test_framing_forwards_exactly_the_image(tmp_path: Path) -> None:
    for guest in ("pv", "hvm"):
        image = build(guest, [{2: bytes(PAGE)}])
        src = feed(image + b"after")
        fwd = Forwarder(src)
        got = bytearray()
        while chunk := os.read(fwd.read_fd, 1 << 16):
            got += chunk
        done = fwd.result(timeout=10)
        os.close(src)
        assert bytes(got) == image and done.rest == b"after", guest


def test_remus_on_4_4_would_destroy_the_backup(tmp_path: Path) -> None:
    data = build("pv", remus_checkpoints(3))
    on44 = _sim(feed(data), tmp_path / "a", "xen-4.4", checkpointed=1)
    assert on44.domain_destroyed and not on44.ok  # R-DIE44
    on45 = _sim(feed(data), tmp_path / "b", "xen-4.5", checkpointed=1)
    assert on45.ok and on45.committed_checkpoint == 2
    with pytest.raises(RestoreRefused):
        check_operation(RE, "4.4")
    assert check_operation(RE, "4.5").verdict is Verdict.ALLOW


def test_remus_without_argument_cannot_be_told(tmp_path: Path) -> None:
    # 4.3.1 has no checkpointed_stream: the toolstack's decision cannot reach libxc.
    with pytest.raises(UsageError, match="no checkpointed_stream argument"):
        _sim(feed(b""), tmp_path / "a", "xen-4.3.1", checkpointed=1)
    plain = build("pv", [{2: bytes(PAGE)}], last=True)  # an S-post plain stream
    r = _sim(feed(plain), tmp_path / "b", "xen-4.3.1")
    assert r.ok and r.committed_checkpoint == 0 and r.checkpointed is None
    with pytest.raises(RestoreRefused, match="cannot tell it this is Remus"):
        check_operation(RE, "4.3.1")


def test_colo_before_4_7_has_no_stream_type() -> None:
    for gen in ("4.3.2-4.4", "4.5-4.6"):
        assert StreamType.COLO not in by_name(gen).stream_types
    assert StreamType.COLO in by_name("4.7-4.9").stream_types
    with pytest.raises(RestoreRefused):
        check_operation(C, "4.5")


@pytest.mark.parametrize(
    ("gen", "release", "slots"),
    [
        ("4.3.2-4.4", "4.3.2", set()),  # libxc handles Remus itself: no slot
        ("4.5-4.6", "4.5", set()),  # slot 0 is toolstack_restore in 4.5
        ("4.5-4.6", "4.6", {"checkpoint"}),
        ("4.14-4.21", "4.17", {"checkpoint"}),
    ],
)
def test_secondary_callbacks(gen: str, release: str, slots: set[str]) -> None:
    abi = Abi("libxenguest", "libxenguest.so.4", None, by_name(gen), release, overridden=False)
    callbacks = secondary_callbacks(RE, abi)
    assert set(callbacks) == slots
    if slots:
        assert callbacks["checkpoint"]() == 1  # XGR_CHECKPOINT_SUCCESS: keep receiving
    assert secondary_callbacks(M, abi) == {}
    with pytest.raises(UsageError, match="no default COLO secondary"):
        secondary_callbacks(C, abi)
