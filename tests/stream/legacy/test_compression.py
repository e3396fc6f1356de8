"""Remus compression (§6.4): decoder errors verbatim, encoder semantics, LRU cache, chunking."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xlpy.errors import StreamMalformed
from xlpy.stream.legacy.compression import (
    FULL_PAGE_SIZE,
    WORST_COMP_PAGE_SIZE,
    CheckpointDecoder,
    Compressor,
    DeltaCache,
    compress_page,
    decompress,
)

PAGE = 4096


def pages(*rows: bytes) -> np.ndarray:
    return np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(len(rows), PAGE).copy()


def skip(words: int) -> bytes:
    """SKIP markers as the sender cuts them: runs of 127 words, then the rest."""
    return bytes([0xFF] * (words // 127) + ([0x80 | words % 127] if words % 127 else []))


def rand_page(seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, PAGE, dtype=np.uint8).tobytes()


# --- decoder -----------------------------------------------------------------------------


def test_empty_full_and_runs_with_one_cursor() -> None:
    old = [rand_page(1), rand_page(2), rand_page(3)]
    new2 = bytearray(old[2])
    new2[8:16] = b"ABCDEFGH"
    full = rand_page(9)
    # page 0 EMPTY, page 1 FULL, page 2: SKIP 2 words, RUN 2 words, SKIP 1020 words.
    runs = bytes([0x82, 0x02]) + b"ABCDEFGH" + skip(1020)
    data = b"\x00" + b"\x80" + full + runs
    dec = CheckpointDecoder(data)
    out = pages(*old)
    dec.decode_into(out[:2])
    assert dec.pos == 1 + FULL_PAGE_SIZE
    dec.decode_into(out[2:])
    assert dec.pos == len(data)
    assert out[0].tobytes() == old[0]
    assert out[1].tobytes() == full
    assert out[2].tobytes() == bytes(new2)


def test_decompress_leaves_previous_untouched() -> None:
    prev = pages(rand_page(1))
    out = decompress(b"\x80" + rand_page(2), prev)
    assert prev.tobytes() == rand_page(1)
    assert out.tobytes() == rand_page(2)


@pytest.mark.parametrize(
    ("data", "n", "message", "pos"),
    [
        (b"", 1, "Out of bounds exception in compression buffer (a):read ptr:0, bufsize = 0", 0),
        (
            b"\x00",
            2,
            "Out of bounds exception in compression buffer (a):read ptr:1, bufsize = 1",
            1,
        ),
        (
            b"\x80" + bytes(100),
            1,
            "Out of bounds exception in compression buffer (b):read ptr = 0, bufsize = 101",
            0,
        ),
        (
            bytes([0x81, 0x00]),
            1,
            "Zero length run encountered for normal page: buffer (d):read ptr = 1, flag = 0, "
            "bufsize = 2, pagepos = 4",
            1,
        ),
        (
            bytes([0x01, 1, 2, 3, 4, 0x80]),
            1,
            "Zero length run encountered for normal page: buffer (d):read ptr = 5, "
            "flag = 4294967168, bufsize = 6, pagepos = 4",
            5,
        ),
        (
            bytes([0x02, 1, 2, 3]),
            1,
            "Out of bounds exception in compression buffer (c):read ptr = 1, runlen = 8, "
            "bufsize = 4, pagepos = 0",
            1,
        ),
        (
            bytes([0xFF] * 8 + [0x7F]) + bytes(508),
            1,
            "Out of bounds exception in compression buffer (c):read ptr = 9, runlen = 508, "
            "bufsize = 517, pagepos = 4064",
            9,
        ),
        (
            bytes([0x81, 0x81]),
            1,
            "Invalid data in compression buffer:read ptr = 2, bufsize = 2, pagepos = 8",
            2,
        ),
        (
            bytes([0xFF] * 8 + [0x89]),
            1,
            "Invalid data in compression buffer:read ptr = 9, bufsize = 9, pagepos = 4100",
            9,
        ),
    ],
)
def test_libxc_errors_verbatim(data: bytes, n: int, message: str, pos: int) -> None:
    out = np.zeros((n, PAGE), dtype=np.uint8)
    with pytest.raises(StreamMalformed) as ei:
        CheckpointDecoder(data, [(0, 1000)]).decode_into(out, pfns=[0x10 + i for i in range(n)])
    e = ei.value
    assert e.message == message
    assert e.offset == 1000 + pos
    assert e.field == "compressed_data.page"
    assert e.value == 0x10 + n - 1


_PIECE = st.one_of(
    st.just(b"\x00"),  # EMPTY
    st.integers(0, 255).map(lambda b: b"\x80" + bytes([b]) * PAGE),  # FULL
    st.integers(0, 2**32 - 1).map(lambda s: compress_page(rand_page(s), rand_page(s + 1))),
    st.binary(min_size=1, max_size=12),  # markers of any kind, hostile ones included
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(_PIECE, max_size=40),
    st.integers(0, 3),
    st.integers(0, 2**16),
    st.booleans(),
)
def test_stretches_decode_as_page_by_page(
    pieces: list[bytes], extra: int, cut: int, truncate: bool
) -> None:
    """Stretches of FULL and EMPTY pages are decoded at once: the pages, the cursor and
    any error (message, offset, page) are those of decoding one page per call."""
    data = b"".join(pieces)
    if truncate:
        data = data[: cut % (len(data) + 1)]
    n = len(pieces) + extra
    prev = np.stack(
        [np.frombuffer(rand_page(1000 + i), np.uint8) for i in range(n)]
        or [np.zeros(PAGE, np.uint8)]
    )[:n]
    pfns = [0x40 + 3 * i for i in range(n)]
    segments = [(0, 500), (len(data) // 2, 9000)]

    def run(step: int) -> tuple[np.ndarray, int, tuple[str, int | None, int | None] | None]:
        out = prev.copy()
        dec = CheckpointDecoder(data, segments)
        err = None
        try:
            for i in range(0, n, step):
                dec.decode_into(out[i : i + step], pfns=pfns[i : i + step])
        except StreamMalformed as e:
            err = (e.message, e.offset, e.value)
        return out, dec.pos, err

    whole, one = run(max(n, 1)), run(1)
    assert whole[2] == one[2]
    assert whole[1] == one[1]
    assert np.array_equal(whole[0], one[0])


def test_offsets_map_across_payloads() -> None:
    dec = CheckpointDecoder(b"\x00\x00\x81\x00", [(0, 50), (2, 900)])
    with pytest.raises(StreamMalformed) as ei:
        dec.decode_into(np.zeros((3, PAGE), dtype=np.uint8))
    assert ei.value.offset == 901
    assert ei.value.value == 2


def test_decoder_rejects_wrong_array() -> None:
    with pytest.raises(ValueError):
        CheckpointDecoder(b"\x00").decode_into(np.zeros((1, 4095), dtype=np.uint8))


# --- encoder ----------------------------------------------------------------------------


def test_encoder_markers() -> None:
    old = rand_page(1)
    assert compress_page(old, old) == b"\x00"
    new = bytearray(old)
    new[4:8] = bytes(b ^ 0xFF for b in old[4:8])
    enc = compress_page(bytes(new), old)
    assert enc == bytes([0x81, 0x01]) + bytes(new[4:8]) + skip(1022)
    every = bytes(b ^ 1 for b in old)
    enc = compress_page(every, old)
    assert len(enc) == WORST_COMP_PAGE_SIZE
    assert enc[0] == 127 and enc[-33] == 8


spans = st.lists(
    st.tuples(st.integers(0, 1023), st.integers(1, 300), st.integers(0, 2**32 - 1)), max_size=6
)


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 1000), edits=spans)
def test_encode_decode_inverse(seed: int, edits: list[tuple[int, int, int]]) -> None:
    old = rand_page(seed)
    words = np.frombuffer(old, dtype="<u4").copy()
    for off, n, val in edits:
        words[off : off + n] = val
    new = words.tobytes()
    enc = compress_page(new, old)
    assert len(enc) <= WORST_COMP_PAGE_SIZE
    assert enc[0] not in (0x00, 0x80) or new == old
    dec = CheckpointDecoder(enc)
    out = pages(old)
    dec.decode_into(out)
    assert dec.pos == len(enc)
    assert out.tobytes() == new


# --- LRU cache and the sender's staging ------------------------------------------------------


def test_delta_cache_lru() -> None:
    c = DeltaCache(2)
    c.store(1, "a")
    c.store(2, "b")
    assert c.lookup(1) == "a"  # 1 becomes most recent
    c.store(3, "c")  # evicts 2
    assert 2 not in c and 1 in c and 3 in c
    c.invalidate(3)
    assert len(c) == 1


def _content_of(store: dict[tuple[int, object], bytes]):  # type: ignore[no-untyped-def]
    def content(pfns: list[int], tokens: list[object]) -> np.ndarray:
        if not pfns:
            return np.zeros((0, PAGE), dtype=np.uint8)
        return pages(*(store[(p, t)] for p, t in zip(pfns, tokens, strict=True)))

    return content


def test_compressor_sender_semantics() -> None:
    store: dict[tuple[int, object], bytes] = {}
    for pfn in range(4):
        for ver in range(3):
            page = bytearray(rand_page(pfn))
            page[:4] = bytes([ver, 0, 0, 0])
            store[(pfn, ver)] = bytes(page)
    comp = Compressor(_content_of(store), cache_size=2)
    # pfns 0,1,2 uncached: FULL; the cache keeps 1 and 2.
    for pfn in range(3):
        assert comp.stage(pfn, 0) is False
    (chunk,) = list(comp.flush())
    assert chunk == b"".join(b"\x80" + store[(p, 0)] for p in range(3))
    # 2 changed (delta), 1 unchanged (EMPTY), 0 was evicted (FULL again).
    comp.stage(2, 1)
    comp.stage(1, 0)
    comp.stage(0, 1)
    (chunk,) = list(comp.flush())
    delta = bytes([0x01]) + store[(2, 1)][:4] + skip(1023)
    assert chunk == delta + b"\x00" + b"\x80" + store[(0, 1)]
    # A page table is always FULL and leaves the cache, before earlier staged pages
    # are looked up: staging 3 (new) then 2 as a page table frees 2's slot for 3.
    comp.stage(3, 0)
    comp.stage(2, 2, pagetable=True)
    comp.stage(0, 1)
    (chunk,) = list(comp.flush())
    assert chunk == b"\x80" + store[(3, 0)] + b"\x80" + store[(2, 2)] + b"\x00"
    assert 2 not in comp.cache and 0 in comp.cache and 3 in comp.cache


def test_compressor_stage_full_and_chunk_limit() -> None:
    store = {(p, 0): rand_page(p) for p in range(5)}
    comp = Compressor(_content_of(store), stage_pages=3, chunk_limit=2 * FULL_PAGE_SIZE)
    assert [comp.stage(p, 0) for p in range(3)] == [False, False, True]
    chunks = list(comp.flush())
    assert [len(c) for c in chunks] == [2 * FULL_PAGE_SIZE, FULL_PAGE_SIZE]
    assert list(comp.flush()) == []
