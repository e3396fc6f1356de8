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

The targets are ``bench_convert``'s.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Any


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
    return [convert.pipe_row(f"xenopsd-legacy hvm {size >> 20}M pipe", size, best, rss)]
