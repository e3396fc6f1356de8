"""``xlpy restore``: receive a legacy stream as a given libxc release would.

Restores into a simulated domain directory (``--out``; the memory image is
``DIR/memory``).  Exit 0 when the domain was restored, 1 when the restore failed
(libxc destroyed the domain, or the toolstack rejected it), 2 on usage errors.
libxc's messages go to stderr as its stdio logger prints them (or into ``--json``).

Without ``--operation`` the receiver is driven raw, as the chosen release behaves (the
regressions reproduce).  With ``--operation`` the restore goes through
:func:`xlpy.restore` as a toolstack using xlpy would run it: the stream type comes from
the operation, unsafe operations are refused (``--force`` for the refusable ones), a
plain restore on 4.0-4.3.1 is framed; ``--backend libxc`` uses the installed
libxenguest on domain ``--domid`` (a Remus secondary answers each checkpoint "keep
receiving", as libxl's does for a bare libxc stream; COLO needs a real toolstack).

``--rest-out FILE`` receives what follows the libxc image of a *framed* restore (the
QEMU record, a toolstack trailer), written only when that restore succeeded.  FILE is
opened before the restore (an unwritable one is a usage error then).  A restore that is
not framed leaves FILE alone, with a warning: there libxc itself read the stream, and
what it left is still in SOURCE for the toolstack.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import shutil
import sys
from typing import TYPE_CHECKING, Any

from xlpy.cli.common import width_arg
from xlpy.cli.progress import make_progress
from xlpy.errors import LibraryNotFound, RestoreRefused, UsageError, XenUnavailable
from xlpy.outfile import fd_spec, open_output
from xlpy.receiver import restore
from xlpy.receiver.backends import ProgressFn
from xlpy.receiver.generations import GENERATIONS
from xlpy.receiver.toolstacks import DEFAULT_TOOLSTACK, TOOLSTACKS
from xlpy.stream.source import open_source

if TYPE_CHECKING:
    from xlpy.api import Restored
    from xlpy.toolstack import Operation

BACKENDS = ["sim", "libxc"]
#: ``--operation`` words: the :class:`xlpy.toolstack.Operation` values (the receive side).
#: Strings, so the raw receiver path does not load the libxc binding.
OPERATIONS = {
    "restore": "restore",
    "migrate": "migrate-receive",
    "remus": "remus-receive",
    "colo": "colo-receive",
}


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
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
        metavar="GEN",
        help="sim: receiving libxc release: " + ", ".join(GENERATIONS) + " (required "
        "without --operation; with it, default the installed release if simulated, else "
        "xen-4.5)",
    )
    p.add_argument(
        "--operation",
        choices=list(OPERATIONS),
        help="what the toolstack is doing; decides the stream type (remus: checkpointed 1)",
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="sim",
        help="sim (simulated domain, --out) or libxc (installed libxenguest, --domid)",
    )
    p.add_argument("--domid", type=int, metavar="N", help="libxc: the domain to restore into")
    p.add_argument(
        "--force", action="store_true", help="accept a refusable operation (Remus on 4.4)"
    )
    p.add_argument(
        "--rest-out",
        metavar="FILE",
        help="framed restores: write what follows the libxc image (QEMU record) to FILE "
        "(only on success; ignored with a warning when the restore is not framed)",
    )
    p.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        help="libxc: kill the restore helper after SECONDS without a word from it "
        "(default: wait; a large domain's restore takes as long as it takes)",
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
    p.add_argument("--out", metavar="DIR", help="sim: domain directory to create")
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
    p.add_argument(
        "--width", type=width_arg, help="toolstack width (4/8 or 32/64); default detected"
    )
    p.add_argument("--guest", choices=["pv", "hvm"], help="guest type; default detected")


def _progress(args: argparse.Namespace, source_fd: int | None) -> ProgressFn | None:
    busy: dict[int, str] = {}
    if args.json:
        busy[1] = "would mix progress into the --json output"
    if source_fd is not None:
        busy[source_fd] = "is the stream being restored"
    return make_progress(args.progress_fd, quiet=args.quiet, busy_fds=busy)


def run(args: argparse.Namespace) -> int:
    if args.operation is None and args.backend == "sim":
        return _run_receiver(args)
    return _run_operation(args)


def _run_receiver(args: argparse.Namespace) -> int:
    """The raw receiver: the chosen release as it behaves, regressions included."""
    for flag, given in (
        ("--domid", args.domid),
        ("--force", args.force),
        ("--rest-out", args.rest_out),
    ):
        if given not in (None, False):
            raise UsageError(f"{flag} needs --operation")
    if args.receiver is None or args.out is None:
        raise UsageError("--receiver and --out are required (or give --operation)")
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
        return _print_json(result.to_json(), result.ok)
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


def _print_json(doc: dict[str, Any], ok: bool) -> int:
    json.dump(doc, sys.stdout)
    sys.stdout.write("\n")
    return 0 if ok else 1


def _operation(args: argparse.Namespace) -> Operation:
    """``--operation``, checked against ``--checkpointed`` (libxc without it: derived)."""
    from xlpy.toolstack import Operation, stream_type_for

    if args.operation is None:
        return Operation.REMUS_RECEIVE if args.checkpointed == 1 else Operation.RESTORE
    op = Operation(OPERATIONS[args.operation])
    st = stream_type_for(op)
    if args.checkpointed is not None and args.checkpointed != int(st):
        raise UsageError(
            f"--checkpointed {args.checkpointed} contradicts --operation {args.operation} "
            f"(stream type {st.name} = {int(st)}); drop --checkpointed"
        )
    return op


def _source_fd(spec: str) -> int | str:
    if spec == "-":
        return sys.stdin.buffer.fileno()
    fd = fd_spec(spec)
    return spec if fd is None else fd


class _Unwritten(Exception):
    """Leave ``--rest-out`` unwritten (``open_output`` then removes its temporary file)."""

    def __init__(self, result: Restored) -> None:
        super().__init__()
        self.result = result


def _run_operation(args: argparse.Namespace) -> int:
    """As a toolstack using :func:`xlpy.restore` would restore."""
    # The refusal is printed as the error, the forcing below: not again by logging's
    # last-resort handler.
    logging.getLogger("xlpy.toolstack").addHandler(logging.NullHandler())
    op = _operation(args)
    source = _source_fd(args.source)
    try:
        with contextlib.ExitStack() as stack:
            # Opened first: an unwritable FILE is a usage error before anything is restored.
            rest_out = (
                None if args.rest_out is None else stack.enter_context(open_output(args.rest_out))
            )
            result = _restore(args, op, source)
            if rest_out is not None:
                if not (result.ok and result.framed):
                    raise _Unwritten(result)
                rest_out.write(result.rest)
                if isinstance(source, int):  # a path was read to its end by xlpy.restore
                    shutil.copyfileobj(io.FileIO(source, "rb", closefd=False), rest_out)
    except _Unwritten as e:
        result = e.result
        if result.ok and not args.quiet:
            print(
                f"xlpy restore: warning: --rest-out {args.rest_out} not written: the restore "
                "was not framed (libxc read the stream itself; the rest is still in SOURCE)",
                file=sys.stderr,
            )
    except (RestoreRefused, XenUnavailable) as e:
        if not args.json:
            raise
        _print_json(_refusal_json(args, op, e), False)
        return 2 if isinstance(e, LibraryNotFound) else 1
    return _report(args, op, result)


def _restore(args: argparse.Namespace, op: Operation, source: int | str) -> Restored:
    from xlpy.api import restore as api_restore

    sim = args.backend == "sim"
    try:
        return api_restore(
            source,
            operation=op,
            out=args.out,
            domid=args.domid,
            backend=args.backend,
            generation=args.receiver,
            force=args.force,
            callbacks=None if sim else _secondary_callbacks(op),
            toolstack=args.toolstack,
            progress=_progress(args, source if isinstance(source, int) else None) if sim else None,
            guest=args.guest,
            width=args.width,
            heartbeat=args.heartbeat,
            timeout=args.timeout,
        )
    except LibraryNotFound as e:
        if args.json:
            raise
        raise UsageError(str(e)) from None


def _secondary_callbacks(op: Operation) -> dict[str, Any]:
    """What the CLI's secondary answers libxc (see :func:`xlpy.toolstack.secondary_callbacks`)."""
    from xlpy.binding import detect
    from xlpy.toolstack import StreamType, secondary_callbacks, stream_type_for

    if stream_type_for(op) is StreamType.PLAIN:
        return {}
    try:
        return secondary_callbacks(op, detect())
    except UsageError as e:
        raise UsageError(f"xlpy restore cannot act as a COLO secondary: {e}") from None


def _refusal_json(args: argparse.Namespace, op: Operation, error: Exception) -> dict[str, Any]:
    """The ``--json`` object when nothing was restored: refused, or no libxc at all."""
    from xlpy.toolstack import OperationRefused, stream_type_for

    decision = error.decision if isinstance(error, OperationRefused) else None
    return {
        "ok": False,
        "backend": args.backend,
        "operation": op.value,
        "stream_type": stream_type_for(op).name,
        "release": decision.release if decision is not None else None,
        "verdict": decision.verdict.value if decision is not None else None,
        "reason": decision.reason if decision is not None else None,
        "forced": False,
        "framed": False,
        "error": str(error),
        "error_type": type(error).__name__,
    }


def _report(args: argparse.Namespace, op: Operation, result: Restored) -> int:
    if args.json:
        return _print_json(result.to_json(), result.ok)
    sim = result.sim is not None
    if not args.quiet:
        if result.decision.forced:
            print(
                f"xlpy restore: warning: forced despite: {result.decision.reason}", file=sys.stderr
            )
        for line in result.messages:
            print(line, file=sys.stderr)
    if not result.ok:
        gone = "; domain destroyed" if sim else ""
        print(f"xlpy restore: failed ({result.error or 'restore failed'}){gone}", file=sys.stderr)
        return 1
    where = f"domain {result.domid}" if result.out is None else str(result.out)
    print(
        f"restored {where} ({op.value}, stream type {result.stream_type.name}"
        + (f", checkpoint {result.committed_checkpoint} committed" if sim else "")
        + ")"
    )
    if result.framed:
        print(
            f"framed: libxc got the first checkpoint's {result.image_bytes}-byte image; "
            f"{len(result.rest)} bytes after it handed back"
        )
    return 0
