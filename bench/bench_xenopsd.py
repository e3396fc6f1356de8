"""``xlpy convert`` of a xenopsd image against the pipe limit and Xen's converter.

A ``ctx.size`` (default 1 GiB) HVM ``XenSavedDomain`` image (``xlpy gen --toolstack
xenopsd-legacy``, a 32-bit dom0's libxc image and its QEMU record), cached, fed by
``cat FILE |`` and written to /dev/null:

* ``cat | cat`` (the pipe limit; target: xlpy convert >= 0.8x its throughput);
* ``xlpy convert`` of the whole image into a structured one (Libxc v2 + Qemu_trad);
* Debian's ``convert-legacy-stream --skip-qemu -w 32 -g hvm`` on the image after its
  signature, as xenopsd runs it at every restore (target ratio >= 1.0: our one pass,
  records included, is no slower than the conversion xenopsd does for the libxc part);
* peak RSS (target <= 64 MiB for xlpy).
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Any

PIPE_TARGET = 0.8
XEN_TARGET = 1.0
RSS_TARGET_MIB = 64


def _image(ctx: Any) -> Path:
    path = ctx.cache / f"xenopsd-legacy-hvm-{ctx.size >> 20}M.img"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        subprocess.run(
            [*ctx.xlpy, "gen", "--guest", "hvm", "--sender", "xen-4.0", "--toolstack",
             "xenopsd-legacy", "--width", "32", "--memory", f"{ctx.size >> 20}M", "--seed", "1",
             "-o", str(tmp)],
            check=True,
        )  # fmt: skip
        tmp.rename(path)
    return path


def run(ctx: Any) -> list[dict[str, Any]]:
    helper = ctx.module("inspect")
    convert = ctx.module("convert")
    path = _image(ctx)
    f = shlex.quote(str(path))
    xlpy = " ".join(shlex.quote(a) for a in ctx.xlpy)
    cmds = {
        "limit": f"cat {f} | cat >/dev/null",
        "ours": f"cat {f} | {xlpy} convert >/dev/null",
    }
    xen = convert._xen_converter(ctx)
    if xen is not None:
        tool, pydir = xen
        cmds["xen"] = (
            f"tail -c +16 {f} | PYTHONPATH={shlex.quote(pydir)} {ctx.python} "
            f"{shlex.quote(tool)} -i 0 -o 1 --skip-qemu -w 32 -g hvm -f libxc >/dev/null"
        )
    best, rss = convert._alternate(ctx, helper, cmds)
    size = path.stat().st_size
    s = best["ours"]
    row: dict[str, Any] = {
        "case": f"xenopsd-legacy hvm {size >> 20}M pipe",
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
    return [row]
