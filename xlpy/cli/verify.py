"""``xlpy verify``: check a migration v2 stream (file, ``-`` for stdin, ``fd:N``).

Bare libxc images, libxl streams and ``xl save`` files are detected from their
first bytes; ``--format``/``--xl`` insist on one.  ``--strict`` applies the
checks of Xen's ``verify-stream-v2`` (zero padding and reserved fields); the
default accepts what libxc's and libxl's receivers accept.  Xen's command line
works too: ``-i/--in FD|FILE`` (default stdin), ``-f/--format libxc|libxl|xl``,
``-v/--verbose``, ``-q/--quiet``, ``--syslog``.  Exit 0 valid, 1 invalid stream,
2 usage error.
"""

from __future__ import annotations

import argparse
import sys
import syslog
from typing import Any

from xlpy.cli.common import (
    ToolLog,
    add_source,
    add_timeout,
    command_parser,
    opened_source,
    print_json,
)
from xlpy.errors import UsageError
from xlpy.stream.legacy.records import XlHeader
from xlpy.stream.v2.records import DomainHeader, Element, ImageHeader, LibxlHeader, V2Record
from xlpy.stream.v2.verify import VerifyReport, verify_stream

#: ``-v``'s words for what is not a record.
_HEADER_NAMES = {
    XlHeader: "xl save header",
    ImageHeader: "libxc image header",
    DomainHeader: "libxc domain header",
    LibxlHeader: "libxl stream header",
}


def add_parser(subparsers: Any) -> None:
    p = command_parser(subparsers, "verify", __doc__, "check a migration v2 stream")
    given = p.add_mutually_exclusive_group()
    add_source(given, "FILE", optional=True)
    given.add_argument(
        "-i",
        "--in",
        dest="fin",
        metavar="FD|FILE",
        help="as verify-stream-v2: a descriptor number when decimal, else a path (default: stdin)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="padding and reserved fields must be zero (as Xen's verify-stream-v2)",
    )
    p.add_argument(
        "-f",
        "--format",
        choices=["libxc", "libxl", "xl"],
        help="libxc or libxl: a bare stream of that format (an xl header is an error); "
        "xl: an xl save file, its format from the header's STREAMv2 flag "
        "(default: detected; verify-stream-v2's default is libxc)",
    )
    p.add_argument(
        "--xl",
        action="store_true",
        help="the stream starts with an xl save header (with --format libxc|libxl: "
        "that format after it)",
    )
    p.add_argument(
        "-v", "--verbose", action="store_true", help="list each header and record as it is read"
    )
    output = p.add_mutually_exclusive_group()
    output.add_argument(
        "-q", "--quiet", action="store_true", help="print nothing: the exit status tells"
    )
    output.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--syslog",
        action="store_true",
        help="report to syslog instead of stdout (an invalid stream: to stderr as well)",
    )
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


def element_line(el: Element | XlHeader) -> str:
    """``-v``'s line for one element: its offset and what it is."""
    if isinstance(el, V2Record):
        return f"{el.offset:>12}  {el.layer} record {el.name}, length {el.length}"
    return f"{el.offset:>12}  {_HEADER_NAMES[type(el)]}"


def run(args: argparse.Namespace) -> int:
    if args.json and (args.verbose or args.syslog):
        raise UsageError("--json prints one JSON object: -v and --syslog are for text")
    # --format libxc|libxl without --xl means that bare format: an xl header is then an
    # error, as for verify-stream-v2 -f libxc|libxl ("Bad image marker"); --xl or -f xl
    # require one.
    fmt = None if args.format == "xl" else args.format
    xl = True if args.xl or args.format == "xl" else (False if fmt else None)
    # -q wins over -v, as in verify-stream-v2.
    log = ToolLog(
        "xlpy verify",
        verbose=args.verbose and not args.quiet,
        use_syslog=args.syslog,
        to_stdout=True,
    )
    spec = args.source if args.fin is None else args.fin
    with opened_source(spec or "-", args.timeout, fd_numbers=args.fin is not None) as source:
        report = verify_stream(
            source,
            strict=args.strict,
            xl=xl,
            fmt=fmt,
            on_element=(lambda el: log.info(element_line(el))) if log.verbose else None,
        )
    if args.json:
        print_json(report.to_json())
    elif not args.quiet:
        text = render_text(report)
        if report.valid:
            log.emit(syslog.LOG_INFO, text)
        else:
            log.error(text)
            print(text, file=sys.stderr)
    return 0 if report.valid else 1
