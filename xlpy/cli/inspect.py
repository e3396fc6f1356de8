"""``xlpy inspect``: summarise a legacy stream (file, ``-`` for stdin, ``fd:N``).

A xenopsd suspend image (``XenSavedDomain``/``XenSavedDomv2-`` signature) is shown as
its table of records, with the summary of the libxc stream inside.

``--width`` takes bytes (4, 8) or bits (32, 64, as Xen's ``convert-legacy-stream``).
Exit 0 when the stream reads completely, 1 on a stream error (the report
still shows everything up to the fault), 2 on a usage error.
"""

from __future__ import annotations

import argparse
from typing import Any

from xlpy.cli.common import (
    add_source,
    add_timeout,
    command_parser,
    opened_source,
    print_json,
    width_arg,
    write_stdout,
)
from xlpy.errors import UsageError, error_json
from xlpy.stream import xenopsd, xenopsd_inspect
from xlpy.stream.legacy.inspect import Summary, inspect_stream, render_text


def add_parser(subparsers: Any) -> None:
    p = command_parser(subparsers, "inspect", __doc__, "summarise a legacy stream")
    add_source(p, "FILE")
    p.add_argument(
        "--width",
        type=width_arg,
        help="toolstack width: 4 or 8 (bytes) or 32 or 64 (bits); default: detected",
    )
    p.add_argument("--guest", choices=["pv", "hvm"], help="guest type; default: detected")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_timeout(p)


def run(args: argparse.Namespace) -> int:
    with opened_source(args.source, args.timeout) as source:
        try:
            summary: xenopsd_inspect.ImageSummary | Summary
            if xenopsd.is_xenopsd(source.peek(xenopsd.SIGNATURE_SIZE)):
                summary = xenopsd_inspect.inspect_image(source, width=args.width, guest=args.guest)
            else:
                summary = inspect_stream(source, width=args.width, guest=args.guest)
        except UsageError as e:
            if args.json:  # a JSON reader still gets one object (exit 2 all the same)
                print_json({"format": "legacy", "complete": False, "error": error_json(e)})
            raise
    if args.json:
        print_json(summary.to_json())
    elif isinstance(summary, xenopsd_inspect.ImageSummary):
        write_stdout(xenopsd_inspect.render_text(summary))
    else:
        write_stdout(render_text(summary))
    return 0 if summary.error is None else 1
