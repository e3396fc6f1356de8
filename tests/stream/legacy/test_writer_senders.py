"""Sender profiles: chunk ids, order and conditions of spec §5/§9, framing, final memory."""

from __future__ import annotations

import io

import numpy as np
import pytest

from xlpy.errors import UsageError
from xlpy.guest import Guest, GuestSpec
from xlpy.stream.legacy import format as F
from xlpy.stream.legacy.compression import CheckpointDecoder
from xlpy.stream.legacy.records import (
    CheckpointBegin,
    CompressedData,
    EndOfBody,
    HvmTail,
    PageBatch,
    PvExtInfo,
    PvTail,
    QemuRecord,
    Record,
    StreamHeader,
    Trailer,
    TscInfo,
    VcpuInfo,
    XendHeader,
    XlHeader,
    chunk_id_of,
)
from xlpy.stream.legacy.senders import (
    FOREIGN_TRAILER,
    SenderProfile,
    expected_memory,
    final_epoch,
    generate,
    stream_records,
)
from xlpy.stream.legacy.writer import encode


def recs(profile: SenderProfile, **guest: object) -> list[Record]:
    spec = GuestSpec(**{"kind": "hvm", "pages": 2100, "seed": 7, **guest})  # type: ignore[arg-type]
    return list(stream_records(profile, spec))


def end_lists(records: list[Record]) -> list[list[int]]:
    """Chunk ids after each checkpoint's last batch/-12 (the end-of-checkpoint list)."""
    lists: list[list[int]] = []
    cur: list[int] = []
    for r in records:
        if isinstance(r, (PageBatch, CompressedData, CheckpointBegin, TscInfo)):
            cur = []
            continue
        cid = chunk_id_of(r)
        if cid is not None:
            cur.append(cid)
        elif isinstance(r, EndOfBody):
            lists.append([*cur, 0])
    return lists


@pytest.mark.parametrize(
    ("sender", "toolstack", "expect"),
    [
        ("xen-4.0", "xend", [-2, -3, -4, 0]),
        ("xen-4.1", "xend", [-2, -3, -4, -8, -10, -9, 0]),
        ("xen-4.2", "xl", [-2, -3, -4, -8, -10, -11, -18, -9, 0]),
        ("xen-4.3", "bare", [-2, -3, -4, -8, -10, -11, -9, 0]),
        ("xen-4.5", "xl", [-2, -3, -4, -8, -10, -11, -19, -20, -18, -9, 0]),
    ],
)
def test_end_of_checkpoint_list(sender: str, toolstack: str, expect: list[int]) -> None:
    # seed 7 is odd: viridian on; gen-id and the rings are zero, hence absent.
    assert end_lists(recs(SenderProfile(sender=sender, toolstack=toolstack))) == [expect]


def test_hvm_param_order_4_3_with_all_params() -> None:
    spec = GuestSpec(kind="hvm", pages=64, seed=1)
    g = Guest(spec)
    params = {cid: 100 + cid for cid in g.hvm_params()}
    g.hvm_params = lambda: params  # type: ignore[method-assign]
    from xlpy.stream.legacy import senders

    stream = senders._Stream(SenderProfile(sender="xen-4.3"), spec, reuse_buffers=False)
    stream.g = g
    ids = [chunk_id_of(r) for r in stream._end_list(0)]
    assert ids == [-2, -14, -3, -15, -16, -17, -4, -8, -10, -11, -9, None]


def test_pv_4_0_vcpu_map_and_no_xcnt() -> None:
    r = recs(SenderProfile(sender="xen-4.0"), kind="pv", vcpus=64)
    (vi,) = [x for x in r if isinstance(x, VcpuInfo)]
    assert vi.max_vcpu_id == 63 and vi.online_map == (2**64 - 1,)
    (ext,) = [x for x in r if isinstance(x, PvExtInfo)]
    assert [b.block_id for b in ext.blocks] == [b"vcpu", b"extv"]
    (tail,) = [x for x in r if isinstance(x, PvTail)]
    assert all(v.xsave is None and v.ext is not None for v in tail.vcpus)
    assert end_lists(r) == [[-2, 0]]
    with pytest.raises(UsageError):
        recs(SenderProfile(sender="xen-4.0"), kind="pv", vcpus=65)


def test_pv_4_2_map_words_and_xcnt() -> None:
    r = recs(SenderProfile(sender="xen-4.2"), kind="pv", vcpus=65, guest_width=4)
    (vi,) = [x for x in r if isinstance(x, VcpuInfo)]
    assert vi.online_map == (2**64 - 1, 1)
    (ext,) = [x for x in r if isinstance(x, PvExtInfo)]
    assert ext.guest_width == 4 and ext.xcnt == 848
    (tail,) = [x for x in r if isinstance(x, PvTail)]
    assert len(tail.vcpus) == 65
    assert all(v.xsave is not None and len(v.xsave.data) + 16 == 848 for v in tail.vcpus)


def test_batches_xtab_and_tsc_placement_plain() -> None:
    r = recs(SenderProfile(sender="xen-4.3"))
    body = r[r.index(next(x for x in r if isinstance(x, CheckpointBegin))) + 1 :]
    assert isinstance(body[0], TscInfo)
    batches = [x for x in r if isinstance(x, PageBatch)]
    assert [b.count for b in batches] == [1024, 1024, 52]
    entries = np.concatenate([b.entry_array() for b in batches])
    hole = entries[0xA0:0xC0]
    assert (hole == F.BARE_XTAB_ENTRY).all()
    assert (
        np.delete(entries, np.s_[0xA0:0xC0]) == np.delete(np.arange(2100), np.s_[0xA0:0xC0])
    ).all()
    assert sum(len(b.data) for b in batches if b.data is not None) == (2100 - 32) * 4096


def test_remus_shape() -> None:
    p = SenderProfile(sender="xen-4.3", toolstack="xl", mode="remus", checkpoints=3, compress=True)
    r = recs(p, dirty=0.5)
    begins = [x for x in r if isinstance(x, CheckpointBegin)]
    assert [(b.number, b.compressed) for b in begins] == [(0, False), (1, True), (2, True)]
    assert sum(isinstance(x, TscInfo) for x in r) == 1
    lists = end_lists(r)
    assert lists[0][-2:] == [-13, 0] and all(-9 not in x for x in lists)
    assert all(-13 not in x for x in lists[1:])
    qemu = [x for x in r if isinstance(x, QemuRecord)]
    assert [q.signature for q in qemu] == [F.QEMU_SIG_0002] * 3
    # format B: no page data from checkpoint 2 on, pages in -12 payloads instead.
    i2 = r.index(begins[1])
    assert all(x.data is None for x in r[i2:] if isinstance(x, PageBatch))
    assert any(isinstance(x, CompressedData) for x in r[i2:])
    # TSC between the full pass and the pages dirtied meanwhile.
    tsc = next(i for i, x in enumerate(r) if isinstance(x, TscInfo))
    assert isinstance(r[tsc - 1], PageBatch) and isinstance(r[tsc + 1], PageBatch)


def test_stage_overflow_interleaves_compressed_chunks() -> None:
    p = SenderProfile(sender="xen-4.5", mode="remus", checkpoints=2, compress=True)
    r = recs(p, kind="pv", pages=12000, dirty=1.0)
    i2 = r.index([x for x in r if isinstance(x, CheckpointBegin)][1])
    kinds = [type(x).__name__ for x in r[i2:]]
    first = kinds.index("CompressedData")
    # 8192 pages staged = 8 full batches, then the flush, then the rest.
    assert kinds[1:first] == ["PageBatch"] * 8
    assert "PageBatch" in kinds[first:]
    last_batch = len(kinds) - 1 - kinds[::-1].index("PageBatch")
    assert kinds[last_batch + 1] == "CompressedData"


@pytest.mark.parametrize(
    ("toolstack", "mode", "head", "qemu"),
    [
        ("bare", "plain", StreamHeader, []),
        ("xend", "plain", XendHeader, [F.QEMU_SIG_TO_EOF]),
        ("xend", "remus", XendHeader, [F.QEMU_SIG_REMUS] * 2),
        ("xl", "plain", XlHeader, [F.QEMU_SIG_0002]),
        ("xenserver-classic", "plain", StreamHeader, [F.XENSERVER_QEMU_SIG]),
    ],
)
def test_framing(toolstack: str, mode: str, head: type, qemu: list[bytes]) -> None:
    p = SenderProfile(
        sender="xen-4.3", toolstack=toolstack, mode=mode, checkpoints=2 if mode == "remus" else 1
    )
    r = recs(p)
    assert isinstance(r[0], head)
    assert [x.signature for x in r if isinstance(x, QemuRecord)] == qemu
    if qemu:
        assert r[-1] == QemuRecord(signature=qemu[-1], data=r[-1].data)  # type: ignore[attr-defined]
        assert r[-1].data.startswith(b"QEVM")  # type: ignore[attr-defined]


def test_xl_json_flag_from_4_5() -> None:
    assert recs(SenderProfile(sender="xen-4.5", toolstack="xl"))[0].mandatory_flags == 1  # type: ignore[attr-defined]
    assert recs(SenderProfile(sender="xen-4.3", toolstack="xl"))[0].mandatory_flags == 0  # type: ignore[attr-defined]


def test_foreign_trailer() -> None:
    r = recs(SenderProfile(sender="xen-4.3", toolstack="xl", trailer="foreign"))
    assert r[-1] == Trailer(data=FOREIGN_TRAILER)
    assert int.from_bytes(FOREIGN_TRAILER[:4], "little") == 1634561892


@pytest.mark.parametrize(
    "profile",
    [
        SenderProfile(compress=True),
        SenderProfile(sender="xen-4.1", mode="remus", compress=True),
        SenderProfile(sender="xen-4.0", toolstack="xl"),
        SenderProfile(checkpoints=2),
        SenderProfile(toolstack="xenserver-classic", mode="remus"),
        SenderProfile(toolstack="xend", trailer="foreign"),
        SenderProfile(sender="xen-4.2", toolstack="xl", mode="remus"),
        SenderProfile(sender="xen-9.9"),
        SenderProfile(width=2),
    ],
)
def test_invalid_combinations(profile: SenderProfile) -> None:
    with pytest.raises(UsageError):
        recs(profile)


def test_tail_kinds_and_width() -> None:
    r = recs(SenderProfile(width=4))
    assert isinstance(r[0], StreamHeader) and r[0].width == 4
    assert all(b.width == 4 for b in r if isinstance(b, PageBatch))
    assert any(isinstance(x, HvmTail) for x in r)


def _replay(records: list[Record], p2m_size: int) -> dict[int, bytes]:
    """A minimal receiver: apply format-A pages, decode format-B checkpoints."""
    mem: dict[int, bytes] = {}
    pending: list[int] = []
    comp: list[bytes] = []
    for r in records:
        if isinstance(r, PageBatch):
            e = r.entry_array()
            data_pfns = [int(x) & F.PFN_MASK for x in e if x >> 28 != 0xF]
            if r.data is None:
                pending += data_pfns
            else:
                for i, pfn in enumerate(data_pfns):
                    mem[pfn] = bytes(r.data[i * 4096 : (i + 1) * 4096])
        elif isinstance(r, CompressedData):
            comp.append(r.data)
        elif isinstance(r, EndOfBody) and pending:
            prev = np.frombuffer(b"".join(mem[p] for p in pending), np.uint8)
            arr = prev.reshape(len(pending), 4096).copy()
            dec = CheckpointDecoder(b"".join(comp))
            dec.decode_into(arr, pfns=pending)
            assert dec.pos == len(b"".join(comp))
            for i, pfn in enumerate(pending):
                mem[pfn] = arr[i].tobytes()
            pending, comp = [], []
    assert all(p < p2m_size for p in mem)
    return mem


@pytest.mark.parametrize(
    ("kind", "mode", "compress", "pages"),
    [
        ("pv", "plain", False, 600),
        ("hvm", "remus", False, 600),
        ("hvm", "remus", True, 600),
        ("pv", "remus", True, 9000),
    ],
)
def test_expected_memory_matches_replay(kind: str, mode: str, compress: bool, pages: int) -> None:
    p = SenderProfile(
        sender="xen-4.3", mode=mode, checkpoints=4 if mode == "remus" else 1, compress=compress
    )
    spec = GuestSpec(kind=kind, pages=pages, seed=3, dirty=0.4)  # type: ignore[arg-type]
    mem = _replay(list(stream_records(p, spec)), pages)
    expected = {
        int(pfn): row.tobytes()
        for pfns, pg in expected_memory(p, spec)
        for pfn, row in zip(pfns, pg, strict=True)
    }
    assert mem.keys() == expected.keys()
    assert all(mem[k] == expected[k] for k in expected)
    assert final_epoch(p) == (4 if mode == "remus" else 0)


def test_generate_equals_encode_and_is_deterministic() -> None:
    p = SenderProfile(sender="xen-4.5", toolstack="xl", mode="remus", checkpoints=2, compress=True)
    spec = GuestSpec(kind="hvm", pages=300, seed=11)
    a, b = io.BytesIO(), io.BytesIO()
    n = generate(p, spec, a)
    generate(p, spec, b)
    assert n == len(a.getvalue()) and a.getvalue() == b.getvalue()
    assert a.getvalue() == encode(stream_records(p, spec), 8)
    other = io.BytesIO()
    generate(p, GuestSpec(kind="hvm", pages=300, seed=12), other)
    assert other.getvalue() != a.getvalue()
