"""``xlpy inspect``: summarise a legacy stream (file, ``-`` for stdin, ``fd:N``).

A xenopsd suspend image (``XenSavedDomain``/``XenSavedDomv2-`` signature) is shown as
its table of records, with the summary of the libxc stream inside.

``--width`` takes bytes (4, 8) or bits (32, 64, as Xen's ``convert-legacy-stream``).
Exit 0 when the stream reads completely, 1 on a stream error (the report
still shows everything up to the fault), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from xlpy.cli.common import width_arg
from xlpy.errors import UsageError
from xlpy.stream import xenopsd, xenopsd_inspect
from xlpy.stream.legacy.inspect import Summary, inspect_stream, render_text
from xlpy.stream.source import open_source


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="summarise a legacy stream",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    p.add_argument("source", metavar="FILE", help="stream file, '-' for stdin, or fd:N")
    p.add_argument(
        "--width",
        type=width_arg,
        help="toolstack width: 4 or 8 (bytes) or 32 or 64 (bits); default: detected",
    )
    p.add_argument("--guest", choices=["pv", "hvm"], help="guest type; default: detected")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    try:
        source, owned = open_source(args.source)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot open {args.source}: {e}") from None
    try:
        summary: xenopsd_inspect.ImageSummary | Summary
        if xenopsd.is_xenopsd(source.peek(xenopsd.SIGNATURE_SIZE)):
            summary = xenopsd_inspect.inspect_image(source, width=args.width, guest=args.guest)
        else:
            summary = inspect_stream(source, width=args.width, guest=args.guest)
    except UsageError as e:
        if args.json:  # a JSON reader still gets one object (exit 2 all the same)
            error = {"kind": "usage", "offset": None, "message": str(e)}
            json.dump({"format": "legacy", "complete": False, "error": error}, sys.stdout)
            sys.stdout.write("\n")
        raise
    finally:
        if owned is not None:
            owned.close()
    if args.json:
        json.dump(summary.to_json(), sys.stdout)
        sys.stdout.write("\n")
    elif isinstance(summary, xenopsd_inspect.ImageSummary):
        print(xenopsd_inspect.render_text(summary))
    else:
        print(render_text(summary))
    return 0 if summary.error is None else 1
