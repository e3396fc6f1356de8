"""``xlpy restore`` of a plain stream into the simulated domain, against the pipe limit.

For a 1 GiB (``ctx.size``) plain HVM and PV stream (the same cached ``xlpy gen`` files
as ``bench_inspect``), side by side in one run:

* ``cat FILE | xlpy restore - --release xen-4.5 --toolstack xl-4.4 --out DIR -q``
  vs ``cat FILE | cat >/dev/null`` (target >= 0.7x pipe throughput);
* for context, vs ``cat FILE | cat >OUT`` (the pipe plus writing a 1 GiB file: the
  simulated domain's ``memory`` has to land in the page cache too);
* peak RSS of the restore process tree (target <= 64 MiB).

Best of ``ctx.repeat`` runs.  One restore is checked first (``--json`` ok, a memory
image of the guest's size); in the timed runs each restore removes its domain directory
(and the file baseline its copy), so dirty pages never pile up across runs.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

PIPE_TARGET = 0.7
RSS_TARGET_MIB = 64


def run(ctx: Any) -> list[dict[str, Any]]:
    helper = ctx.module("inspect")
    xlpy = " ".join(shlex.quote(a) for a in ctx.xlpy)
    rows: list[dict[str, Any]] = []
    for guest in ("hvm", "pv"):
        path = helper.stream_file(ctx, guest)
        f = shlex.quote(str(path))
        size = path.stat().st_size
        work = Path(tempfile.mkdtemp(prefix="bench-restore-", dir=ctx.cache))
        try:
            w = shlex.quote(str(work))
            check = subprocess.run(
                [*ctx.xlpy, "restore", str(path), "--release", "xen-4.5", "--toolstack",
                 "xl-4.4", "--out", str(work / "check"), "--json"],
                capture_output=True, check=False,
            )  # fmt: skip
            doc = json.loads(check.stdout or b"{}")
            if check.returncode != 0 or not doc.get("ok"):
                raise RuntimeError(f"restore of {path} failed: {check.stderr.decode()[-500:]}")
            restored = (work / "check" / "memory").stat().st_size
            shutil.rmtree(work / "check")
            # Each run removes what it wrote, so dirty pages never pile up across runs.
            cmd = (
                f"D=$(mktemp -u -p {w} dom.XXXXXX) && cat {f} | {xlpy} restore - "
                f'--release xen-4.5 --toolstack xl-4.4 -q --out "$D" && rm -rf "$D"'
            )
            # The three take turns, run by run, so load from elsewhere weighs on all alike.
            base_s = file_s = s = float("inf")
            rss = 0.0
            for _ in range(max(1, ctx.repeat)):
                base_s = min(base_s, helper.run_once(ctx, f"cat {f} | cat >/dev/null")[0])
                copy = f"cat {f} | cat >{w}/copy && rm -f {w}/copy"
                file_s = min(file_s, helper.run_once(ctx, copy)[0])
                t, r = helper.run_once(ctx, cmd)
                s, rss = min(s, t), max(rss, r)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        ratio = base_s / s
        rows.append(
            {
                "case": f"{guest} pipe",
                "stream_MiB": round(size / 2**20),
                "memory_MiB": round(restored / 2**20),
                "limit_s": base_s,
                "limit_to_file_s": file_s,
                "restore_s": s,
                "MiB/s": size / 2**20 / s,
                "ratio": ratio,
                "ratio_to_file": file_s / s,
                "target": f">={PIPE_TARGET}",
                "rss_MiB": rss,
                "ok": ratio >= PIPE_TARGET and rss <= RSS_TARGET_MIB,
            }
        )
    return rows
