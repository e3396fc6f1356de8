"""``xlpy restore --backend fakexen``: the command-line side of :mod:`xlpy.fakexen.backend`.

Hooked into :mod:`xlpy.cli.restore` by :func:`add_arguments` and :func:`run_restore`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from xlpy.errors import UsageError
from xlpy.fakexen import backend
from xlpy.stream.source import open_source


def _number(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a frame offset: {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The fakexen options of ``xlpy restore``."""
    g = p.add_argument_group("fakexen backend (real libxc of a release, user-space Xen)")
    g.add_argument(
        "--release",
        metavar="REL",
        help="the Xen release whose libxc runs, e.g. xen-4.3.1, 4.17 (Debian's)",
    )
    g.add_argument(
        "--lenient",
        action="store_true",
        help="accept what real Xen refuses (a bad extended vcpu context)",
    )
    g.add_argument(
        "--p2m-offset",
        type=_number,
        default=0,
        metavar="N",
        help="PV: mfn = pfn + N in the fake hypervisor (default 0: identity)",
    )
    g.add_argument(
        "--vcpus",
        type=int,
        default=backend.DEFAULT_VCPUS,
        metavar="N",
        help=f"vcpus of the fake domain (default {backend.DEFAULT_VCPUS})",
    )
    g.add_argument(
        "--hypercall-log", metavar="FILE", help="write every hypercall (op, sub-op, result) to FILE"
    )


def run_restore(args: argparse.Namespace, operations: dict[str, str]) -> int:
    """``xlpy restore SOURCE --backend fakexen --release REL --out DIR``."""
    if args.release is None or args.out is None:
        raise UsageError("--backend fakexen needs --release and --out")
    if args.domid is not None or args.rest_out is not None:
        raise UsageError("--backend fakexen takes no --domid or --rest-out")
    if args.operation is not None and args.checkpointed is not None:
        raise UsageError("give --operation or --checkpointed, not both")
    operation = operations[args.operation] if args.operation is not None else None
    try:
        source, owned = open_source(args.source)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot open {args.source}: {e}") from None
    path = Path(args.source) if args.source != "-" and not args.source.startswith("fd:") else None
    try:
        fd = source.fileno
        if fd is None:
            raise UsageError(f"{args.source} has no file descriptor for libxc")
        result = backend.run(
            fd,
            backend.FakeXenRequest(
                release=args.release,
                out=Path(args.out),
                guest=args.guest,
                operation=operation,
                checkpointed=args.checkpointed or 0,
                force=args.force,
                lenient=args.lenient,
                p2m_offset=args.p2m_offset,
                vcpus=args.vcpus,
                hypercall_log=Path(args.hypercall_log) if args.hypercall_log else None,
                callbacks=_callbacks(args, operation),
                toolstack=args.toolstack,
                timeout=args.timeout,
            ),
            source_path=path if path is not None and path.is_file() else None,
        )
    finally:
        if owned is not None:
            owned.close()
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        if not args.quiet:
            for line in result.messages:
                print(line, file=sys.stderr)
        if result.ok:
            print(f"restored {result.out} with the real libxc of Xen {result.release}")
        else:
            print(f"xlpy restore: failed ({result.error})", file=sys.stderr)
    return 0 if result.ok else 1


def _callbacks(args: argparse.Namespace, operation: str | None) -> dict[str, Any]:
    """A secondary's default answers where the stream is checkpointed (as the CLI's)."""
    from xlpy.fakexen.builder import build
    from xlpy.toolstack import Operation, secondary_callbacks

    op = operation if operation is not None else ("remus-receive" if args.checkpointed else None)
    if op is None:
        return {}
    abi = backend.abi_for(build(args.release))
    return secondary_callbacks(Operation(op), abi)
