"""libxc's log lines as the stdio logger renders them, per generation (§10.2, §10.6, §11)."""

from __future__ import annotations

import pytest

from xlpy.errors import UsageError
from xlpy.receiver import messages as M
from xlpy.receiver.generations import GENERATIONS, generation
from xlpy.receiver.toolstacks import TOOLSTACKS, checkpointed_for, toolstack
from xlpy.stream.legacy import format as F


def test_error_and_perror_rendering() -> None:
    log = M.XcLog(generation("xen-4.3.1"))
    log.error(M.MAX_BATCH_SIZE, n=1970103633)
    log.errno = M.EMSGSIZE
    log.perror(M.BUFFERING_BATCH_FINISHING)
    log.error(M.UNCOMPRESS, pfn=0x1F)  # trailing \n stripped as xc_reportv does
    assert log.lines == [
        "xc: error: Max batch size exceeded (1970103633). Giving up.: Internal error",
        "xc: error: error when buffering batch, finishing (90 = Message too long): Internal error",
        "xc: error: Failed to uncompress page (pfn=1f): Internal error",
    ]


def test_40_renders_as_xc_default_error_handler() -> None:
    # 4.0.4:tools/libxc/xc_private.c L28-31: "ERROR %s: %s\n" with the code's desc first
    log = M.XcLog(generation("xen-4.0"))
    log.error(M.MAX_BATCH_SIZE, n=-9)
    log.error(M.UNCOMPRESS, pfn=0x1F)  # the format's own \n ends the line
    assert log.lines == [
        "ERROR Internal error: Max batch size exceeded (-9). Giving up.",
        "ERROR Internal error: Failed to uncompress page (pfn=1f)",
    ]


@pytest.mark.parametrize(
    ("gen", "timeout_line"),
    [
        ("xen-4.0", "read_exact_timed failed (select returned 0)"),
        ("xen-4.2", "xc: error: read_exact_timed failed (select returned 0): Internal error"),
        ("xen-4.2.5", "xc: error: rdexact failed (select returned 0): Internal error"),  # 50d9892
        ("xen-4.3.2", "xc: error: read_exact_timed failed (select returned 0): Internal error"),
        ("xen-4.3.3", "xc: error: rdexact failed (select returned 0): Internal error"),
        ("xen-4.4", "xc: error: rdexact failed (select returned 0): Internal error"),
    ],
)
def test_heartbeat_timeout_line(gen: str, timeout_line: str) -> None:
    log = M.XcLog(generation(gen))
    log.read_timeout()
    log.perror(M.READING_BATCH_SIZE)
    assert log.lines[0] == timeout_line
    assert log.errno == M.ETIMEDOUT
    if gen == "xen-4.0":  # no errno suffix, and no xentoollog (xc_default_error_handler)
        assert log.lines[1] == "ERROR Internal error: Error when reading batch size"
    else:
        assert log.lines[1] == (
            "xc: error: Error when reading batch size (110 = Connection timed out): Internal error"
        )


def test_eof_is_silent_on_40_and_two_lines_later() -> None:
    old, new = M.XcLog(generation("xen-4.0")), M.XcLog(generation("xen-4.1"))
    old.read_eof()
    new.read_eof()
    assert old.lines == []
    assert new.lines == [
        "xc: error: 0-length read: Internal error",
        "xc: error: read_exact_timed failed (read rc: 0, errno: 0): Internal error",
    ]


def test_generation_table() -> None:
    labels = {g.name: g.label for g in GENERATIONS.values()}
    assert labels == {
        "xen-4.0": "R-pre",
        "xen-4.1": "R-bug",
        "xen-4.2": "R-bug",
        "xen-4.2.5": "R-bug",
        "xen-4.3.0": "R-bug",
        "xen-4.3.1": "R-bug",
        "xen-4.3.2": "R-fix",
        "xen-4.3.3": "R-fix",
        "xen-4.4": "R-fix44",
        "xen-4.5": "R-fix",
        "xen-4.17": "V2",  # migration v2 (xlpy.receiver.v2)
    }
    g40, g41, g45 = generation("xen-4.0"), generation("xen-4.1"), generation("xen-4.5")
    assert F.XC_SAVE_ID_LAST_CHECKPOINT not in g40.known_ids
    assert F.XC_SAVE_ID_LAST_CHECKPOINT in g41.known_ids
    assert F.XC_SAVE_ID_TOOLSTACK not in g41.known_ids
    assert F.XC_SAVE_ID_HVM_IOREQ_SERVER_PFN in g45.known_ids
    assert g40.max_vcpu_id == 63 and g40.dataless_nibbles == frozenset({0xF})
    assert generation("xen-4.4").post_completion_fatal
    assert not any(g.post_completion_fatal for g in GENERATIONS.values() if g.name != "xen-4.4")
    assert generation("xen-4.3") is generation("xen-4.3.0")
    with pytest.raises(UsageError):
        generation("xen-4.6")


def test_toolstacks_pass_what_the_spec_says() -> None:
    assert checkpointed_for(toolstack("xend"), None) == 1
    assert checkpointed_for(toolstack("libxl-4.3.2"), None) == 0
    assert checkpointed_for(toolstack("xl-4.4"), None) == 0
    assert checkpointed_for(toolstack("xl-4.4"), 1) == 1
    with pytest.raises(UsageError):
        checkpointed_for(toolstack("libxl-4.3.2"), 1)
    # XenServer's libxc (revert_qemu_tail.patch), under classic xenopsd and the current one
    patched = {"xenserver-classic", "xenopsd"}
    assert not any(TOOLSTACKS[n].libxc_reads_qemu for n in patched)
    assert all(t.libxc_reads_qemu for n, t in TOOLSTACKS.items() if n not in patched)
