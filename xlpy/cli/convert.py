"""``xlpy convert``: legacy → migration v2, a drop-in for Xen's ``convert-legacy-stream``.

Takes Xen's command line: ``-i/--in`` and ``-o/--out`` are a file descriptor
number when the text is a decimal integer (as Xen's ``open_file_or_fd``), else
a path (``-`` is stdin/stdout); ``-w/--width 32|64`` (optional: the stream's
own width wins, with a warning when they differ), ``-g/--guest-type`` (or
``--guest``) ``pv|hvm`` (optional: detected), ``-f/--format libxc|libxl``,
``-x/--xl``, ``--skip-qemu``, ``--syslog``, ``-v/--verbose``.  Exit 0 ok, 1 stream
error (nothing written to an output path: it is written under a temporary name
and renamed on success), 2 usage or program error.

libxl restores a legacy image (``xl restore`` of a pre-4.6 save file, or an
incoming legacy migration) by running the helper named in the environment
variable ``LIBXL_CONVERT_HELPER`` (default ``$LIBEXEC_BIN/convert-legacy-stream``)
as ``HELPER --in <fd> --out <fd> --width 64|32 --guest pv|hvm --format libxl``,
the width being libxl's own.  To use xlpy, point it at a wrapper::

    #!/bin/sh
    exec xlpy convert "$@"

and start the toolstack with ``LIBXL_CONVERT_HELPER=/path/to/wrapper``.

A xenopsd suspend image (``XenSavedDomain`` or ``XenSavedDomv2-`` with Libxc_legacy)
becomes a structured image with a v2 Libxc record and the QEMU state as Qemu_trad
(:mod:`xlpy.stream.xenopsd_convert`).

``--to legacy`` goes the other way (v2 → the legacy stream of ``--sender`` and
``--toolstack``).  ``--progress-fd N`` writes progress as JSON lines; a bar is
shown only when stderr is a terminal.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from typing import Any, BinaryIO

import xlpy
from xlpy.cli.common import ToolLog, add_timeout, width_arg
from xlpy.cli.progress import Progress, make_progress
from xlpy.errors import StreamError, UsageError, XlpyError
from xlpy.outfile import fd_number, fd_spec, open_output
from xlpy.stream.source import ByteSource, open_source

# The sender model's names (xlpy.stream.legacy.senders), not imported: it costs
# ~30 ms of start-up to every conversion; tests/stream/test_convert.py keeps them equal.
SENDERS = ("xen-4.0", "xen-4.1", "xen-4.2", "xen-4.3", "xen-4.5")
TOOLSTACKS = ("bare", "xend", "xl", "xenserver-classic")
TRAILERS = ("eof", "foreign")

_EPILOG = """\
Drop-in for Xen's convert-legacy-stream (same options; -w and -g may be left out):
  xlpy convert -i INPUT -o OUTPUT [-w 32|64] [-g pv|hvm] [-f libxc|libxl] [-x]
INPUT and OUTPUT are an open file descriptor when decimal, else a path ('-' is
stdin/stdout).  An output path is written under a temporary name and renamed
on success: a failed conversion leaves nothing behind.

Using it from libxl: to restore a legacy image (xl restore of a save file from
Xen 4.5 or older, an incoming legacy migration) libxl runs
  $LIBXL_CONVERT_HELPER --in <fd> --out <fd> --width 64|32 --guest pv|hvm --format libxl
(default: convert-legacy-stream in Xen's libexec directory).  Point it at a
wrapper script, e.g. /usr/local/lib/xlpy-convert:
  #!/bin/sh
  exec xlpy convert "$@"
and start the toolstack (xl, libvirtd) with
LIBXL_CONVERT_HELPER=/usr/local/lib/xlpy-convert in its environment.

Differences from Xen's tool:
  * -w and -g are optional: width and guest type are read from the stream; a
    -w that disagrees with the stream's own gives a warning and the stream wins.
  * -x works (Xen's fails "No xl header" on every stream under Python 3).
  * Remus streams, PV and HVM, are converted whole: each checkpoint ends with a
    CHECKPOINT record (and, with -f libxl, its libxl records and CHECKPOINT_END);
    Xen's tool keeps checkpoint 1 only: silently for PV, while for HVM it then
    fails on checkpoint 2 ("Unrecognised Qemu sig", exit 2).  A receiver in
    plain mode rejects our image, as libxc does:
      "Found checkpoint in non-checkpointed stream";
    a Remus/COLO receiver restores its last checkpoint.  A last checkpoint cut
    short (the sender failed) is dropped and the output ended cleanly.
  * Compressed checkpoints are decoded; every QEMU record signature (xend, xl,
    Remus, XenServer classic) becomes the emulator record; the verify-mode
    chunk is accepted; tmem is an error (v2 has no tmem record).
  * A batch of bare XTAB entries gives no PAGE_DATA record (Xen's tool writes
    one with count 0, which libxc rejects).
  * --syslog: messages go to syslog instead of stderr, errors to both (as Xen's).
  * --progress-fd N writes progress as JSON lines; a bar shows only on a terminal.
    A failed run ends them with {"phase": "error", "error": {kind, type,
    offset, record, field, message}}, the error object of xlpy's --json outputs.
  * --to legacy converts the other way (v2 -> the legacy stream of --sender).
  * --timeout S: an input that sends no byte for S seconds with the connection
    open fails with a timeout error naming the offset (exit 1; Xen's tool waits).

Exit status: 0 ok, 1 stream error, 2 usage or program error."""


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert a legacy stream to migration v2 (drop-in convert-legacy-stream)",
        description="Convert a legacy (Xen 4.5 and older) save/migration stream to a\n"
        "migration v2 stream, or with --to legacy a v2 stream to a legacy one.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {xlpy.__version__}")
    p.add_argument(
        "-i", "--in", dest="fin", default="-", metavar="FD|FILE", help="input (default: stdin)"
    )
    p.add_argument(
        "-o", "--out", dest="fout", default="-", metavar="FD|FILE", help="output (default: stdout)"
    )
    p.add_argument(
        "-w", "--width", type=width_arg, help="legacy toolstack width 32|64 (default: detected)"
    )
    # libxl's --guest, like any unique prefix, is an abbreviation of --guest-type (as
    # with Xen's optparse); a second option string would make --gu ambiguous.
    p.add_argument(
        "-g",
        "--guest-type",
        dest="guest",
        choices=["pv", "hvm"],
        help="guest type; --guest also works (default: detected)",
    )
    p.add_argument(
        "-f",
        "--format",
        dest="format",
        choices=["libxc", "libxl"],
        default="libxc",
        help="output: a bare libxc image (default) or a libxl stream",
    )
    p.add_argument("-x", "--xl", action="store_true", help="the input starts with an xl header")
    p.add_argument(
        "--skip-qemu",
        action="store_true",
        help="libxc format: leave the QEMU record out",
    )
    p.add_argument(
        "--syslog", action="store_true", help="log to syslog instead of stderr (errors: both)"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="summarise the stream")
    p.add_argument(
        "--to",
        choices=["v2", "legacy"],
        default="v2",
        help="v2 (default: legacy → v2) or legacy (v2 → legacy)",
    )
    p.add_argument("--sender", choices=SENDERS, help="--to legacy: the sender to imitate")
    p.add_argument(
        "--toolstack",
        choices=TOOLSTACKS,
        default="bare",
        help="--to legacy: the framing (default: bare)",
    )
    p.add_argument(
        "--trailer",
        choices=TRAILERS,
        default="eof",
        help="--to legacy: bytes after the image (default: eof)",
    )
    p.add_argument(
        "--progress-fd", type=int, metavar="N", help="write progress as JSON lines to fd N"
    )
    add_timeout(p)


def _open_input(text: str, timeout: float | None) -> tuple[ByteSource, BinaryIO | None]:
    try:
        return open_source(text, fd_numbers=True, timeout=timeout)
    except OSError as e:
        raise UsageError(f"cannot open input {text}: {e.strerror or e}") from None


def _write_output(text: str, produce: Callable[[BinaryIO], None]) -> None:
    """Run ``produce`` on the output ``text`` (a descriptor number, ``-`` or a path)."""
    with open_output(text, fd_numbers=True) as out:
        produce(out)


def _to_legacy(args: argparse.Namespace, source: ByteSource, progress: Any) -> None:
    try:
        mod = importlib.import_module("xlpy.stream.tolegacy")
    except ImportError:
        raise UsageError(
            "--to legacy is not available in this build (no xlpy.stream.tolegacy)"
        ) from None
    if args.sender is None:
        raise UsageError("--to legacy needs --sender")

    def produce(out: BinaryIO) -> None:
        mod.v2_to_legacy(
            source,
            out,
            sender=args.sender,
            toolstack=args.toolstack,
            width=args.width or 8,
            trailer=args.trailer,
            progress=progress,
            warn=lambda m: print(f"xlpy convert: warning: {m}", file=sys.stderr),
        )

    _write_output(args.fout, produce)


def _is_xenopsd(source: ByteSource) -> bool:
    from xlpy.stream import xenopsd

    return xenopsd.is_xenopsd(source.peek(xenopsd.SIGNATURE_SIZE))


def _xenopsd_upgrade(args: argparse.Namespace, source: ByteSource, log: ToolLog) -> None:
    """A xenopsd image in: the structured image with a v2 Libxc record out."""
    from xlpy.stream.xenopsd_convert import upgrade

    if args.format != "libxc" or args.xl:
        raise UsageError("a xenopsd image converts to a xenopsd image (no -f libxl, no -x)")

    def produce(out: BinaryIO) -> None:
        report = upgrade(source, out, width=args.width, guest=args.guest)
        log.info(f"xenopsd {report.kind} image → structured: {', '.join(report.records)}")

    _write_output(args.fout, produce)


def run(args: argparse.Namespace) -> int:
    log = ToolLog("xlpy convert", verbose=args.verbose, use_syslog=args.syslog)
    source, owned = _open_input(args.fin, args.timeout)
    progress: Any = None
    try:
        busy = {source.fileno: "is the input stream"} if source.fileno is not None else {}
        out_fd = 1 if args.fout == "-" else fd_spec(args.fout)
        if out_fd is None:
            out_fd = fd_number(args.fout)
        if out_fd is not None:
            busy[out_fd] = "is the output stream"
        progress = make_progress(args.progress_fd, busy_fds=busy, input_fd=source.fileno)
        if args.to == "legacy":
            _to_legacy(args, source, progress)
            return 0
        if _is_xenopsd(source):
            _xenopsd_upgrade(args, source, log)
            return 0
        from xlpy.stream.convert import legacy_to_v2

        def produce(out: BinaryIO) -> None:
            report = legacy_to_v2(
                source,
                out,
                fmt=args.format,
                width=args.width,
                guest=args.guest,
                xl=args.xl,
                qemu=not args.skip_qemu,
                progress=progress,
                log=log.info,
            )
            for w in report.warnings:
                log.warning(w)
            log.info(
                f"converted {report.guest} stream (W={report.width * 8}, {report.framing}): "
                f"{report.checkpoints} checkpoint(s), {report.pages} pages, "
                f"{report.bytes_in} bytes in, {report.bytes_out} bytes out"
            )

        _write_output(args.fout, produce)
        return 0
    except StreamError as e:
        log.error(f"Stream Error: {e}")
        if isinstance(progress, Progress):
            progress.error(e)
        raise
    except XlpyError as e:
        log.error(f"Error: {e}")
        if isinstance(progress, Progress):
            progress.error(e)
        raise
    finally:
        if owned is not None:
            owned.close()
