"""The receiver's diagnosis: each failure signature explained with the run's own numbers.

libxc's lines are pinned elsewhere (test_receiver_messages.py) and must not change; these
tests pin the separate explanation (:mod:`xlpy.receiver.diagnosis`) built from the
outcome: the EAT cell (the offset, ``'Qemu'``, 1970103633, the flag), a stream whose
framing contradicts ``--toolstack``, chunk -18 without a callback, a v2 CHECKPOINT in a
PLAIN stream, and the lines libxc logs at a checkpointed stream's ordinary end.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from tests.helpers.legacy_streams import XENSERVER_QEMU, build, page, remus_checkpoints
from tests.helpers.v2_streams import v2_stream
from xlpy.cli import main as xlpy_main
from xlpy.receiver import restore
from xlpy.receiver.diagnosis import diagnose
from xlpy.receiver.domains import Outcome
from xlpy.stream.legacy import format as F
from xlpy.stream.source import ByteSource

PLAIN = [{2: page(0, 2)}]
#: An old (pre-4.1, no -9) HVM stream with XenServer-classic's QEMU record after the image.
OLD_XENSERVER = build("hvm", PLAIN, qemu=None, trailer=XENSERVER_QEMU)
IMAGE_END = len(OLD_XENSERVER) - len(XENSERVER_QEMU)


def _run(tmp_path: Path, data: bytes, generation: str, **kw: Any) -> Outcome:
    return restore(
        ByteSource(io.BytesIO(data)),
        generation=generation,
        out=tmp_path / "dom",
        heartbeat=0.1,
        **kw,
    )


def _diagnosis(outcome: Outcome, **kw: bool) -> str:
    text = diagnose(outcome, **kw)
    assert text is not None, outcome.messages
    return text


def test_the_eat_cell_says_what_libxc_read_past_its_image(tmp_path: Path) -> None:
    r = _run(tmp_path, OLD_XENSERVER, "xen-4.3.1", toolstack="xenserver-classic")
    assert not r.ok and r.image_end == IMAGE_END and r.eaten == b"Qemu"
    text = _diagnosis(r)
    assert text.startswith("libxc (xen-4.3.1, which waits for another checkpoint")
    assert f"end of its image at offset {IMAGE_END} (0x{IMAGE_END:x})" in text
    assert "the 4 bytes 'Qemu' (51 65 6d 75)" in text
    assert "0x756d6551 little-endian, a page count of 1970103633" in text
    assert "the xenserver-classic toolstack reads after libxc (its QEMU record)" in text
    assert "no LAST_CHECKPOINT chunk (-9" in text
    assert "--operation restore / migrate-receive" in text
    assert "xen-4.3.2 or later, told checkpointed_stream=0" in text
    # libxc's own line is unchanged; the explanation is apart from it.
    assert "xc: error: Max batch size exceeded (1970103633). Giving up.: Internal error" in (
        r.messages
    )
    assert not any("diagnosis" in m or "LAST_CHECKPOINT" in m for m in r.messages)


def test_a_release_told_checkpointed_1_is_told_to_pass_0(tmp_path: Path) -> None:
    r = _run(tmp_path, OLD_XENSERVER, "xen-4.3.2", toolstack="xenserver-classic", checkpointed=1)
    text = _diagnosis(r)
    assert text.startswith("libxc (xen-4.3.2, told checkpointed_stream=1) kept reading")
    assert "Restore it with --checkpointed 0, or --operation restore / migrate-receive" in text


def test_4_4_says_it_destroys_the_domain_on_that_read(tmp_path: Path) -> None:
    r = _run(tmp_path, OLD_XENSERVER, "xen-4.4", toolstack="xenserver-classic", checkpointed=1)
    assert not r.ok and r.rc == 1
    assert "xen-4.4 destroys the domain when that read fails" in _diagnosis(r)


def test_xenserver_framing_without_its_toolstack_names_the_toolstack(tmp_path: Path) -> None:
    r = _run(tmp_path, OLD_XENSERVER, "xen-4.3.1")  # xc_restore: libxc reads a QEMU tail
    assert not r.ok and r.framing == "xenserver-classic"
    assert r.messages[0].startswith("xc: error: Invalid QEMU magic: 0x")
    assert _diagnosis(r) == (
        "the stream's framing is xenserver-classic (as `xlpy inspect` says): its QEMU "
        "record 'QemuDeviceModelRecord\\n' follows libxc's image and is the toolstack's "
        "to read, but the xc_restore toolstack's libxc reads a QEMU record as part of its "
        "tail; pass --toolstack xenserver-classic"
    )


def test_an_upstream_qemu_record_into_xenserver_classic_names_its_writer(
    tmp_path: Path,
) -> None:
    data = build("hvm", PLAIN, last=True, qemu=F.QEMU_SIG_0002)
    r = _run(tmp_path, data, "xen-4.3.1", toolstack="xenserver-classic")
    assert not r.ok and r.toolstack_error is not None
    text = _diagnosis(r)
    assert text.startswith("the stream was written by libxl (xl)")
    assert "QEMU record 'DeviceModelRecord0002'" in text
    assert text.endswith("pass --toolstack xl-4.4")


def test_the_bytes_libxc_ate_count_towards_the_signature(tmp_path: Path) -> None:
    # xend's record, to EOF, after an image without -9: 4.3.1 eats its "Qemu".
    data = build("hvm", PLAIN, qemu=F.QEMU_SIG_TO_EOF)
    r = _run(tmp_path, data, "xen-4.3.1", toolstack="xenserver-classic")
    first, second = _diagnosis(r).split("\n")
    assert first.startswith("the stream was written by xend")
    assert first.endswith("pass --toolstack xend")
    assert second.startswith("libxc (xen-4.3.1,")


def test_chunk_minus_18_without_a_callback_names_the_toolstacks_with_one(
    tmp_path: Path,
) -> None:
    img = tmp_path / "xl.img"
    args = ["gen", "--guest", "hvm", "--sender", "xen-4.3", "--toolstack", "xl"]
    assert xlpy_main([*args, "--memory", "1M", "--seed", "1", "-o", str(img)]) == 0
    r = _run(tmp_path, img.read_bytes(), "xen-4.3.1")
    assert "xc: error: toolstack data available but no callback provided: Internal error" in (
        r.messages
    )
    text = _diagnosis(r)
    assert "chunk -18, XC_SAVE_ID_TOOLSTACK" in text
    assert "the xc_restore toolstack installs none" in text
    assert text.endswith("pass --toolstack libxl-4.3.2 or xl-4.4, which do")


def test_a_checkpoint_in_a_plain_v2_stream_names_remus_receive(tmp_path: Path) -> None:
    r = _run(tmp_path, v2_stream("remus", "hvm", "libxl"), "xen-4.17", checkpointed=0)
    assert not r.ok and r.error is not None
    text = _diagnosis(r)
    assert f"record {r.error.record} at offset {r.error.offset} is a CHECKPOINT" in text
    assert "--operation remus-receive (without --operation: --checkpointed 1)" in text


def test_a_checkpointed_streams_end_lines_are_called_normal(tmp_path: Path) -> None:
    r = _run(tmp_path, build("pv", remus_checkpoints(3)), "xen-4.3.2", checkpointed=1)
    assert r.ok and r.committed_checkpoint == 2 and r.ending_lines == 4
    assert _diagnosis(r) == (
        "the restore succeeded: the 4 error lines above are what libxc always logs when "
        "a stream it reads as checkpointed ends: after checkpoint 2 it waited for another "
        "one and the stream ended (the sender closed the connection), so it committed "
        "checkpoint 2"
    )
    assert _diagnosis(r, framed=True).count("xlpy's pipe, which held only the image, ended")


def test_a_stream_cut_inside_a_later_checkpoint_counts_its_lines(tmp_path: Path) -> None:
    data = build("pv", remus_checkpoints(3))
    r = _run(tmp_path, data[:-100], "xen-4.3.2", checkpointed=1)
    assert r.ok and r.committed_checkpoint == 1
    text = _diagnosis(r)
    assert f"the {r.ending_lines} error lines above" in text
    assert f"(the {r.bytes_past_image} bytes of the unfinished one are dropped)" in text


def test_nothing_to_explain_gives_none(tmp_path: Path) -> None:
    r = _run(tmp_path, build("pv", PLAIN, last=True), "xen-4.5")
    assert r.ok and not r.messages
    assert diagnose(r) is None
