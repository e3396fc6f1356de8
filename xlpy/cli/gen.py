"""``xlpy gen``: write the legacy stream a given Xen sender would send for a seeded guest.

The stream is produced batch by batch (memory stays bounded whatever the guest
size).  ``-o FILE`` is written as :mod:`xlpy.outfile` says: a regular file under
a temporary name beside it, renamed on success; ``-`` (stdout), a device or a
FIFO in place.  A FILE whose file system has less room than the guest's memory is
refused before anything is written.  Impossible combinations
(compression without Remus, xl framing from xen-4.0, ...) exit 2.
"""

from __future__ import annotations

import argparse
from typing import Any

from xlpy.cli.common import command_parser, size_arg, width_arg
from xlpy.errors import UsageError
from xlpy.guest import HVM_HOLE, GuestSpec
from xlpy.outfile import check_room, open_output
from xlpy.stream import xenopsd as X
from xlpy.stream.legacy.format import PAGE_SIZE
from xlpy.stream.legacy.senders import (
    MODES,
    SENDERS,
    TOOLSTACKS,
    TRAILERS,
    SenderProfile,
    generate,
)
from xlpy.stream.xenopsd_gen import KINDS, LIBXC_KINDS, generate_image

#: ``--demu`` etc.: the xenopsd records of a given size ``xlpy gen`` adds.
_EXTRA_FLAGS = {"demu": X.DEMU, "varstored": X.VARSTORED, "swtpm": X.SWTPM}


def add_parser(subparsers: Any) -> None:
    p = command_parser(subparsers, "gen", __doc__, "generate a legacy stream from a sender profile")
    p.add_argument(
        "--guest", choices=["pv", "hvm"], required=True, help="guest type: pv or hvm (required)"
    )
    p.add_argument(
        "--guest-width", type=width_arg, default=8, help="PV guest width: 32 or 64 (default 64)"
    )
    p.add_argument(
        "--width", type=width_arg, default=8, help="toolstack width W: 64 (default) or 32"
    )
    p.add_argument(
        "--sender",
        choices=SENDERS,
        required=True,
        help="the Xen release whose libxc sends the stream (required); xen-4.0 writes no "
        "LAST_CHECKPOINT, xen-4.1 and later do",
    )
    p.add_argument(
        "--toolstack",
        choices=TOOLSTACKS + KINDS,
        default="bare",
        help="framing around libxc's image: bare (none), the xend, xl or XenServer-classic "
        "toolstack's; xenopsd: a structured XenSavedDomv2 image, xenopsd-legacy: a "
        "XenSavedDomain one (default: bare)",
    )
    p.add_argument(
        "--libxc",
        choices=LIBXC_KINDS,
        default="legacy",
        help="xenopsd: a Libxc_legacy record (default) or a Libxc record (v2, converted)",
    )
    for flag in _EXTRA_FLAGS:
        p.add_argument(
            f"--{flag}", type=size_arg, metavar="SIZE", help=f"xenopsd: add a {flag} record"
        )
    p.add_argument(
        "--mode",
        choices=MODES,
        default="plain",
        help="plain: one image (save, migrate); remus: a stream of checkpoints (default: plain)",
    )
    p.add_argument(
        "--checkpoints", type=int, help="Remus checkpoints (default 3; plain: exactly 1)"
    )
    p.add_argument(
        "--dirty",
        type=float,
        default=0.2,
        help="fraction of pages each checkpoint rewrites (default: 0.2)",
    )
    p.add_argument("--compress", action="store_true", help="Remus checkpoint compression")
    p.add_argument(
        "--trailer",
        choices=TRAILERS,
        default="eof",
        help="eof: the stream ends after the image; foreign: then xl's handshake text "
        "'domain is yours, you are cleared to unpause\\0', which libxc never reads "
        "(default: eof)",
    )
    p.add_argument("--memory", type=size_arg, required=True, help="guest memory, e.g. 64M, 1G")
    p.add_argument("--vcpus", type=int, default=2, help="guest vcpus (default: 2)")
    p.add_argument("--seed", type=int, default=0, help="guest content seed (default 0)")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="output file or '-'")


def _spec(args: argparse.Namespace) -> tuple[SenderProfile, GuestSpec]:
    if args.memory % 4096:
        raise UsageError(f"--memory must be a multiple of 4 KiB, not {args.memory}")
    checkpoints = args.checkpoints
    if checkpoints is None:
        checkpoints = 3 if args.mode == "remus" else 1
    profile = SenderProfile(
        sender=args.sender,
        toolstack="bare" if args.toolstack in KINDS else args.toolstack,
        mode=args.mode,
        checkpoints=checkpoints,
        compress=args.compress,
        trailer=args.trailer,
        width=args.width,
    )
    try:
        spec = GuestSpec(
            kind=args.guest,
            pages=args.memory // 4096,
            seed=args.seed,
            guest_width=args.guest_width,
            vcpus=args.vcpus,
            dirty=args.dirty,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
    profile.check(spec)
    return profile, spec


def run(args: argparse.Namespace) -> int:
    profile, spec = _spec(args)
    extras = {t: getattr(args, f) for f, t in _EXTRA_FLAGS.items() if getattr(args, f) is not None}
    if args.toolstack not in KINDS and (extras or args.libxc != "legacy"):
        raise UsageError("--libxc, --demu, --varstored and --swtpm need --toolstack xenopsd")
    # Every populated page is sent at least once (only HVM's VGA hole is not): a lower
    # bound of the stream's size, so a guest that cannot fit never fills the disk.
    check_room(args.output, max(spec.pages - len(HVM_HOLE), 0) * PAGE_SIZE)
    with open_output(args.output) as out:
        if args.toolstack in KINDS:
            generate_image(profile, spec, out, kind=args.toolstack, libxc=args.libxc, extras=extras)
        else:
            generate(profile, spec, out)
    return 0
