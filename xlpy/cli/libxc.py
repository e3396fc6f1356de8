"""``xlpy libxc``: build real libxenctrl + libxenguest of Xen releases for the fakexen backend.

``xlpy libxc build [RELEASE...]`` compiles each release (default: 4.0.4 ... 4.6.6 and
Debian's 4.17) from ``$XLPY_XEN_SRC`` (a directory of ``xen-<release>.tar.xz``; default
``../shared/xen-src`` next to the checkout) with the fakexen shim, into
``.cache/libxc/<release>/``, reusing a build whose sources are unchanged.  Exit 0 when
every release built, 1 when one did not (each failure says why).  ``xlpy libxc list``
shows what the cache holds.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from xlpy.cli.common import command_parser, print_json, write_stdout
from xlpy.fakexen import builder


def add_parser(subparsers: Any) -> None:
    p = command_parser(
        subparsers, "libxc", __doc__, "build and list real libxc releases for --backend fakexen"
    )
    sub = p.add_subparsers(
        dest="libxc_command", metavar="ACTION", required=True, help="build or list"
    )
    b = sub.add_parser("build", help="build releases (cached by source hash)")
    b.add_argument(
        "releases",
        nargs="*",
        metavar="RELEASE",
        help="e.g. 4.3.1 or xen-4.3.1; 4.17 is Debian's binary 4.17 "
        "(default: " + " ".join(builder.DEFAULT_RELEASES) + ")",
    )
    b.add_argument("--force", action="store_true", help="rebuild even when cached")
    b.add_argument("--json", action="store_true", help="print one JSON object per release")
    ls = sub.add_parser("list", help="show the built releases")
    ls.add_argument("--json", action="store_true", help="print a JSON array")


def run(args: argparse.Namespace) -> int:
    if args.libxc_command == "list":
        rows = builder.listing()
        if args.json:
            print_json(rows, indent=2)
            return 0
        lines = []
        for r in rows:
            reason = str(r.get("reason", "")).splitlines()[:1]
            detail = r.get("libxenguest") if r["state"] != "failed" else " ".join(reason)
            lines.append(f"{r['release']:<10} {r['state']:<7} {detail}")
        write_stdout(
            "\n".join(lines) or f"nothing built in {builder.cache_dir()} (xlpy libxc build)"
        )
        return 0
    failed = 0
    for release in args.releases or builder.DEFAULT_RELEASES:
        try:
            done = builder.build(release, force=args.force)
        except builder.BuildFailed as e:
            failed += 1
            doc: dict[str, Any] = {"release": release, "ok": False, "reason": str(e)}
            print(json.dumps(doc) if args.json else f"xlpy libxc: {e}", file=sys.stderr)
            continue
        if args.json:
            print_json(done.info)
        else:
            write_stdout(f"{done.release:<10} ok  {done.libxenguest}  ({done.info['seconds']} s)")
    return 1 if failed else 0
