"""Remus checkpoint compression (§6.4, ``xc_compression.c``): decoder and sender model.

The decoder turns the concatenated ``XC_SAVE_ID_COMPRESSED_DATA`` payloads of
one checkpoint into page contents, one page per data-bearing pfn entry in
entry order, against the receiver's copy from the previous checkpoint (a
"skip" keeps the old bytes).  One cursor runs across the whole checkpoint, as
in ``apply_batch``.  Its errors are libxc's own messages, verbatim.

The encoder reproduces the sender: an LRU cache of ``DELTA_CACHE_SIZE`` page
copies indexed by pfn, page tables always sent FULL and evicted, uncached pfns
sent FULL and inserted, cached ones as RUN/SKIP lists over 4-byte words (runs
of at most 127 words) or EMPTY when nothing changed; pages are staged
(``PAGE_BUFFER_SIZE`` = 8192 pages) and compressed into chunks when the stage
fills or the checkpoint ends.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import cast

import numpy as np
from numpy.lib.stride_tricks import as_strided

from xlpy.errors import StreamMalformed
from xlpy.stream.legacy import format as F

PAGE = F.PAGE_SIZE
WORDS_PER_PAGE = PAGE // 4
#: FULL marker + page.
FULL_PAGE_SIZE = PAGE + 1
#: 8 runs of 127 words + 1 run of 8 words + 9 markers (``WORST_COMP_PAGE_SIZE``).
WORST_COMP_PAGE_SIZE = PAGE + 9
#: Pages the sender stages before it must compress (``PAGE_BUFFER_SIZE``).
STAGE_PAGES = 8192

#: ``(unsigned int)flag`` where ``flag`` is a signed ``char``: libxc prints a
#: SKIP marker's flag as 0xFFFFFF80.
_FLAG_AS_PRINTED = {0: 0, 0x80: 0xFFFFFF80}


class CheckpointDecoder:
    """Decodes one checkpoint's compressed page stream (format B).

    ``data`` is the concatenation of the checkpoint's -12 payloads;
    ``segments`` optionally maps buffer positions to stream offsets as
    ``(buffer_pos, stream_offset)`` pairs in increasing order, one per payload.
    """

    def __init__(
        self,
        data: bytes | bytearray | memoryview,
        segments: Sequence[tuple[int, int]] = (),
        *,
        pos: int = 0,
    ) -> None:
        self.data = data
        self.segments = tuple(segments)
        #: libxc's ``compbuf_pos``: the cursor persists across batches.
        self.pos = pos

    def stream_offset(self, pos: int) -> int | None:
        """Absolute input offset of buffer position ``pos``, if segments were given."""
        found: int | None = None
        for start, off in self.segments:
            if start > pos:
                break
            found = off + (pos - start)
        return found

    def _fail(self, message: str, pos: int, page: int) -> StreamMalformed:
        return StreamMalformed(
            message,
            offset=self.stream_offset(pos),
            field="compressed_data.page",
            value=page,
        )

    def decode_into(self, pages: np.ndarray, *, pfns: Sequence[int] | None = None) -> None:
        """Decode ``len(pages)`` pages into ``pages`` (uint8, shape (n, 4096)) in place.

        ``pages`` must hold the previous checkpoint's contents of the same
        pfns (a SKIP keeps them).  ``pfns`` (one per row) only improves the
        error message.  On error the pages decoded so far stay written, as
        in libxc, and :class:`StreamMalformed` carries libxc's message, the
        input offset of the read pointer and the page (pfn or row) in ``value``.
        """
        if pages.dtype != np.uint8 or pages.ndim != 2 or pages.shape[1] != PAGE:
            raise ValueError("pages must be a uint8 array of shape (n, 4096)")
        if not pages.flags.c_contiguous:
            raise ValueError("pages must be C-contiguous")
        dst = pages.reshape(-1).data.cast("B")
        buf = self.data
        # slices of a view copy once, into the page (a bytes slice would copy twice)
        src = memoryview(buf).cast("B")
        arr = np.frombuffer(src, dtype=np.uint8)
        size = len(buf)
        pos = self.pos
        count = pages.shape[0]
        i = 0
        while i < count:
            m = buf[pos] if pos < size else -1
            if m == 0:
                # EMPTY pages come in stretches (an unchanged working set): one scan each
                k = _same(arr[pos : pos + count - i], 0)
                pos += k
                i += k
            elif m == 0x80:
                fits = min(count - i, (size - pos) // FULL_PAGE_SIZE)
                if not fits:
                    self.pos = pos
                    raise self._fail(
                        "Out of bounds exception in compression buffer (b):"
                        f"read ptr = {pos}, bufsize = {size}",
                        pos,
                        _page_id(i, pfns),
                    )
                # consecutive FULL pages (pages not in the sender's cache): one copy
                k = _same(arr[pos : pos + fits * FULL_PAGE_SIZE : FULL_PAGE_SIZE], 0x80)
                pages[i : i + k] = as_strided(
                    arr[pos + 1 :], shape=(k, PAGE), strides=(FULL_PAGE_SIZE, 1), writeable=False
                )
                pos += k * FULL_PAGE_SIZE
                i += k
            elif m < 0:
                self.pos = pos
                raise self._fail(
                    "Out of bounds exception in compression buffer (a):"
                    f"read ptr:{pos}, bufsize = {size}",
                    pos,
                    _page_id(i, pfns),
                )
            else:
                pos = self._run_list(dst, i * PAGE, buf, src, pos, size, i, pfns)
                i += 1
        self.pos = pos

    def _run_list(
        self,
        dst: memoryview,
        base: int,
        buf: bytes | bytearray | memoryview,
        src: memoryview,
        pos: int,
        size: int,
        page: int,
        pfns: Sequence[int] | None,
    ) -> int:
        """One run-list page (``default:`` branch of ``uncompress_page``).

        ``d`` is the absolute write position (``base + pagepos``); SKIP markers
        (the commonest: long unchanged stretches come as runs of 0xFF) only
        advance it.
        """
        d = base
        end = base + PAGE
        while True:
            m = buf[pos]
            if m > 0x80:
                d += (m - 0x80) << 2
                pos += 1
            elif m and m < 0x80:
                n = m << 2
                pos += 1
                if pos + n > size or d + n > end:
                    self.pos = pos
                    raise self._fail(
                        "Out of bounds exception in compression "
                        f"buffer (c):read ptr = {pos}, runlen = {n}, "
                        f"bufsize = {size}, pagepos = {d - base}",
                        pos,
                        _page_id(page, pfns),
                    )
                dst[d : d + n] = src[pos : pos + n]
                pos += n
                d += n
            else:
                self.pos = pos
                raise self._fail(
                    "Zero length run encountered for normal page: "
                    f"buffer (d):read ptr = {pos}, flag = {_FLAG_AS_PRINTED[m]}, "
                    f"bufsize = {size}, pagepos = {d - base}",
                    pos,
                    _page_id(page, pfns),
                )
            if d >= end or pos >= size:
                break
        if d != end:
            self.pos = pos
            raise self._fail(
                "Invalid data in compression buffer:"
                f"read ptr = {pos}, bufsize = {size}, pagepos = {d - base}",
                pos,
                _page_id(page, pfns),
            )
        return pos


#: Markers looked at first when measuring a stretch of one kind (doubled while it lasts).
_SCAN_FIRST = 16


def _same(markers: np.ndarray, value: int) -> int:
    """How many of ``markers`` (at least the first, which is ``value``) equal ``value``
    before the first that does not: scanned in doubling windows, so a short stretch
    costs a short scan."""
    start, width = 1, _SCAN_FIRST
    while start < markers.size:
        window = markers[start : start + width]
        off = np.flatnonzero(window != value)
        if off.size:
            return start + int(off[0])
        start += width
        width *= 2
    return int(markers.size)


def _page_id(i: int, pfns: Sequence[int] | None) -> int:
    return int(pfns[i]) if pfns is not None else i


def decompress(
    data: bytes,
    previous: np.ndarray,
    *,
    segments: Sequence[tuple[int, int]] = (),
    pfns: Sequence[int] | None = None,
) -> np.ndarray:
    """Decode a checkpoint's compressed stream against ``previous`` (n, 4096) uint8.

    Returns a new array with the decoded pages; ``previous`` is not modified.
    See :meth:`CheckpointDecoder.decode_into` for errors.
    """
    out = np.array(previous, dtype=np.uint8, order="C", copy=True)
    CheckpointDecoder(data, segments).decode_into(out, pfns=pfns)
    return out


#: Pages decoded at a time by :func:`check_structure` (its scratch space: 4 MiB).
_CHECK_PAGES = F.MAX_BATCH_SIZE


def check_structure(data: bytes, pages: int, *, segments: Sequence[tuple[int, int]] = ()) -> None:
    """Check that ``data`` (a checkpoint's -12 payloads) encodes ``pages`` pages.

    Without the previous checkpoint's content: the pages are decoded into scratch
    space (a SKIP leaves whatever is there), which follows exactly the path of
    :meth:`CheckpointDecoder.decode_into`, so a bad run list fails with libxc's
    message and offset as a receiver would; ``value`` is the page's index in the
    checkpoint.
    """
    decoder = CheckpointDecoder(data, segments)
    scratch = np.empty((min(pages, _CHECK_PAGES), PAGE), np.uint8)
    done = 0
    while done < pages:
        n = min(pages - done, _CHECK_PAGES)
        decoder.decode_into(scratch[:n], pfns=range(done, done + n))
        done += n


# --- encoder ---------------------------------------------------------------------------


def _split(start: int, length: int) -> Iterator[tuple[int, int]]:
    """Cut ``length`` words into runs of at most 127 words, in order."""
    while length > 0:
        n = min(length, F.COMP_MAX_RUN_WORDS)
        yield start, n
        start += n
        length -= n


def compress_page(new: bytes | np.ndarray, old: bytes | np.ndarray) -> bytes:
    """``compress_page()``: the RUN/SKIP list of ``new`` against ``old``, or EMPTY."""
    nw = np.frombuffer(new, dtype="<u4") if not isinstance(new, np.ndarray) else new.view("<u4")
    ow = np.frombuffer(old, dtype="<u4") if not isinstance(old, np.ndarray) else old.view("<u4")
    diff = nw != ow
    if not diff.any():
        return b"\x00"
    edges = np.flatnonzero(diff[1:] != diff[:-1]) + 1
    bounds = [0, *edges.tolist(), WORDS_PER_PAGE]
    raw = new if isinstance(new, (bytes, bytearray)) else bytes(np.ascontiguousarray(new).data)
    out = bytearray()
    copying = bool(diff[0])
    for a, b in itertools.pairwise(bounds):
        for s, n in _split(a, b - a):
            if copying:
                out.append(n)
                out += raw[4 * s : 4 * (s + n)]
            else:
                out.append(0x80 | n)
        copying = not copying
    return bytes(out)


class DeltaCache:
    """The sender's LRU page cache (``DELTA_CACHE_SIZE`` slots), keyed by pfn.

    Values are whatever the caller uses to recover the cached copy: the page
    bytes themselves, or a cheaper token (e.g. a content version) when the
    content can be regenerated.
    """

    def __init__(self, capacity: int = F.DELTA_CACHE_SIZE) -> None:
        self.capacity = capacity
        self._lru: OrderedDict[int, object] = OrderedDict()

    def __contains__(self, pfn: int) -> bool:
        return pfn in self._lru

    def __len__(self) -> int:
        return len(self._lru)

    def invalidate(self, pfn: int) -> None:
        """``invalidate_cache_page``: a page-table page leaves the cache."""
        self._lru.pop(pfn, None)

    def lookup(self, pfn: int) -> object | None:
        """``get_cache_page``: the cached token (moved to the head) or ``None``."""
        tok = self._lru.get(pfn)
        if tok is not None:
            self._lru.move_to_end(pfn)
        return tok

    def store(self, pfn: int, token: object) -> None:
        """Put ``pfn`` at the head with ``token``, evicting the LRU tail if full."""
        if pfn in self._lru:
            self._lru.move_to_end(pfn)
        elif len(self._lru) >= self.capacity:
            self._lru.popitem(last=False)
        self._lru[pfn] = token


#: Fetches page contents in bulk: ``(pfns, tokens) -> uint8 array (n, 4096)``.
PageSource = Callable[[list[int], list[object]], np.ndarray]

#: Pages whose contents are fetched at once while compressing (bounds memory).
_FETCH_BLOCK = 256


class Compressor:
    """The sender side of one Remus stream: staging + LRU cache + chunking.

    ``stage(pfn, token, pagetable=...)`` queues a data page in entry order and
    returns True when the stage is full: the caller must then write the -12
    payloads of ``flush()`` at once, as it must at the end of a checkpoint.
    ``flush()`` yields payloads one at a time (each up to ~16 MiB), assembled
    in one buffer kept for the stream; with ``reuse_buffer`` a payload is a
    memoryview of that buffer, valid only until the next one is produced
    (a streaming writer then never holds two payloads).
    ``content(pfns, tokens)`` yields page bytes for staged or cached tokens:
    tokens let a deterministic guest model avoid holding 8192 page copies (a
    token may simply be the page bytes).

    Unlike libxc, a page is assigned a cache slot only once its encoding fits
    the chunk: libxc's ``get_cache_page`` claims the slot before
    ``add_full_page`` finds the buffer full, so the retried page is then
    delta-encoded against the evicted page's bytes (a sender bug that
    corrupts the receiver's copy; we do not reproduce it).
    """

    def __init__(
        self,
        content: PageSource,
        *,
        cache_size: int = F.DELTA_CACHE_SIZE,
        stage_pages: int = STAGE_PAGES,
        chunk_limit: int = F.max_compressed_chunk(8),
        reuse_buffer: bool = False,
    ) -> None:
        self._content = content
        self.cache = DeltaCache(cache_size)
        self._stage: list[tuple[int, object, bool]] = []
        self._stage_pages = stage_pages
        self._limit = chunk_limit
        self._reuse = reuse_buffer
        self._buf: bytearray | None = None

    def stage(self, pfn: int, token: object, *, pagetable: bool = False) -> bool:
        """``xc_compression_add_page``; True when the stage is full (flush now)."""
        if pagetable:
            # Evicted at staging time, before earlier staged pages are looked up.
            self.cache.invalidate(pfn)
        self._stage.append((pfn, token, pagetable))
        return len(self._stage) >= self._stage_pages

    def flush(self) -> Iterator[bytes]:
        """``write_compressed``: compress every staged page into -12 payloads."""
        if self._buf is None:
            self._buf = bytearray(self._limit)
        out = self._buf
        size = 0
        for b in range(0, len(self._stage), _FETCH_BLOCK):
            block = self._stage[b : b + _FETCH_BLOCK]
            pfns = [pfn for pfn, _, _ in block]
            olds: list[object | None] = []
            for pfn, token, pagetable in block:
                if pagetable:
                    olds.append(None)
                else:
                    olds.append(self.cache.lookup(pfn))
                    self.cache.store(pfn, token)
            new = self._content(pfns, [tok for _, tok, _ in block])
            have_old = [i for i, o in enumerate(olds) if o is not None]
            old = self._content([pfns[i] for i in have_old], [olds[i] for i in have_old])
            old_row = dict(zip(have_old, range(len(have_old)), strict=True))
            for i in range(len(block)):
                row = old_row.get(i)
                need = FULL_PAGE_SIZE if row is None else WORST_COMP_PAGE_SIZE
                if size + need > self._limit:
                    yield self._payload(size)
                    size = 0
                if row is None:
                    out[size] = F.COMP_FULL
                    out[size + 1 : size + FULL_PAGE_SIZE] = new[i].data
                    size += FULL_PAGE_SIZE
                else:
                    enc = compress_page(new[i], old[row])
                    out[size : size + len(enc)] = enc
                    size += len(enc)
        self._stage.clear()
        if size:
            yield self._payload(size)

    def _payload(self, size: int) -> bytes:
        assert self._buf is not None
        view = memoryview(self._buf)[:size]
        if self._reuse:
            # Valid until the next payload is produced (see ``reuse_buffer``).
            return cast(bytes, view)
        return bytes(view)
