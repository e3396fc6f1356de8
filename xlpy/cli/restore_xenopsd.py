"""``xlpy restore`` of a xenopsd suspend image (:func:`xlpy.xenopsd.restore_image`).

Chosen with ``--xenopsd``, or when SOURCE is a regular file that starts with a xenopsd
signature (a pipe cannot be looked at without consuming it).  The libxc record goes to
the receiver (``--release`` on the sim, the installed libxenguest with ``--backend
libxc --domid N``) and ends exactly where the record ends; every other record becomes
a file named by its type in ``--out`` (the sim's domain directory, or with libxc the
directory for the records).  ``--operation`` defaults to ``restore``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from xlpy.cli.common import print_json, source_fd, write_stdout
from xlpy.errors import UsageError
from xlpy.stream import xenopsd as X


def add_arguments(p: Any) -> None:
    """The flag ``xlpy restore`` gains."""
    p.add_argument(
        "--xenopsd",
        action="store_true",
        help="SOURCE is a xenopsd suspend image (XenSavedDomain / XenSavedDomv2-); "
        "detected for regular files",
    )


def wanted(args: argparse.Namespace) -> bool:
    """``--xenopsd``, or a regular file SOURCE with a xenopsd signature."""
    if args.xenopsd:
        return True
    path = Path(args.source)
    if args.source == "-" or args.source.startswith("fd:") or not path.is_file():
        return False
    with open(path, "rb") as f:  # a second descriptor: SOURCE itself is not read here
        return X.is_xenopsd(f.read(X.SIGNATURE_SIZE))


def run(args: argparse.Namespace) -> int:
    """Restore the image; exit 0 restored, 1 failed."""
    from xlpy.xenopsd import restore_image

    if args.out is None:
        raise UsageError("--out DIR is required (sim: the domain; libxc: the record files)")
    if args.rest_out is not None or args.checkpointed is not None:
        raise UsageError("--rest-out and --checkpointed do not apply to a xenopsd image")
    sim = args.backend == "sim"
    kwargs: dict[str, Any] = dict(
        backend=args.backend,
        force=args.force,
        guest=args.guest,
        width=args.width,
        heartbeat=args.heartbeat,
        timeout=args.timeout,
    )
    if sim:
        kwargs["release"] = args.release
    else:
        kwargs["domid"] = args.domid
    with source_fd(args.source) as fd:
        result = restore_image(fd, out=args.out, operation=args.operation or "restore", **kwargs)
    if args.json:
        print_json(result.to_json())
        return 0 if result.ok else 1
    libxc = result.libxc
    if not args.quiet and libxc is not None:
        for line in libxc.messages:
            print(line, file=sys.stderr)
    if not result.ok:
        why = result.error or (libxc.error if libxc is not None else None) or "restore failed"
        print(f"xlpy restore: failed ({why})", file=sys.stderr)
        return 1
    assert libxc is not None
    where = str(args.out) if sim else f"domain {libxc.domid}"
    write_stdout(
        f"restored {where} from a xenopsd {result.kind} image; records: {', '.join(result.files)}"
    )
    return 0
