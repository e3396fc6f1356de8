"""``xlpy convert --to legacy`` (v2 → a xen-4.3 xl sender's stream) against the pipe limit.

Input: ``bench_inspect``'s cached ``xlpy gen`` stream of ``ctx.size`` memory (HVM
and PV), turned once into an ``xl save``-style v2 file by ``xlpy convert -x -f
libxl`` and cached.  Measured, each fed by ``cat FILE |`` and writing to
/dev/null: ``cat | cat`` and ``xlpy convert --to legacy --sender xen-4.3
--toolstack xl``; throughput, ratio to the pipe and peak RSS (target <= 64 MiB:
the first checkpoint's body waits in a temporary file, not in memory, so the
conversion reads and writes the pages twice; no throughput target is set for
this direction).
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Any

RSS_TARGET_MIB = 64


def _v2_file(ctx: Any, helper: Any, guest: str) -> Path:
    """The cached v2 ``xl save`` file of ``guest`` (converted once from the legacy stream)."""
    path = ctx.cache / f"tolegacy-{guest}-{ctx.size >> 20}M.v2"
    if path.exists():
        return path
    src = helper.stream_file(ctx, guest)
    tmp = path.with_suffix(".tmp")
    subprocess.run(
        [*ctx.xlpy, "convert", "-x", "-f", "libxl", "-i", str(src), "-o", str(tmp)], check=True
    )
    tmp.rename(path)
    return path


def run(ctx: Any) -> list[dict[str, Any]]:
    helper = ctx.module("inspect")
    xlpy = " ".join(shlex.quote(a) for a in ctx.xlpy)
    rows = []
    for guest in ("hvm", "pv"):
        path = _v2_file(ctx, helper, guest)
        f = shlex.quote(str(path))
        size = path.stat().st_size
        base_s, s, rss = helper.measure_pair(
            ctx,
            f"cat {f} | cat >/dev/null",
            f"cat {f} | {xlpy} convert --to legacy --sender xen-4.3 --toolstack xl "
            "-i 0 -o 1 2>/dev/null >/dev/null",
        )
        rows.append(
            {
                "case": f"{guest} {size >> 20}M v2->legacy",
                "stream_MiB": round(size / 2**20),
                "limit_s": base_s,
                "convert_s": s,
                "MiB/s": size / 2**20 / s,
                "ratio": base_s / s,
                "rss_MiB": rss,
                "target": f"rss<={RSS_TARGET_MIB}",
                "ok": rss <= RSS_TARGET_MIB,
            }
        )
    return rows
