"""``xlpy restore``: receive a legacy stream as a given libxc release would.

Restores into a simulated domain directory (``--out``; the memory image is
``DIR/memory``).  Exit 0 when the domain was restored, 1 when the restore failed
(libxc destroyed the domain, or the toolstack rejected it), 2 on usage errors.
libxc's messages go to stderr as its stdio logger prints them (or into ``--json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from xlpy.cli.progress import make_progress
from xlpy.errors import UsageError
from xlpy.receiver import restore
from xlpy.receiver.backends import ProgressFn
from xlpy.receiver.generations import GENERATIONS
from xlpy.receiver.toolstacks import DEFAULT_TOOLSTACK, TOOLSTACKS
from xlpy.stream.legacy.framing import parse_width
from xlpy.stream.source import open_source


def _width(text: str) -> int:
    try:
        return parse_width(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError("the heartbeat must be positive")
    return v


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "restore",
        help="restore a legacy stream with a chosen libxc receiver generation",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    p.add_argument("source", metavar="SOURCE", help="stream file, '-' for stdin, or fd:N")
    p.add_argument(
        "--receiver",
        required=True,
        metavar="GEN",
        help="receiving libxc release: " + ", ".join(GENERATIONS),
    )
    p.add_argument(
        "--checkpointed",
        type=int,
        choices=[0, 1],
        help="checkpointed_stream passed to libxc (R-fix releases only; "
        "default: what the toolstack passes)",
    )
    p.add_argument(
        "--toolstack",
        default=DEFAULT_TOOLSTACK,
        choices=list(TOOLSTACKS),
        help=f"receiving toolstack (default {DEFAULT_TOOLSTACK}; HVM streams from libxl "
        "carry chunk -18 and need libxl-4.3.2 or xl-4.4)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="domain directory to create")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument(
        "--progress-fd",
        type=int,
        metavar="N",
        help="write progress as JSON lines to file descriptor N",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress, no messages")
    p.add_argument(
        "--heartbeat",
        type=_seconds,
        default=1.0,
        metavar="SECONDS",
        help="libxc's select timeout after the first checkpoint (default 1)",
    )
    p.add_argument("--width", type=_width, help="toolstack width (4/8 or 32/64); default detected")
    p.add_argument("--guest", choices=["pv", "hvm"], help="guest type; default detected")


def _progress(args: argparse.Namespace, source_fd: int | None) -> ProgressFn | None:
    busy: dict[int, str] = {}
    if args.json:
        busy[1] = "would mix progress into the --json output"
    if source_fd is not None:
        busy[source_fd] = "is the stream being restored"
    return make_progress(args.progress_fd, quiet=args.quiet, busy_fds=busy)


def run(args: argparse.Namespace) -> int:
    try:
        source, owned = open_source(args.source)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot open {args.source}: {e}") from None
    try:
        result = restore(
            source,
            generation=args.receiver,
            out=args.out,
            checkpointed=args.checkpointed,
            toolstack=args.toolstack,
            heartbeat=args.heartbeat,
            progress=_progress(args, source.fileno),
            guest=args.guest,
            width=args.width,
        )
    finally:
        if owned is not None:
            owned.close()
    if args.json:
        json.dump(result.to_json(), sys.stdout)
        sys.stdout.write("\n")
        return 0 if result.ok else 1
    if not args.quiet:
        for line in result.messages:
            print(line, file=sys.stderr)
    if result.ok:
        print(
            f"restored {args.out}: checkpoint {result.committed_checkpoint} committed, "
            f"{result.bytes_past_image} bytes read past the image"
        )
    else:
        why = result.toolstack_error or (str(result.error) if result.error else "restore failed")
        print(f"xlpy restore: failed ({why}); domain destroyed", file=sys.stderr)
    return 0 if result.ok else 1
