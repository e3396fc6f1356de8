#!/usr/bin/env python3
"""Run every ``bench/bench_*.py`` module and print one table.

Each module exposes ``run(ctx: Context) -> list[dict]``; a row is a flat dict
(``bench``, ``case``, then whatever figures it measured: seconds, MiB/s,
ratios against physical limits, peak RSS, ``target``/``ok``).  ``make bench``
runs this; ``BENCH_ARGS`` pass options (``--only inspect --size 256M``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from xlpy.cli.common import size_arg  # noqa: E402 - needs ROOT on sys.path


@dataclass
class Context:
    """What a benchmark module may use: paths, the xlpy command, sizes, repeats."""

    root: Path
    cache: Path
    python: str
    xlpy: list[str]
    size: int
    repeat: int
    extra: dict[str, Any] = field(default_factory=dict)

    def module(self, name: str) -> ModuleType:
        """Another benchmark module (``bench/bench_NAME.py``), to reuse its streams and runners."""
        return load(self.root / "bench" / f"bench_{name}.py")


def xlpy_command(python: str) -> list[str]:
    venv = ROOT / ".venv" / "bin" / "xlpy"
    return [str(venv)] if venv.exists() else [python, "-m", "xlpy"]


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if v < 100 else f"{v:.0f}"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    return "" if v is None else str(v)


def table(rows: list[dict[str, Any]]) -> str:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--only", action="append", help="run only bench_NAME (repeatable)")
    p.add_argument("--size", type=size_arg, default="1G", help="guest/stream size (default 1G)")
    p.add_argument("--repeat", type=int, default=3, help="runs per measurement (best kept)")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = p.parse_args(argv)
    ctx = Context(
        root=ROOT,
        cache=ROOT / ".cache" / "bench",
        python=sys.executable,
        xlpy=xlpy_command(sys.executable),
        size=args.size,
        repeat=args.repeat,
    )
    ctx.cache.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    rows: list[dict[str, Any]] = []
    failed = False
    for path in sorted((ROOT / "bench").glob("bench_*.py")):
        name = path.stem.removeprefix("bench_")
        if args.only and name not in args.only:
            continue
        t0 = time.monotonic()
        print(f"== {name}", file=sys.stderr, flush=True)
        try:
            got = load(path).run(ctx)
        except Exception as e:  # one broken benchmark must not hide the others
            print(f"   {name} failed: {type(e).__name__}: {e}", file=sys.stderr)
            failed = True
            continue
        rows += [{"bench": name, **r} for r in got]
        print(f"   {name}: {time.monotonic() - t0:.1f} s", file=sys.stderr)
    if rows:
        print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 1 if failed or any(r.get("ok") is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
