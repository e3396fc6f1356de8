"""``xlpy repro``: run the LAST_CHECKPOINT outcome matrix (xlpy/docs/legacy-stream.md §12).

Each cell streams a generated sender's image through a socketpair into the reference
receiver and compares the observed outcome code with the spec's.  Exit 0 when every
cell matches, 1 on any mismatch, 2 on usage errors.  ``--xenopsd`` runs the xenopsd rows
instead (:mod:`xlpy.repro_xenopsd`: does the next header survive the libxc record?).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

from xlpy.cli.common import command_parser, print_json, require_stdout, write_stdout
from xlpy.errors import UsageError
from xlpy.repro import (
    DEFAULT_HEARTBEAT,
    CellResult,
    MatrixCell,
    code_meanings,
    legend,
    load_cells,
    render,
    run_matrix,
)


def add_parser(subparsers: Any) -> None:
    p = command_parser(
        subparsers, "repro", __doc__, "run the outcome matrix of the LAST_CHECKPOINT regression"
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
    require_stdout()  # before the matrix runs, not after
    if args.xenopsd:
        from xlpy import repro_xenopsd as RX

        results = RX.run_matrix(_selected(RX.load_cells(), args.only))
        return _report(args, results, RX.render, RX.code_meanings())
    cells = _selected(load_cells(), args.only)
    return _report(args, run_matrix(cells, heartbeat=args.heartbeat), render, code_meanings())


class _Selectable(Protocol):
    def matches(self, terms: Iterable[str]) -> bool: ...


_C = TypeVar("_C", bound=_Selectable)
_M = TypeVar("_M", bound=MatrixCell)


def _selected(cells: list[_C], only: str | None) -> list[_C]:
    """The cells ``--only`` selects (all without it); selecting none is a usage error."""
    if not only:
        return cells
    terms = [t.strip() for t in only.split(",") if t.strip()]
    chosen = [c for c in cells if c.matches(terms)]
    if not chosen:
        raise UsageError(f"--only {only!r} selects no cell")
    return chosen


def _report(
    args: argparse.Namespace,
    results: Iterable[CellResult[_M]],
    render_fn: Callable[[list[CellResult[_M]]], str],
    meanings: dict[str, str],
) -> int:
    """Run the matrix, print it and the legend of its codes (``meanings``; ``--json``: the
    cells as a list, no legend); exit 0 when all matched."""
    done = list(results)
    if args.json:
        print_json([r.to_json() for r in done], indent=1)
    else:
        write_stdout(f"{render_fn(done)}\n\n{legend(done, meanings)}")
    return 0 if all(r.ok for r in done) else 1
