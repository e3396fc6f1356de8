"""``xlpy convert`` against Xen's ``convert-legacy-stream`` and the pipe limit.

For a ``ctx.size`` (default 1 GiB) HVM and PV plain stream (``bench_inspect``'s cached
``xlpy gen`` streams, xl header stripped as libxl hands them to the helper), side
by side in one run, every command fed by ``cat FILE |`` and writing to /dev/null:

* ``cat | cat`` (the pipe limit; target: xlpy convert >= 0.8x its throughput);
* ``xlpy convert --in 0 --out 1 --width 64 --guest G --format libxl`` (libxl's argv);
* Debian's ``convert-legacy-stream`` with the same arguments (target ratio >= 1.0);
* peak RSS of each (target <= 64 MiB for xlpy).

``XLPY_BENCH_CONVERT_4G=1`` adds the same rows for 4 GiB streams (about 8 GiB of
cache on disk).  A last row decodes a compressed Remus stream (HVM, a quarter of
``ctx.size``, 3 checkpoints, 20 % dirty set): page output of the compressed
checkpoints per second of decoding (target >= 1 GB/s), and end to end; for
context, the rate of one plain copy of as many bytes into fresh memory (decoding
has to write every page once and keep the sender's cache copy).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shlex
import struct
import subprocess
from pathlib import Path
from typing import Any

PIPE_TARGET = 0.8
XEN_TARGET = 1.0
DECODE_TARGET = 1e9
RSS_TARGET_MIB = 64
XL_MAGIC = b"Xen saved domain, xl format\n \0 \r"

_DECODE = """
import io, json, sys, time
from xlpy.stream.convert import legacy_to_v2
from xlpy.stream.source import ByteSource
t = time.perf_counter()
with open(sys.argv[1], "rb", buffering=0) as f, open("/dev/null", "wb") as out:
    r = legacy_to_v2(ByteSource(f.fileno()), out, fmt="libxl")
dt = time.perf_counter() - t
import numpy as np
src = np.ones((r.decoded_pages, 4096), np.uint8)
t = time.perf_counter()
np.copyto(np.empty_like(src), src)
copy_s = time.perf_counter() - t
print(json.dumps({"pages": r.pages, "decoded": r.decoded_pages, "decode_s": r.decode_seconds,
                  "total_s": dt, "checkpoints": r.checkpoints, "copy_s": copy_s}))
"""


def _inspect_bench(ctx: Any) -> Any:
    path = Path(ctx.root) / "bench" / "bench_inspect.py"
    spec = importlib.util.spec_from_file_location("bench_inspect", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _stripped(ctx: Any, helper: Any, guest: str) -> Path:
    """The cached stream of ``guest`` without its xl header (generated once)."""
    src = helper.stream_file(ctx, guest)
    path = ctx.cache / f"convert-{guest}-{ctx.size >> 20}M.bin"
    if path.exists():
        return path
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
        s = best["ours"]
        row: dict[str, Any] = {
            "case": f"{guest} {size >> 20}M pipe",
            "stream_MiB": round(size / 2**20),
            "limit_s": best["limit"],
            "convert_s": s,
            "MiB/s": size / 2**20 / s,
            "ratio": best["limit"] / s,
            "target": f">={PIPE_TARGET}",
            "rss_MiB": rss["ours"],
        }
        ok = row["ratio"] >= PIPE_TARGET and rss["ours"] <= RSS_TARGET_MIB
        if xen is not None:
            row.update({"xen_s": best["xen"], "vs_xen": best["xen"] / s, "xen_rss_MiB": rss["xen"]})
            ok = ok and best["xen"] / s >= XEN_TARGET
        row["ok"] = ok
        rows.append(row)
    return rows


def _alternate(
    ctx: Any, helper: Any, cmds: dict[str, str]
) -> tuple[dict[str, float], dict[str, float]]:
    """Best wall time and peak RSS of each command, run in turn ``ctx.repeat`` times so
    that load from elsewhere on the machine weighs on all of them alike."""
    best = dict.fromkeys(cmds, float("inf"))
    rss = dict.fromkeys(cmds, 0.0)
    for _ in range(max(1, ctx.repeat)):
        for name, cmd in cmds.items():
            t, r = helper._once(ctx, cmd)
            best[name], rss[name] = min(best[name], t), max(rss[name], r)
    return best, rss


def _remus_file(ctx: Any) -> Path:
    mib = max(ctx.size >> 22, 16)
    path = ctx.cache / f"convert-remus-z-hvm-{mib}M.bin"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        subprocess.run(
            [*ctx.xlpy, "gen", "--guest", "hvm", "--sender", "xen-4.3", "--toolstack", "xl",
             "--mode", "remus", "--checkpoints", "3", "--compress", "--dirty", "0.2",
             "--memory", f"{mib}M", "--seed", "1", "-o", str(tmp)],
            check=True,
        )  # fmt: skip
        tmp.rename(path)
    return path


def _decode_row(ctx: Any) -> dict[str, Any]:
    path = _remus_file(ctx)
    env = dict(os.environ, PYTHONPATH=str(ctx.root))
    best: dict[str, Any] | None = None
    for _ in range(max(1, ctx.repeat)):
        out = subprocess.run(
            [ctx.python, "-c", _DECODE, str(path)], capture_output=True, env=env, check=True
        ).stdout
        got = json.loads(out)
        if best is None or got["decode_s"] < best["decode_s"]:
            best = got
    assert best is not None
    rate = best["decoded"] * 4096 / best["decode_s"]
    return {
        "case": f"remus hvm {path.stat().st_size >> 20}M compressed",
        "stream_MiB": round(path.stat().st_size / 2**20),
        "convert_s": best["total_s"],
        "MiB/s": path.stat().st_size / 2**20 / best["total_s"],
        "decoded_pages": best["decoded"],
        "decode_GB/s": rate / 1e9,
        # context: one plain copy of the same bytes into fresh memory on this machine
        "memcpy_GB/s": best["decoded"] * 4096 / best["copy_s"] / 1e9,
        "target": ">=1 GB/s decode",
        "ok": rate >= DECODE_TARGET,
    }


def run(ctx: Any) -> list[dict[str, Any]]:
    helper = _inspect_bench(ctx)
    rows = _plain_rows(ctx, helper)
    if os.environ.get("XLPY_BENCH_CONVERT_4G") == "1" and ctx.size < 4 << 30:
        rows += _plain_rows(dataclasses.replace(ctx, size=4 << 30), helper)
    rows.append(_decode_row(ctx))
    return rows
