"""``xlpy help``: print the help of ``xlpy`` or of one command (``xlpy help COMMAND``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from xlpy.cli.common import command_parser


def add_parser(subparsers: Any) -> None:
    from xlpy.cli import COMMANDS

    p = command_parser(subparsers, "help", __doc__, "show the help of xlpy or of COMMAND")
    p.add_argument(
        "topic",
        nargs="?",
        choices=COMMANDS,
        metavar="COMMAND",
        help="the command to explain (default: list the commands)",
    )


def run(args: argparse.Namespace) -> int:
    from xlpy.cli import help_text

    sys.stdout.write(help_text(args.topic))
    return 0
