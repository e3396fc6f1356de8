"""``xlpy verify``: check a migration v2 stream (file, ``-`` for stdin, ``fd:N``).

Bare libxc images, libxl streams and ``xl save`` files are detected from their
first bytes; ``--format``/``--xl`` insist on one.  ``--strict`` applies the
checks of Xen's ``verify-stream-v2`` (zero padding and reserved fields); the
default accepts what libxc's and libxl's receivers accept.  Exit 0 valid,
1 invalid stream, 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from xlpy.cli.common import (
    add_source,
    add_timeout,
    command_parser,
    opened_source,
    print_json,
    write_stdout,
)
from xlpy.stream.v2.verify import VerifyReport, verify_stream


def add_parser(subparsers: Any) -> None:
    p = command_parser(subparsers, "verify", __doc__, "check a migration v2 stream")
    add_source(p, "FILE")
    p.add_argument(
        "--strict",
        action="store_true",
        help="padding and reserved fields must be zero (as Xen's verify-stream-v2)",
    )
    p.add_argument(
        "--format",
        choices=["libxc", "libxl"],
        help="stream format (default: detected; after an xl header: from its STREAMv2 flag)",
    )
    p.add_argument(
        "--xl",
        action="store_true",
        help="the stream starts with an xl save header (without --xl, --format forbids one)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_timeout(p)


def render_text(r: VerifyReport) -> str:
    """A short human summary of a report."""
    lines = [
        f"{'valid' if r.valid else 'INVALID'} v2 stream ({'strict' if r.strict else 'tolerant'}):"
        f" framing {r.framing}, format {r.format}, guest {r.guest or '?'}, image version"
        f" {r.version or '?'}",
        f"  {r.records} records, {r.pages} pages, {r.checkpoints} checkpoints",
    ]
    lines += [f"  {n}: {c}" for n, c in sorted(r.counts.items())]
    lines += [f"  warning: {w}" for w in r.warnings]
    if r.trailing_data:
        lines.append("  note: data follows the final END record (not checked)")
    if r.error is not None:
        lines.append(f"  error: {r.error}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    # --format without --xl means that bare format: an xl header is then an error, as
    # for verify-stream-v2 -f libxc|libxl ("Bad image marker"); --xl requires one.
    xl = True if args.xl else (False if args.format else None)
    with opened_source(args.source, args.timeout) as source:
        report = verify_stream(source, strict=args.strict, xl=xl, fmt=args.format)
    if args.json:
        print_json(report.to_json())
    elif report.valid:
        write_stdout(render_text(report))
    else:
        print(render_text(report), file=sys.stderr)
    return 0 if report.valid else 1
