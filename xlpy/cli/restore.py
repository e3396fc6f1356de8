"""``xlpy restore``: receive a stream as a given libxc release would.

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
import logging
import shutil
import sys
import textwrap
from typing import Any

from xlpy.api import run as run_pipeline
from xlpy.backends import RestoreRequest, RestoreResult, backend_names, get_backend, make_options
from xlpy.cli import restore_xenopsd
from xlpy.cli.common import (
    TIMEOUT_HELP,
    add_source,
    add_timeout,
    command_parser,
    print_json,
    require_stdout,
    seconds_arg,
    source_fd,
    width_arg,
    write_stdout,
)
from xlpy.cli.progress import make_progress
from xlpy.decision import OperationRefused
from xlpy.errors import RestoreRefused, UsageError, XenUnavailable
from xlpy.fakexen import cli as fakexen_cli
from xlpy.operation import Operation, StreamType, stream_type_for
from xlpy.outfile import open_output
from xlpy.progress import ProgressFn
from xlpy.receiver.generations import GENERATIONS
from xlpy.receiver.toolstacks import DEFAULT_TOOLSTACK, TOOLSTACKS


def add_parser(subparsers: Any) -> None:
    p = command_parser(
        subparsers,
        "restore",
        __doc__,
        "restore a stream with a chosen libxc release (simulated or real)",
    )
    add_source(p, "SOURCE")
    p.add_argument(
        "--release",
        metavar="RELEASE",
        help="sim: receiving libxc release: " + ", ".join(GENERATIONS) + " (required "
        "without --operation; with it, default the installed release if simulated, else "
        "xen-4.5); libxc: the installed one",
    )
    p.add_argument(
        "--operation",
        choices=[o.value for o in Operation],
        help="what the toolstack is doing; decides the stream type (remus-receive: REMUS)",
    )
    p.add_argument(
        "--backend",
        choices=backend_names(),
        default="sim",
        help="sim (simulated domain, --out), libxc (installed libxenguest, --domid) or "
        "fakexen (a release's real libxc on the user-space Xen, --release, --out) "
        "(default: sim)",
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
    add_timeout(
        p,
        f"sim, and a framed restore's input: {TIMEOUT_HELP}; Remus: after the first "
        "checkpoint libxc's --heartbeat applies instead (a stall commits the last one). "
        "libxc, fakexen: kill the restore helper after SECONDS without a word from it "
        "(a large domain's restore takes as long as it takes)",
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
        type=seconds_arg,
        default=1.0,
        metavar="SECONDS",
        help="libxc's select timeout after the first checkpoint (default 1)",
    )
    p.add_argument(
        "--width", type=width_arg, help="toolstack width (4/8 or 32/64); default detected"
    )
    p.add_argument("--guest", choices=["pv", "hvm"], help="guest type; default detected")
    fakexen_cli.add_arguments(p)
    restore_xenopsd.add_arguments(p)


def _progress(args: argparse.Namespace, source_fd: int) -> ProgressFn | None:
    busy: dict[int, str] = {source_fd: "is the stream being restored"}
    if args.json:
        busy[1] = "would mix progress into the --json output"
    return make_progress(args.progress_fd, quiet=args.quiet, busy_fds=busy, input_fd=source_fd)


def _operation(args: argparse.Namespace) -> Operation | None:
    """``--operation``, checked against ``--checkpointed``.

    Without one, a backend that can run a release raw (sim, fakexen) does (``None``);
    libxc is always driven by an operation, derived from ``--checkpointed`` there.
    """
    if args.operation is None:
        if get_backend(args.backend).raw:
            return None
        return Operation.REMUS_RECEIVE if args.checkpointed == 1 else Operation.RESTORE
    op = Operation(args.operation)
    st = stream_type_for(op)
    if args.checkpointed is not None and args.checkpointed != int(st):
        raise UsageError(
            f"--checkpointed {args.checkpointed} contradicts --operation {args.operation} "
            f"(stream type {st.name} = {int(st)}); drop --checkpointed"
        )
    return op


def _request(args: argparse.Namespace, op: Operation | None, fd: int) -> RestoreRequest:
    backend = get_backend(args.backend)
    needs_operation = {"--force": args.force, "--rest-out": args.rest_out}
    if op is None:
        for flag, given in needs_operation.items():
            if given not in (None, False):
                raise UsageError(f"{flag} needs --operation")
        if args.release is None or args.out is None:
            raise UsageError("--release and --out are required (or give --operation)")
    if args.backend == "sim":
        options = make_options(backend, {"out": args.out, "heartbeat": args.heartbeat})
        if args.domid is not None:
            raise UsageError("--domid is for --backend libxc; the sim restores into --out")
    elif args.backend == "fakexen":
        options = make_options(backend, fakexen_cli.options(args))
        if args.domid is not None:
            raise UsageError("--domid is for --backend libxc; fakexen restores into --out")
    else:
        options = make_options(backend, {"domid": args.domid})
        if args.out is not None:
            raise UsageError("--out is for --backend sim; libxc restores into --domid")
    return RestoreRequest(
        fd=fd,
        operation=op,
        release=args.release,
        backend=args.backend,
        force=args.force,
        toolstack=args.toolstack,
        checkpointed=args.checkpointed if op is None else None,
        callbacks=_secondary_callbacks(op) if args.backend == "libxc" else None,
        progress=_progress(args, fd) if args.backend == "sim" else None,
        guest=args.guest,
        width=args.width,
        timeout=args.timeout,
        options=options,
    )


#: Width of the diagnosis paragraphs on stderr (libxc's own lines are never wrapped).
_WRAP = 88


class _Unwritten(Exception):
    """Leave ``--rest-out`` unwritten (``open_output`` then removes its temporary file)."""

    def __init__(self, result: RestoreResult) -> None:
        super().__init__()
        self.result = result


def run(args: argparse.Namespace) -> int:
    require_stdout()  # the report of a restore must not be lost after it is done
    if restore_xenopsd.wanted(args):
        return restore_xenopsd.run(args)
    # The refusal is printed as the error, the forcing below: not again by logging's
    # last-resort handler.
    logging.getLogger("xlpy.toolstack").addHandler(logging.NullHandler())
    op = _operation(args)
    try:
        with contextlib.ExitStack() as stack:
            fd = stack.enter_context(source_fd(args.source))
            # Opened first: an unwritable FILE is a usage error before anything is restored.
            rest_out = (
                None if args.rest_out is None else stack.enter_context(open_output(args.rest_out))
            )
            result = _restore(args, op, fd)
            if rest_out is not None:
                if not (result.ok and result.framed):
                    raise _Unwritten(result)
                rest_out.write(result.rest)
                shutil.copyfileobj(io.FileIO(fd, "rb", closefd=False), rest_out)
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
        print_json(_unrestored(args, op, e).to_json())
        # No Xen here (no hypervisor, no libxenguest) is the machine's setup: exit 2, as
        # xlpy's main gives it; a refused operation is a failed restore.
        return 2 if isinstance(e, XenUnavailable) else 1
    return _report(args, result)


def _restore(args: argparse.Namespace, op: Operation | None, fd: int) -> RestoreResult:
    return run_pipeline(_request(args, op, fd))


def _secondary_callbacks(op: Operation | None) -> dict[str, Any]:
    """What the CLI's secondary answers libxc (:func:`xlpy.backends.libxc.secondary_callbacks`)."""
    from xlpy.backends.libxc import secondary_callbacks
    from xlpy.binding import detect

    if op is None or stream_type_for(op) is StreamType.PLAIN:
        return {}
    try:
        return secondary_callbacks(op, detect())
    except UsageError as e:
        raise UsageError(f"xlpy restore cannot act as a COLO secondary: {e}") from None


def _unrestored(args: argparse.Namespace, op: Operation | None, error: Exception) -> RestoreResult:
    """The result when nothing was restored: refused, or no libxc at all."""
    decision = error.decision if isinstance(error, OperationRefused) else None
    assert isinstance(error, RestoreRefused | XenUnavailable)
    return RestoreResult(
        ok=False,
        backend=args.backend,
        release=decision.release if decision is not None else args.release,
        decision=decision,
        stream_type=None if op is None else stream_type_for(op),
        error=error,
    )


def _diagnosis(result: RestoreResult) -> None:
    """xlpy's explanation, after libxc's lines: one wrapped paragraph per cause."""
    for paragraph in (result.diagnosis or "").splitlines():
        print(
            textwrap.fill(
                paragraph,
                width=_WRAP,
                initial_indent="xlpy restore: diagnosis: ",
                subsequent_indent="  ",
                break_long_words=False,
                break_on_hyphens=False,
            ),
            file=sys.stderr,
        )


def _report(args: argparse.Namespace, result: RestoreResult) -> int:
    if args.json:
        print_json(result.to_json())
        return 0 if result.ok else 1
    sim = result.backend == "sim"
    if not args.quiet:
        if result.decision is not None and result.decision.forced:
            print(
                f"xlpy restore: warning: forced despite: {result.decision.reason}", file=sys.stderr
            )
        for line in result.messages:
            print(line, file=sys.stderr)
    if not result.ok:
        why = result.toolstack_error or result.error or "restore failed"
        gone = "; domain destroyed" if sim else ""
        print(f"xlpy restore: failed ({why}){gone}", file=sys.stderr)
        _diagnosis(result)
        return 1
    if not args.quiet:
        _diagnosis(result)
    if result.decision is None:
        write_stdout(
            f"restored {result.out}: checkpoint {result.committed_checkpoint} committed, "
            f"{result.bytes_past_image} bytes read past the image"
        )
        return 0
    where = f"domain {result.domid}" if result.out is None else str(result.out)
    op = result.decision.operation
    assert result.stream_type is not None
    lines = [
        f"restored {where} ({op.value}, stream type {result.stream_type.name}"
        + (f", checkpoint {result.committed_checkpoint} committed" if sim else "")
        + ")"
    ]
    if result.framed:
        lines.append(
            f"framed: libxc got the first checkpoint's {result.image_bytes}-byte image; "
            f"{len(result.rest)} bytes after it handed back"
        )
    write_stdout("\n".join(lines))
    return 0
