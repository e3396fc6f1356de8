"""``xlpy convert`` against Xen's ``convert-legacy-stream`` and the pipe limit.

For a ``ctx.size`` (default 1 GiB) HVM and PV plain stream (``bench_inspect``'s cached
``xlpy gen`` streams, xl header stripped as libxl hands them to the helper), side
by side in one run, every command fed by ``cat FILE |`` and writing to /dev/null:

* ``cat | cat`` (the pipe limit; target: xlpy convert >= 0.8x its throughput);
* ``xlpy convert --in 0 --out 1 --width 64 --guest G --format libxl`` (libxl's argv);
* Debian's ``convert-legacy-stream`` with the same arguments (target ratio >= 1.0);
* peak RSS of each (target <= 64 MiB for xlpy).

The same rows follow for 4 GiB streams, when ``ctx.size`` is smaller, if the
disk has room for what is not cached yet (about 17 GiB: the generated streams
and their stripped copies, plus a 4 GiB margin); otherwise a row and a message
on stderr say why they were skipped.  ``XLPY_BENCH_CONVERT_4G=0`` leaves them out.

A last row converts a compressed Remus stream (HVM, a quarter of ``ctx.size``,
``REMUS_CHECKPOINTS`` checkpoints, 20 % dirty set; checkpoints 2.. are compressed)
and judges the >= 1 GB/s decode target end to end: page output of the compressed
checkpoints per second of wall time, from checkpoint 1's commit to the end of the
conversion (reading, decoding, spooling and writing included).  A real Remus
stream carries a checkpoint every 200 ms for as long as the guest runs, so the
stream has many checkpoints and the row shows both that overall rate and the
steady state (checkpoints 3.., whose buffers, delta cache and spool pages are
warm); the first compressed checkpoint's own rate, which pays those first-touch
costs, is shown beside them rather than hidden.  Also shown: the rate of the
decoding alone (the converter's own timer around the delta decoder and the page
cache), and one plain copy of as many bytes into fresh memory, for context.
``XLPY_BENCH_CONVERT_PLAIN=0`` runs only this row; ``XLPY_BENCH_PYTHONPATH`` makes
it convert with another checkout's xlpy (a before/after comparison).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

PIPE_TARGET = 0.8
XEN_TARGET = 1.0
DECODE_TARGET = 1e9
RSS_TARGET_MIB = 64
BIG = 4 << 30
#: Free disk kept for everyone else when generating the 4 GiB streams.
DISK_MARGIN = 4 << 30
XL_MAGIC = b"Xen saved domain, xl format\n \0 \r"
#: Checkpoints of the compressed Remus stream (the first is the full copy).
REMUS_CHECKPOINTS = 10

#: Converts the file argv[1]; the progress events give the pages out and the time at
#: each checkpoint's commit (``marks``: [seconds, pages] by checkpoint number).
_DECODE = """
import io, json, sys, time
from xlpy.stream.convert import legacy_to_v2
from xlpy.stream.source import ByteSource
marks = {}
def progress(ev):
    if ev["phase"] in ("checkpoint", "done"):
        marks.setdefault(ev["checkpoint"] if ev["phase"] == "checkpoint" else "done",
                         (time.perf_counter(), ev["pages"]))
t = time.perf_counter()
with open(sys.argv[1], "rb", buffering=0) as f, open("/dev/null", "wb") as out:
    r = legacy_to_v2(ByteSource(f.fileno()), out, fmt="libxl", progress=progress)
dt = time.perf_counter() - t
import numpy as np
src = np.ones((r.decoded_pages, 4096), np.uint8)
t = time.perf_counter()
np.copyto(np.empty_like(src), src)
copy_s = time.perf_counter() - t
print(json.dumps({"pages": r.pages, "decoded": r.decoded_pages, "decode_s": r.decode_seconds,
                  "total_s": dt, "checkpoints": r.checkpoints, "copy_s": copy_s,
                  "marks": {str(k): v for k, v in marks.items()}}))
"""


def _stripped(ctx: Any, helper: Any, guest: str) -> Path:
    """The cached stream of ``guest`` without its xl header (generated once)."""
    path = ctx.cache / f"convert-{guest}-{ctx.size >> 20}M.bin"
    if path.exists():  # the source stream may have been removed since: not needed
        return path
    src = helper.stream_file(ctx, guest)
    with open(src, "rb") as f:
        head = f.read(48)
        assert head.startswith(XL_MAGIC), src
        (optlen,) = struct.unpack_from("<I", head, len(XL_MAGIC) + 12)
        f.seek(48 + optlen)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as out:
            while chunk := f.read(1 << 22):
                out.write(chunk)
    tmp.rename(path)
    return path


def _no_room(ctx: Any) -> str | None:
    """Why the streams of ``ctx.size`` cannot be made on this disk, or None."""
    need = 0
    for guest in ("hvm", "pv"):
        stripped = ctx.cache / f"convert-{guest}-{ctx.size >> 20}M.bin"
        if stripped.exists():
            continue  # made from the inspect stream, which is then not needed
        for path in (stripped, ctx.cache / f"inspect-{guest}-{ctx.size >> 20}M.bin"):
            if not path.exists():
                need += ctx.size + (ctx.size >> 6)  # pages plus headers and batch entries
    if need == 0:
        return None
    free = shutil.disk_usage(ctx.cache).free
    if free >= need + DISK_MARGIN:
        return None
    return (
        f"{need / 2**30:.1f} GiB of streams to generate in {ctx.cache} need "
        f"{(need + DISK_MARGIN) / 2**30:.1f} GiB free (with a {DISK_MARGIN >> 30} GiB "
        f"margin), only {free / 2**30:.1f} GiB are"
    )


def _xen_converter(ctx: Any) -> tuple[str, str] | None:
    root = Path(os.environ.get("XLPY_XEN_CACHE") or Path(ctx.root) / ".cache" / "xen-4.17")
    tool = root / "usr/lib/xen-4.17/bin/convert-legacy-stream"
    pydir = root / "usr/lib/xen-4.17/lib/python"
    if not tool.exists():
        return None
    return str(tool), str(pydir)


def _plain_rows(ctx: Any, helper: Any) -> list[dict[str, Any]]:
    xlpy = " ".join(shlex.quote(a) for a in ctx.xlpy)
    xen = _xen_converter(ctx)
    rows = []
    for guest in ("hvm", "pv"):
        path = _stripped(ctx, helper, guest)
        f = shlex.quote(str(path))
        size = path.stat().st_size
        args = f"--in 0 --out 1 --width 64 --guest {guest} --format libxl"
        cmds = {
            "limit": f"cat {f} | cat >/dev/null",
            "ours": f"cat {f} | {xlpy} convert {args} >/dev/null",
        }
        if xen is not None:
            tool, pydir = xen
            cmds["xen"] = (
                f"cat {f} | PYTHONPATH={shlex.quote(pydir)} {ctx.python} {shlex.quote(tool)} "
                f"-i 0 -o 1 -w 64 -g {guest} -f libxl >/dev/null"
            )
        best, rss = _alternate(ctx, helper, cmds)
        rows.append(pipe_row(f"{guest} {size >> 20}M pipe", size, best, rss))
    return rows


def pipe_row(case: str, size: int, best: dict[str, float], rss: dict[str, float]) -> dict[str, Any]:
    """The row of one ``limit``/``ours``[/``xen``] comparison, judged by the targets."""
    s = best["ours"]
    row: dict[str, Any] = {
        "case": case,
        "stream_MiB": round(size / 2**20),
        "limit_s": best["limit"],
        "convert_s": s,
        "MiB/s": size / 2**20 / s,
        "ratio": best["limit"] / s,
        "target": f">={PIPE_TARGET}",
        "rss_MiB": rss["ours"],
    }
    ok = row["ratio"] >= PIPE_TARGET and rss["ours"] <= RSS_TARGET_MIB
    if "xen" in best:
        row.update({"xen_s": best["xen"], "vs_xen": best["xen"] / s, "xen_rss_MiB": rss["xen"]})
        ok = ok and best["xen"] / s >= XEN_TARGET
    row["ok"] = ok
    return row


def _alternate(
    ctx: Any, helper: Any, cmds: dict[str, str]
) -> tuple[dict[str, float], dict[str, float]]:
    """Best wall time and peak RSS of each command, run in turn ``ctx.repeat`` times so
    that load from elsewhere on the machine weighs on all of them alike."""
    best = dict.fromkeys(cmds, float("inf"))
    rss = dict.fromkeys(cmds, 0.0)
    for _ in range(max(1, ctx.repeat)):
        for name, cmd in cmds.items():
            t, r = helper.run_once(ctx, cmd)
            best[name], rss[name] = min(best[name], t), max(rss[name], r)
    return best, rss


def _remus_file(ctx: Any) -> Path:
    mib = max(ctx.size >> 22, 16)
    path = ctx.cache / f"convert-remus-z-hvm-{mib}M-{REMUS_CHECKPOINTS}cp.bin"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        subprocess.run(
            [*ctx.xlpy, "gen", "--guest", "hvm", "--sender", "xen-4.3", "--toolstack", "xl",
             "--mode", "remus", "--checkpoints", str(REMUS_CHECKPOINTS), "--compress",
             "--dirty", "0.2", "--memory", f"{mib}M", "--seed", "1", "-o", str(tmp)],
            check=True,
        )  # fmt: skip
        tmp.rename(path)
    return path


def _rate(marks: dict[str, list[float]], first: int, last: int | str) -> float:
    """Page output in bytes per second from checkpoint ``first - 1``'s commit to
    checkpoint ``last``'s (``last`` may be ``"done"``)."""
    (t0, p0), (t1, p1) = marks[str(first - 1)], marks[str(last)]
    return (p1 - p0) * 4096 / (t1 - t0)


def _decode_row(ctx: Any) -> dict[str, Any]:
    path = _remus_file(ctx)
    env = dict(os.environ, PYTHONPATH=os.environ.get("XLPY_BENCH_PYTHONPATH", str(ctx.root)))
    best: dict[str, Any] | None = None
    for _ in range(max(1, ctx.repeat)):
        out = subprocess.run(
            [ctx.python, "-c", _DECODE, str(path)], capture_output=True, env=env, check=True
        ).stdout
        got = json.loads(out)
        got["e2e"] = _rate(got["marks"], 2, "done")
        if best is None or got["e2e"] > best["e2e"]:
            best = got
    assert best is not None
    marks, n = best["marks"], best["checkpoints"]
    per_cp = [_rate(marks, k, k) / 1e9 for k in range(2, n + 1)]
    print(
        "   convert: remus GB/s per compressed checkpoint 2.."
        f"{n}: {' '.join(f'{r:.2f}' for r in per_cp)}",
        file=sys.stderr,
        flush=True,
    )
    e2e = best["e2e"]
    return {
        "case": f"remus hvm {path.stat().st_size >> 20}M compressed x{n - 1}",
        "stream_MiB": round(path.stat().st_size / 2**20),
        "convert_s": best["total_s"],
        "MiB/s": path.stat().st_size / 2**20 / best["total_s"],
        "decoded_pages": best["decoded"],
        # the target: pages out of checkpoints 2.. per second of their whole conversion
        "e2e_GB/s": e2e / 1e9,
        # checkpoint 2 alone: it pays the first touch of buffers, delta cache, spool
        "first_GB/s": per_cp[0],
        # checkpoints 3..: the steady state of a long-running Remus stream
        "steady_GB/s": _rate(marks, 3, n) / 1e9 if n >= 3 else None,
        # the decoder and page cache alone (the converter's own timer), for context
        "decode_GB/s": best["decoded"] * 4096 / best["decode_s"] / 1e9,
        # one plain copy of the same bytes into fresh memory on this machine
        "memcpy_GB/s": best["decoded"] * 4096 / best["copy_s"] / 1e9,
        "target": ">=1 GB/s end to end",
        "ok": e2e >= DECODE_TARGET,
    }


def run(ctx: Any) -> list[dict[str, Any]]:
    if os.environ.get("XLPY_BENCH_CONVERT_PLAIN") == "0":
        return [_decode_row(ctx)]
    helper = ctx.module("inspect")
    rows = _plain_rows(ctx, helper)
    if ctx.size < BIG and os.environ.get("XLPY_BENCH_CONVERT_4G") != "0":
        big = dataclasses.replace(ctx, size=BIG)
        reason = _no_room(big)
        if reason is None:
            rows += _plain_rows(big, helper)
        else:
            print(f"   convert: 4 GiB rows SKIPPED: {reason}", file=sys.stderr, flush=True)
            rows.append({"case": "4096M pipe", "skipped": reason})
    rows.append(_decode_row(ctx))
    return rows
