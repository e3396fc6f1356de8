"""``xlpy convert --to legacy`` (v2 → a xen-4.3 xl sender's stream) against the pipe limit.

Input: ``bench_inspect``'s cached ``xlpy gen`` stream of ``ctx.size`` memory (HVM
and PV), turned once into an ``xl save``-style v2 file by ``xlpy convert -x -f
libxl`` and cached.  Measured, each fed by ``cat FILE |`` and writing to
/dev/null: ``cat | cat`` and ``xlpy convert --to legacy --sender xen-4.3
--toolstack xl``; throughput, ratio to the pipe and peak RSS (target <= 64 MiB:
the first checkpoint's body waits in a temporary file, not in memory; its pages
are spliced into it and sent out of it in the kernel, so they are copied once, into
the file's page cache).  The row ``splice floor`` is that copy alone: ``cat FILE |``
spliced into a temporary file by the same ByteSource.transfer and dropped, the
best a spooling converter can do on this machine.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Any

RSS_TARGET_MIB = 64
#: The issue's target: ``convert --to legacy`` at 0.8x the pipe limit or better.
PIPE_TARGET = 0.8
#: stdin spliced into an unlinked temporary file and dropped: the spool's copy alone.
_SPLICE_FLOOR = """
import tempfile
from xlpy.errors import StreamTruncated
from xlpy.stream.source import ByteSource
src = ByteSource(0)
with tempfile.TemporaryFile() as spool:
    try:
        while True:
            src.transfer(spool.fileno(), [(None, 1 << 22)])
    except StreamTruncated:
        pass
"""


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
    alternate = ctx.module("convert")._alternate
    xlpy = " ".join(shlex.quote(a) for a in ctx.xlpy)
    floor = f"{shlex.quote(ctx.python)} -c {shlex.quote(_SPLICE_FLOOR)}"
    rows = []
    for guest in ("hvm", "pv"):
        path = _v2_file(ctx, helper, guest)
        f = shlex.quote(str(path))
        size = path.stat().st_size
        best, rss = alternate(
            ctx,
            helper,
            {
                "limit": f"cat {f} | cat >/dev/null",
                "floor": f"cat {f} | {floor}",
                "ours": f"cat {f} | {xlpy} convert --to legacy --sender xen-4.3 --toolstack xl "
                "-i 0 -o 1 2>/dev/null >/dev/null",
            },
        )
        s = best["ours"]
        rows.append(
            {
                "case": f"{guest} {size >> 20}M v2->legacy",
                "stream_MiB": round(size / 2**20),
                "limit_s": best["limit"],
                "floor_s": best["floor"],
                "convert_s": s,
                "MiB/s": size / 2**20 / s,
                "ratio": best["limit"] / s,
                "floor_ratio": best["limit"] / best["floor"],
                "rss_MiB": rss["ours"],
                "target": f">={PIPE_TARGET}, rss<={RSS_TARGET_MIB}",
                "ok": best["limit"] / s >= PIPE_TARGET and rss["ours"] <= RSS_TARGET_MIB,
            }
        )
    return rows
