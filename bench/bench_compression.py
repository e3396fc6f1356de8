"""Remus compression: decoder page-output throughput, encoder speed, ``xlpy gen`` speed/RSS.

Decoder target: >= 1 GB/s of decoded page output (4096 bytes per data-bearing
entry) on a checkpoint of the deterministic guest with a 20 % dirty set, as
the sender would compress it (LRU cache warm from the previous checkpoint).
Also shown, without a target: every page delta-encoded (cache hits, sparse
spans), every page EMPTY, and the pathological worst case (every other word
changed: 1024 markers per page).  The guest is ``min(ctx.size, 256M)`` so
the previous-checkpoint array stays small.

``xlpy gen`` to a pipe (``| cat >/dev/null``): plain PV and HVM streams of
``ctx.size`` memory (target several hundred MB/s, peak RSS <= 64 MiB) and a
compressed 3-checkpoint Remus stream (figures only).
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

import numpy as np

from xlpy.guest import Guest, GuestSpec
from xlpy.stream.legacy.compression import CheckpointDecoder, Compressor, compress_page

DECODE_TARGET_MBS = 1000.0
GEN_TARGET_MBS = 300.0
RSS_TARGET_MIB = 64
DECODE_GUEST_MAX = 256 << 20


def _best(repeat: int, fn: Any) -> float:
    best = float("inf")
    for _ in range(max(1, repeat)):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _sender_checkpoint(guest: Guest) -> tuple[bytes, np.ndarray, np.ndarray, float]:
    """Checkpoint 3's compressed stream as the sender makes it (cache warmed by checkpoint 2).

    Returns the stream, the receiver's previous contents, the pfns, and the
    encoder time for that checkpoint.
    """
    comp = Compressor(
        lambda pfns, vers: guest.pages_at(
            np.asarray(pfns, dtype=np.uint64), np.asarray(vers, dtype=np.int64)
        )
    )

    def stage_all(epoch: int) -> tuple[list[bytes], np.ndarray]:
        pfns = guest.dirty(epoch)
        vers = guest.versions(pfns.astype(np.uint64), epoch)
        out: list[bytes] = []
        for pfn, ver in zip(pfns.tolist(), vers.tolist(), strict=True):
            if comp.stage(pfn, ver):
                out += comp.flush()
        out += comp.flush()
        return out, pfns

    stage_all(2)
    t = time.perf_counter()
    chunks, pfns = stage_all(3)
    enc = time.perf_counter() - t
    prev = guest.pages(pfns.astype(np.uint64), 2)
    return b"".join(chunks), prev, pfns, enc


def _decode_row(
    case: str, data: bytes, prev: np.ndarray, repeat: int, target: bool
) -> dict[str, Any]:
    work = prev.copy()

    def once() -> None:
        work[:] = prev
        CheckpointDecoder(data).decode_into(work)

    dt = _best(repeat, once)
    mbs = prev.shape[0] * 4096 / dt / 1e6
    row: dict[str, Any] = {
        "case": f"decode {case}",
        "pages": prev.shape[0],
        "comp_MB": len(data) / 1e6,
        "s": dt,
        "MB/s": mbs,
    }
    if target:
        row.update(target=f">= {DECODE_TARGET_MBS:.0f} MB/s", ok=mbs >= DECODE_TARGET_MBS)
    return row


def _decode_rows(ctx: Any) -> list[dict[str, Any]]:
    pages = min(ctx.size, DECODE_GUEST_MAX) // 4096
    guest = Guest(GuestSpec(kind="hvm", pages=pages, seed=1, dirty=0.2))
    data, prev, pfns, enc = _sender_checkpoint(guest)
    rows = [_decode_row("sender 20% dirty", data, prev, ctx.repeat, True)]
    rows.append(
        {
            "case": "encode sender 20% dirty",
            "pages": len(pfns),
            "s": enc,
            "MB/s": len(pfns) * 4096 / enc / 1e6,
        }
    )
    # Every page a cache hit: sparse spans against the previous version.
    sub = pfns[:8192].astype(np.uint64)
    old = guest.pages(sub, 2)
    new = guest.pages_at(sub, np.full(sub.shape, 3, dtype=np.int64))
    deltas = b"".join(compress_page(new[i], old[i]) for i in range(len(sub)))
    rows.append(_decode_row("all deltas", deltas, old, ctx.repeat, False))
    rows.append(_decode_row("all EMPTY", bytes(len(sub)), old, ctx.repeat, False))
    n = min(1024, len(sub))  # small --size runs have fewer dirty pages
    worst_old = old[:n]
    flipped = worst_old.copy()
    flipped.view("<u4")[:, ::2] ^= 1
    worst = b"".join(compress_page(flipped[i], worst_old[i]) for i in range(n))
    rows.append(_decode_row("worst (1024 markers/page)", worst, worst_old, ctx.repeat, False))
    return rows


def _gen_rows(ctx: Any) -> list[dict[str, Any]]:
    helper = ctx.module("inspect")
    mem = f"{ctx.size >> 20}M"
    cases = [
        ("gen pv plain", f"--guest pv --sender xen-4.3 --memory {mem}", True),
        ("gen hvm plain xl", f"--guest hvm --sender xen-4.3 --toolstack xl --memory {mem}", True),
        (
            "gen hvm remus compressed",
            f"--guest hvm --sender xen-4.3 --toolstack xl --mode remus --checkpoints 3 "
            f"--compress --memory {mem}",
            False,
        ),
    ]
    rows = []
    xlpy = " ".join(ctx.xlpy)
    for case, args, target in cases:
        gen = f"{xlpy} gen {args} --seed 1 -o -"
        runs = [helper.run_once(ctx, f"{gen} | cat >/dev/null") for _ in range(max(1, ctx.repeat))]
        dt, rss = min(t for t, _ in runs), max(r for _, r in runs)
        out = subprocess.run(
            ["/bin/sh", "-c", f"{gen} | wc -c"], capture_output=True, text=True, check=True
        )
        size = int(out.stdout)
        mbs = size / dt / 1e6
        row: dict[str, Any] = {"case": case, "out_MB": size / 1e6, "s": dt, "MB/s": mbs}
        row["rss_MiB"] = rss
        if target:
            row.update(
                target=f">= {GEN_TARGET_MBS:.0f} MB/s, <= {RSS_TARGET_MIB} MiB",
                ok=mbs >= GEN_TARGET_MBS and rss <= RSS_TARGET_MIB,
            )
        rows.append(row)
    return rows


def run(ctx: Any) -> list[dict[str, Any]]:
    """Decoder and encoder figures, then ``xlpy gen`` throughput and peak RSS."""
    return _decode_rows(ctx) + _gen_rows(ctx)
