"""``xlpy help``: the help of ``xlpy`` or a COMMAND, the man page, completion, the specs.

``xlpy help COMMAND`` is ``xlpy COMMAND --help``; ``--man`` prints the man page (roff,
:mod:`xlpy.cli.manpage`), ``--completion bash`` a shell completion script
(:mod:`xlpy.cli.completion`), ``--spec NAME`` a spec the help texts cite (:mod:`xlpy.docs`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from xlpy import docs
from xlpy.cli.common import command_parser, write_stdout
from xlpy.errors import UsageError


def add_parser(subparsers: Any) -> None:
    from xlpy.cli import COMMANDS
    from xlpy.cli.completion import SHELLS

    p = command_parser(subparsers, "help", __doc__, "show the help of xlpy or of COMMAND")
    p.add_argument(
        "topic",
        nargs="?",
        choices=COMMANDS,
        metavar="COMMAND",
        help="the command to explain (default: list the commands)",
    )
    other = p.add_mutually_exclusive_group()
    other.add_argument(
        "--man",
        action="store_true",
        help="print the man page xlpy(1) as roff (e.g. xlpy help --man | man -l -)",
    )
    other.add_argument(
        "--completion",
        choices=SHELLS,
        metavar="SHELL",
        help="print the completion script for SHELL (bash), "
        'e.g. eval "$(xlpy help --completion bash)"',
    )
    other.add_argument(
        "--spec",
        choices=docs.names(),
        metavar="NAME",
        help="print a spec shipped with xlpy, the help texts' NAME.md: " + ", ".join(docs.names()),
    )


def run(args: argparse.Namespace) -> int:
    from xlpy.cli import build_parser, help_text

    generated = args.man or args.completion or args.spec
    if generated and args.topic:
        raise UsageError(f"COMMAND ({args.topic}) goes with none of --man, --completion, --spec")
    if args.man:
        from xlpy.cli.manpage import render

        write_stdout(render(build_parser()[0]).rstrip("\n"))
    elif args.completion:
        from xlpy.cli.completion import script

        write_stdout(script(build_parser()[0], args.completion).rstrip("\n"))
    elif args.spec:
        write_stdout(docs.spec(args.spec).read_text(encoding="utf-8").rstrip("\n"))
    else:
        sys.stdout.write(help_text(args.topic))
    return 0
