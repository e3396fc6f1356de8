"""``xlpy repro``: run the LAST_CHECKPOINT outcome matrix (legacy-stream.md §12).

Each cell streams a generated sender's image through a socketpair into the reference
receiver and compares the observed outcome code with the spec's.  Exit 0 when every
cell matches, 1 on any mismatch, 2 on usage errors.  ``--xenopsd`` runs the xenopsd rows
instead (:mod:`xlpy.repro_xenopsd`: does the next header survive the libxc record?).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from xlpy.errors import UsageError
from xlpy.repro import DEFAULT_HEARTBEAT, load_cells, render, run_matrix


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "repro",
        help="run the outcome matrix of the LAST_CHECKPOINT regression",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    p.add_argument("--json", action="store_true", help="print the cells as a JSON list")
    p.add_argument(
        "--xenopsd",
        action="store_true",
        help="the xenopsd image rows (legacy/structured images x receivers x hand-off); "
        "--only keys: image=, guest=, receiver=, handoff=",
    )
    p.add_argument(
        "--only",
        metavar="FILTER",
        help="comma-separated terms every selected cell has: a bare word matches any "
        "coordinate (e.g. 'remus,hvm,xen-4.4', cs0/cs1); key=value pins one: sender=, "
        "mode=, guest=, trailer=, receiver=, cs=",
    )
    p.add_argument(
        "--heartbeat",
        type=float,
        default=DEFAULT_HEARTBEAT,
        metavar="SECONDS",
        help=f"receiver heartbeat for quiet cells (default {DEFAULT_HEARTBEAT}; libxc: 1)",
    )


def run(args: argparse.Namespace) -> int:
    if args.heartbeat <= 0:
        raise UsageError("--heartbeat must be positive")
    if args.xenopsd:
        return _run_xenopsd(args)
    cells = load_cells()
    if args.only:
        terms = [t.strip() for t in args.only.split(",") if t.strip()]
        cells = [c for c in cells if c.matches(terms)]
        if not cells:
            raise UsageError(f"--only {args.only!r} selects no cell")
    results = list(run_matrix(cells, heartbeat=args.heartbeat))
    if args.json:
        json.dump([r.to_json() for r in results], sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(render(results))
    return 0 if all(r.ok for r in results) else 1


def _run_xenopsd(args: argparse.Namespace) -> int:
    from xlpy import repro_xenopsd as RX

    cells = RX.load_cells()
    if args.only:
        terms = [t.strip() for t in args.only.split(",") if t.strip()]
        cells = [c for c in cells if c.matches(terms)]
        if not cells:
            raise UsageError(f"--only {args.only!r} selects no cell")
    results = list(RX.run_matrix(cells))
    if args.json:
        json.dump([r.to_json() for r in results], sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(RX.render(results))
    return 0 if all(r.ok for r in results) else 1
