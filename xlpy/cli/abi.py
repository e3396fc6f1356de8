"""``xlpy abi``: which libxenguest this machine has and which declarations xlpy uses for it.

Exit 0 when a library was found and its ABI generation is known; 2 when it was not
(no library, a missing dependency, an unknown or ambiguous soname): that is a setup
problem, not a stream error, so the message names what is missing and the Debian
package that provides it.  Reads nothing from the hypervisor: works in any domain.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from xlpy.binding.detect import ENV_GENERATION, ENV_LIBRARY, detect
from xlpy.cli.common import command_parser, print_json, write_stdout
from xlpy.errors import LibraryNotFound, UsageError, XenUnavailable, error_json
from xlpy.operation import Operation, decide

EXIT_MISSING = 2


def add_parser(subparsers: Any) -> None:
    p = command_parser(
        subparsers,
        "abi",
        __doc__,
        "show the installed libxenguest and its ABI generation",
        epilog=f"Environment: {ENV_LIBRARY}=/path/libxenguest.so.4.N picks the library; "
        f"{ENV_GENERATION}=GEN (e.g. 4.14-4.21) overrides the detected generation.",
    )
    p.add_argument("--json", action="store_true", help="print a JSON object")


def run(args: argparse.Namespace) -> int:
    try:
        abi = detect()
    except (XenUnavailable, UsageError) as e:
        if args.json:
            doc: dict[str, Any] = {"error": error_json(e)}
            if isinstance(e, LibraryNotFound):
                doc.update(missing=e.missing, package=e.package)
            print_json(doc, indent=2)
        else:
            print(f"xlpy abi: {e}", file=sys.stderr)
        return EXIT_MISSING
    doc = abi.to_json()
    # What the toolstack layer will do with each operation on this release.
    doc["operations"] = {op.value: decide(op, abi.release).verdict.value for op in Operation}
    if args.json:
        print_json(doc, indent=2)
        return 0
    lines = []
    for key, value in doc.items():
        if isinstance(value, list):
            value = ("\n" + " " * 16).join(value)
        elif isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        lines.append(f"{key + ':':16}{value}")
    write_stdout("\n".join(lines))
    return 0
