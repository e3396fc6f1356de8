"""``xlpy inspect`` throughput and memory against the machine's physical limits.

For a 1 GiB HVM and a 1 GiB PV stream (``ctx.size``), side by side in one run:

* from a file: ``xlpy inspect FILE`` vs ``cat FILE >/dev/null`` (target ≥ 0.5x);
* from a pipe: ``cat FILE | xlpy inspect -`` vs ``cat FILE | cat >/dev/null`` (target ≥ 0.8x);
* peak RSS of the inspect process tree (target ≤ 64 MiB, whatever the guest size).

Ratios are throughputs (baseline time / inspect time), best of ``ctx.repeat``
alternating runs each, with the file in the page cache (generated just before, read once
to warm it).  Streams come from ``xlpy gen`` (xen-4.3, xl framing, plain save)
and are cached under ``.cache/bench/``.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

FILE_TARGET = 0.5
PIPE_TARGET = 0.8
RSS_TARGET_MIB = 64

#: Runs a shell command and reports its wall time and the peak RSS of its
#: process tree (RUSAGE_CHILDREN of a fresh process covers only that command).
_MEASURE = """
import resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.call(["/bin/sh", "-c", sys.argv[1]], stdout=subprocess.DEVNULL)
dt = time.perf_counter() - t
print(dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc)
"""


def run_once(ctx: Any, cmd: str) -> tuple[float, float]:
    """One run of ``cmd``: wall seconds and peak RSS in MiB."""
    out = subprocess.run(
        [ctx.python, "-c", _MEASURE, cmd], capture_output=True, text=True, check=True
    ).stdout.split()
    if int(out[2]) != 0:
        raise RuntimeError(f"{cmd!r} exited {out[2]}")
    return float(out[0]), int(out[1]) / 1024


def measure_pair(ctx: Any, base: str, cmd: str) -> tuple[float, float, float]:
    """Best wall times of ``base`` and ``cmd`` and the peak RSS of ``cmd``.

    The two alternate run by run, so that load from elsewhere on the machine
    weighs on both alike.
    """
    best_base, best, rss = float("inf"), float("inf"), 0.0
    for _ in range(max(1, ctx.repeat)):
        best_base = min(best_base, run_once(ctx, base)[0])
        t, r = run_once(ctx, cmd)
        best, rss = min(best, t), max(rss, r)
    return best_base, best, rss


def stream_file(ctx: Any, guest: str) -> Path:
    """The cached stream for ``guest`` of ``ctx.size`` bytes of memory, generated once."""
    mib = ctx.size >> 20
    path = ctx.cache / f"inspect-{guest}-{mib}M.bin"
    if path.exists():
        return path
    tmp = path.with_suffix(".tmp")
    subprocess.run(
        [*ctx.xlpy, "gen", "--guest", guest, "--sender", "xen-4.3", "--toolstack", "xl",
         "--mode", "plain", "--memory", f"{mib}M", "--seed", "1", "-o", str(tmp)],
        check=True,
    )  # fmt: skip
    tmp.rename(path)
    return path


def run(ctx: Any) -> list[dict[str, Any]]:
    if str(ctx.root) not in sys.path:
        sys.path.insert(0, str(ctx.root))
    xlpy = " ".join(shlex.quote(a) for a in ctx.xlpy)
    rows: list[dict[str, Any]] = []
    for guest in ("hvm", "pv"):
        t0 = time.monotonic()
        path = stream_file(ctx, guest)
        gen_s = time.monotonic() - t0
        f = shlex.quote(str(path))
        size = path.stat().st_size
        check = subprocess.run(
            [*ctx.xlpy, "inspect", str(path), "--json"], capture_output=True, check=False
        )
        summary = json.loads(check.stdout)
        if check.returncode != 0 or not summary["complete"]:
            raise RuntimeError(f"inspect did not read {path} completely: {summary['error']}")
        pages = sum(c["pages"] for c in summary["checkpoints"])
        cases = {
            "file": (f"cat {f} >/dev/null", f"{xlpy} inspect {f} --json", FILE_TARGET),
            "pipe": (
                f"cat {f} | cat >/dev/null",
                f"cat {f} | {xlpy} inspect - --json",
                PIPE_TARGET,
            ),
        }
        for case, (base_cmd, cmd, target) in cases.items():
            base_s, s, rss = measure_pair(ctx, base_cmd, cmd)
            ratio = base_s / s
            rows.append(
                {
                    "case": f"{guest} {case}",
                    "stream_MiB": round(size / 2**20),
                    "pages": pages,
                    "limit_s": base_s,
                    "inspect_s": s,
                    "MiB/s": size / 2**20 / s,
                    "ratio": ratio,
                    "target": f">={target}",
                    "rss_MiB": rss,
                    "gen_s": gen_s,
                    "ok": ratio >= target and rss <= RSS_TARGET_MIB,
                }
            )
            gen_s = 0.0
    return rows
