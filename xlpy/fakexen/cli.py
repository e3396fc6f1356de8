"""``xlpy restore --backend fakexen``: the options of :mod:`xlpy.fakexen.backend`.

:func:`add_arguments` adds them to ``xlpy restore``; :func:`options` turns them into the
backend's :class:`~xlpy.fakexen.backend.FakeXenOptions` values.
"""

from __future__ import annotations

import argparse
from typing import Any

from xlpy.fakexen import backend


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


def options(args: argparse.Namespace) -> dict[str, Any]:
    """The backend options ``args`` give (``xlpy restore --backend fakexen``)."""
    return {
        "out": args.out,
        "lenient": args.lenient,
        "p2m_offset": args.p2m_offset,
        "vcpus": args.vcpus,
        "hypercall_log": args.hypercall_log,
    }
