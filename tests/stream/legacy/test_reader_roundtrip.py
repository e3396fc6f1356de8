"""Reader ∘ writer = identity on any well-formed record sequence (Hypothesis).

The sequences are built from the grammar of spec §2: framing, header, PV ext-info
and frame list, 1..3 checkpoints (format B after -13 in checkpoint 0, -9 only in
the last), tails sized by the latest VCPU_INFO, QEMU records and trailers.
"""

from __future__ import annotations

import io
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xlpy.stream.legacy import format as F
from xlpy.stream.legacy.reader import LegacyReader, data_bearing_count
from xlpy.stream.legacy.records import (
    CheckpointBegin,
    CompressedData,
    EnableCompression,
    EnableVerifyMode,
    EndOfBody,
    ExtInfoBlock,
    HvmParamChunk,
    HvmTail,
    LastCheckpoint,
    P2mFrameList,
    PageBatch,
    PvExtInfo,
    PvTail,
    QemuRecord,
    Record,
    StreamHeader,
    Tmem,
    TmemExtra,
    TmemExtraEntry,
    TmemPage,
    TmemPool,
    Toolstack,
    Trailer,
    TscInfo,
    VcpuInfo,
    VcpuState,
    XendHeader,
    XlHeader,
    XsaveRecord,
)
from xlpy.stream.legacy.writer import encode
from xlpy.stream.source import ByteSource

u32s = st.integers(0, 2**32 - 1)
u64s = st.integers(0, 2**64 - 1)
NIBBLES = [0x0, 0x1, 0x2, 0x3, 0x4, 0x8, 0x9, 0xC, 0xD, 0xE, 0xF]


@st.composite
def page_batch(draw: st.DrawFn, width: int, compressed: bool) -> PageBatch:
    n = draw(st.integers(1, 6))
    ents = [
        (draw(st.sampled_from(NIBBLES)) << 28) | draw(st.integers(0, F.PFN_MASK)) for _ in range(n)
    ]
    if draw(st.booleans()):
        ents[0] = F.BARE_XTAB_ENTRY
    raw = struct.pack(f"<{n}{'I' if width == 4 else 'Q'}", *ents)
    data = None
    if not compressed:
        pages = data_bearing_count(raw, width)
        data = bytes([draw(st.integers(0, 255))]) * (F.PAGE_SIZE * pages)
    return PageBatch(width=width, entries=raw, data=data)


@st.composite
def tmem(draw: st.DrawFn) -> Tmem:
    pools = []
    for pid in range(draw(st.integers(0, 2))):
        n = draw(st.integers(0, 2))
        pages = tuple(
            TmemPage(oid=(draw(u64s) >> 1, 1, 2), index=draw(u32s), data=b"t" * 4096)
            for _ in range(draw(st.integers(0, n)))
        )
        terminated = len(pages) < n
        pools.append(
            TmemPool(
                pool_id=pid,
                flags=1,
                n_pages=n,
                uuid=(draw(u64s), draw(u64s)),
                pages=pages,
                terminated=terminated,
            )
        )
    return Tmem(
        version=draw(u32s),
        max_pools=draw(u32s),
        client_flags=draw(u32s),
        weight=draw(u32s),
        cap=draw(u32s),
        pools=tuple(pools),
    )


def metadata(width: int) -> st.SearchStrategy[Record]:
    return st.one_of(
        st.builds(VcpuInfo, max_vcpu_id=st.just(0), online_map=st.just((1,))),
        st.integers(0, 3).map(lambda m: VcpuInfo(max_vcpu_id=64 + m, online_map=(1, 1 << m))),
        st.builds(
            HvmParamChunk,
            chunk_id=st.sampled_from(sorted(F.HVM_PARAM_CHUNKS)),
            value=u64s,
            pad=u32s,
        ),
        st.builds(TscInfo, tsc_mode=u32s, nsec=u64s, khz=u32s, incarnation=u32s),
        st.builds(Toolstack, blob=st.binary(max_size=40)),
        st.builds(EnableVerifyMode),
        tmem(),
        st.lists(
            st.builds(
                TmemExtraEntry,
                pool_id=st.integers(0, 2**32 - 2),
                oid=st.tuples(u64s, u64s, u64s),
                index=u32s,
            ),
            max_size=3,
        ).map(lambda es: TmemExtra(entries=tuple(es))),
    )


@st.composite
def stream(draw: st.DrawFn) -> tuple[bytes, list[Record], int, str]:
    width = draw(st.sampled_from([4, 8]))
    guest = draw(st.sampled_from(["pv", "hvm"]))
    recs: list[Record] = []
    framing = draw(st.sampled_from(["bare", "xl", "xend"]))
    if framing == "xl":
        cfg = b'builder="%s"\n' % guest.encode()
        recs.append(
            XlHeader(
                mandatory_flags=1,
                optional_flags=draw(u32s),
                optional_data=struct.pack("<I", len(cfg)) + cfg,
            )
        )
    elif framing == "xend":
        recs.append(XendHeader(config=draw(st.binary(max_size=30))))
    p2m_size = draw(st.integers(1, 5000))
    recs.append(StreamHeader(p2m_size=p2m_size, width=width))
    gw, extv, xcnt = width, False, None
    if guest == "pv":
        if draw(st.booleans()):
            gw = draw(st.sampled_from([4, 8]))
            extv = draw(st.booleans())
            blocks = [ExtInfoBlock(block_id=b"vcpu", data=b"v" * (2800 if gw == 4 else 5168))]
            if extv:
                blocks.append(ExtInfoBlock(block_id=b"extv", data=b""))
            if draw(st.booleans()):
                xcnt = draw(st.integers(16, 80))
                blocks.append(ExtInfoBlock(block_id=b"xcnt", data=struct.pack("<I", xcnt)))
            if draw(st.booleans()):
                blocks.append(ExtInfoBlock(block_id=b"zzzz", data=draw(st.binary(max_size=9))))
            recs.append(PvExtInfo(blocks=tuple(blocks)))
        n = -(-p2m_size // (F.PAGE_SIZE // gw))
        recs.append(P2mFrameList(entries=tuple(draw(st.integers(0, F.PFN_MASK)) for _ in range(n))))
    checkpoints = draw(st.integers(1, 3))
    last = draw(st.booleans())
    compress = checkpoints > 1 and draw(st.booleans())
    vcpu_info: VcpuInfo | None = None
    for k in range(checkpoints):
        compressed = compress and k > 0
        recs.append(CheckpointBegin(number=k, compressed=compressed))
        items = draw(
            st.lists(st.one_of(page_batch(width, compressed), metadata(width)), max_size=5)
        )
        if k > 0 and not items:
            # The next body must open with a chunk header (a sender always sends -2).
            items.append(VcpuInfo(max_vcpu_id=0, online_map=(1,)))
        if compressed:
            items.append(CompressedData(data=draw(st.binary(max_size=20))))
        if k == 0 and compress:
            items.append(EnableCompression())
        if last and k == checkpoints - 1:
            items.append(LastCheckpoint())
        recs += items
        recs.append(EndOfBody())
        vcpu_info = next((r for r in reversed(items) if isinstance(r, VcpuInfo)), vcpu_info)
        if guest == "hvm":
            recs.append(
                HvmTail(
                    ioreq_pfn=draw(u64s),
                    bufioreq_pfn=draw(u64s),
                    store_pfn=draw(u64s),
                    context=draw(st.binary(max_size=50)),
                )
            )
            sig = draw(st.sampled_from([None, F.QEMU_SIG_0002, F.QEMU_SIG_REMUS]))
            if k == checkpoints - 1:
                sig = draw(st.sampled_from([sig, F.QEMU_SIG_TO_EOF, F.XENSERVER_QEMU_SIG]))
            if sig is not None:
                recs.append(QemuRecord(signature=sig, data=b"QEVM" + draw(st.binary(max_size=20))))
        else:
            online = vcpu_info.online_vcpus() if vcpu_info else [0]
            recs.append(
                PvTail(
                    unmapped=tuple(
                        draw(st.lists(st.integers(0, 2 ** (8 * width) - 1), max_size=3))
                    ),
                    vcpus=tuple(
                        VcpuState(
                            vcpu_id=v,
                            context=b"c" * (2800 if gw == 4 else 5168),
                            ext=b"e" * 128 if extv else None,
                            xsave=XsaveRecord(xfeature_mask=draw(u64s), data=b"x" * (xcnt - 16))
                            if xcnt is not None
                            else None,
                        )
                        for v in online
                    ),
                    shared_info=b"s" * 4096,
                )
            )
    to_eof = isinstance(recs[-1], QemuRecord) and recs[-1].signature == F.QEMU_SIG_TO_EOF
    if not to_eof and draw(st.booleans()):
        recs.append(Trailer(data=b"domain is yours" + draw(st.binary(max_size=10))))
    return encode(recs, width), recs, width, guest


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream())
def test_reader_inverts_writer(case: tuple[bytes, list[Record], int, str]) -> None:
    data, recs, width, guest = case
    got = list(LegacyReader(ByteSource(io.BytesIO(data)), width=width, guest=guest).records())
    assert got == recs
    assert [r.index for r in got] == list(range(len(got)))
    offsets = [r.offset for r in got]
    assert offsets == sorted(offsets) and offsets[0] == 0
