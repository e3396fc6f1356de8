"""Writer -> reader is the identity: every profile, and arbitrary chunk sequences."""

from __future__ import annotations

import io

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from xlpy.errors import UsageError
from xlpy.guest import GuestSpec
from xlpy.stream.legacy import format as F
from xlpy.stream.legacy.reader import LegacyReader
from xlpy.stream.legacy.records import (
    CheckpointBegin,
    EnableVerifyMode,
    EndOfBody,
    HvmParamChunk,
    HvmTail,
    PageBatch,
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
)
from xlpy.stream.legacy.senders import (
    MODES,
    SENDERS,
    TOOLSTACKS,
    TRAILERS,
    SenderProfile,
    stream_records,
)
from xlpy.stream.legacy.writer import LegacyWriter
from xlpy.stream.source import ByteSource

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def write(records: list[Record], width: int) -> tuple[bytes, list[int]]:
    """The stream and the offset at which each record starts."""
    buf = io.BytesIO()
    w = LegacyWriter(buf, width=width)
    offsets = []
    for r in records:
        offsets.append(w.offset)
        w.write(r)
    return buf.getvalue(), offsets


def read(data: bytes, **hints: object) -> list[Record]:
    return list(LegacyReader(ByteSource(io.BytesIO(data)), **hints).records())  # type: ignore[arg-type]


def check_identity(records: list[Record], wire_width: int, **hints: object) -> None:
    data, offsets = write(records, wire_width)
    got = read(data, **hints)
    assert len(got) == len(records)
    for i, (want, have) in enumerate(zip(records, got, strict=True)):
        assert have == want, f"record {i}: {type(want).__name__}"
        assert have.offset == offsets[i], f"record {i} offset"
        assert have.index == i


profiles = st.builds(
    SenderProfile,
    sender=st.sampled_from(SENDERS),
    toolstack=st.sampled_from(TOOLSTACKS),
    mode=st.sampled_from(MODES),
    checkpoints=st.integers(1, 3),
    compress=st.booleans(),
    trailer=st.sampled_from(TRAILERS),
    width=st.sampled_from([4, 8]),
)
guests = st.builds(
    GuestSpec,
    kind=st.sampled_from(["pv", "hvm"]),
    pages=st.integers(16, 2200),
    seed=st.integers(0, 2**32),
    guest_width=st.sampled_from([4, 8]),
    vcpus=st.integers(1, 70),
    dirty=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    xsave=st.booleans(),
)


def profile_records(profile: SenderProfile, spec: GuestSpec) -> list[Record]:
    if profile.mode == "plain" and profile.checkpoints != 1:
        profile = SenderProfile(**{**_fields(profile), "checkpoints": 1})
    try:
        return list(stream_records(profile, spec))
    except UsageError:
        assume(False)
        raise


def _fields(p: SenderProfile) -> dict[str, object]:
    return {f: getattr(p, f) for f in SenderProfile.__slots__}  # type: ignore[attr-defined]


@SETTINGS
@given(profile=profiles, spec=guests)
def test_every_profile_round_trips(profile: SenderProfile, spec: GuestSpec) -> None:
    records = profile_records(profile, spec)
    check_identity(records, profile.width, width=profile.width, guest=spec.kind)


@SETTINGS
@given(profile=profiles, spec=guests)
def test_every_profile_round_trips_with_detection(profile: SenderProfile, spec: GuestSpec) -> None:
    """Without hints the reader must detect W and the guest type itself (§1 heuristic)."""
    records = profile_records(profile, spec)
    check_identity(records, profile.width)


# --- arbitrary chunk sequences (tmem, verify mode, odd entry types, pads) -------------------

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
# oid[0] == ~0 alone is left out: see test_tmem_terminator_needs_all_three_oid_words.
oid = st.tuples(st.integers(0, 2**64 - 2), u64, u64)


@st.composite
def tmem_pools(draw: st.DrawFn) -> TmemPool:
    n_pages = draw(st.integers(0, 3))
    k = draw(st.integers(0, n_pages))
    pages = tuple(
        TmemPage(
            oid=draw(oid), index=draw(u32), data=draw(st.binary(min_size=1, max_size=1)) * 4096
        )
        for _ in range(k)
    )
    return TmemPool(
        pool_id=draw(st.integers(0, 2**32 - 2)),
        flags=draw(u32) & ~(0xF << 4),  # page size 4096 (TMEM_POOL_PAGESIZE bits zero)
        n_pages=n_pages,
        uuid=(draw(u64), draw(u64)),
        pages=pages,
        terminated=k < n_pages,
    )


@st.composite
def batches(draw: st.DrawFn, width: int) -> PageBatch:
    n = draw(st.integers(1, 40))
    types = draw(st.lists(st.sampled_from(list(range(16))), min_size=n, max_size=n))
    pfns = draw(st.lists(st.integers(0, F.PFN_MASK), min_size=n, max_size=n))
    high = draw(st.lists(u32, min_size=n, max_size=n)) if width == 8 else [0] * n
    entries = [(h << 32) | (t << 28) | p for t, p, h in zip(types, pfns, high, strict=True)]
    ndata = sum(t not in (0xD, 0xE, 0xF) for t in types)
    data = draw(st.binary(min_size=1, max_size=1)) * (4096 * ndata)
    raw = b"".join(e.to_bytes(width, "little") for e in entries)
    return PageBatch(width=width, entries=raw, data=data)


def chunks(width: int) -> st.SearchStrategy[Record]:
    return st.one_of(
        batches(width),
        st.just(EnableVerifyMode()),
        st.builds(TscInfo, tsc_mode=u32, nsec=u64, khz=u32, incarnation=u32),
        st.builds(
            HvmParamChunk,
            chunk_id=st.sampled_from(sorted(F.HVM_PARAM_CHUNKS)),
            value=u64,
            pad=u32,
        ),
        st.integers(0, 200).flatmap(
            lambda m: st.builds(
                VcpuInfo,
                max_vcpu_id=st.just(m),
                online_map=st.tuples(*[u64] * (m // 64 + 1)),
            )
        ),
        st.builds(Toolstack, blob=st.binary(max_size=64)),
        st.builds(
            Tmem,
            version=u32,
            max_pools=u32,
            client_flags=u32,
            weight=u32,
            cap=u32,
            pools=st.lists(tmem_pools(), max_size=3).map(tuple),
        ),
        st.builds(
            TmemExtra,
            entries=st.lists(
                st.builds(TmemExtraEntry, pool_id=st.integers(0, 2**32 - 2), oid=oid, index=u32),
                max_size=4,
            ).map(tuple),
        ),
    )


@st.composite
def hvm_streams(draw: st.DrawFn) -> tuple[list[Record], int]:
    width = draw(st.sampled_from([4, 8]))
    records: list[Record] = [StreamHeader(p2m_size=draw(st.integers(1, 2**28)), width=width)]
    n = draw(st.integers(1, 3))
    for k in range(n):
        records.append(CheckpointBegin(number=k))
        # Later bodies are never empty: every sender's end list starts with -2
        # (and the reader takes a bare 0 after a tail for a foreign trailer).
        records += draw(st.lists(chunks(width), min_size=min(k, 1), max_size=8))
        records.append(EndOfBody())
        records.append(
            HvmTail(
                ioreq_pfn=draw(u64),
                bufioreq_pfn=draw(u64),
                store_pfn=draw(u64),
                context=draw(st.binary(max_size=100)),
            )
        )
        sig = draw(st.sampled_from([F.QEMU_SIG_0002, F.QEMU_SIG_REMUS, F.XENSERVER_QEMU_SIG]))
        records.append(QemuRecord(signature=sig, data=b"QEVM" + draw(st.binary(max_size=30))))
    if draw(st.booleans()):
        records.append(Trailer(data=b"domain is yours" + draw(st.binary(max_size=20))))
    return records, width


@SETTINGS
@given(stream=hvm_streams())
def test_arbitrary_chunks_round_trip(stream: tuple[list[Record], int]) -> None:
    records, width = stream
    check_identity(records, width, width=width, guest="hvm")


def test_tmem_terminator_needs_all_three_oid_words() -> None:
    page = TmemPage(oid=(2**64 - 1, 0, 0), index=1, data=b"t" * 4096)
    pool = TmemPool(pool_id=0, flags=0, n_pages=1, uuid=(0, 0), pages=(page,))
    tmem = Tmem(version=1, max_pools=1, client_flags=0, weight=0, cap=0, pools=(pool,))
    tail = HvmTail(ioreq_pfn=0, bufioreq_pfn=0, store_pfn=0, context=b"")
    records: list[Record] = [
        StreamHeader(p2m_size=1, width=8),
        CheckpointBegin(number=0),
        tmem,
        EndOfBody(),
        tail,
    ]
    check_identity(records, 8, width=8, guest="hvm")
