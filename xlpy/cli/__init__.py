"""The ``xlpy`` command.

Each sub-command lives in its own module under ``xlpy.cli`` and provides
``add_parser(subparsers)`` and ``run(args) -> int``.  Exit codes everywhere:
0 ok, 1 stream error (or a failed restore), 2 usage or program error.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import xlpy
from xlpy.errors import UsageError, XlpyError

#: Sub-command modules, in the order ``xlpy --help`` lists them.
COMMANDS = ["gen", "inspect", "verify", "restore", "abi", "repro", "convert", "libxc", "help"]

EXIT_OK = 0
EXIT_STREAM = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        # argparse hands a sub-command's unknown words up to the top-level parser, which
        # would print ``usage: xlpy [-h] COMMAND``; the parser that owns them reports them.
        ns, extra = super().parse_known_args(args, namespace)
        if extra:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        return ns, extra


def build_parser(
    only: str | None = None,
) -> tuple[argparse.ArgumentParser, dict[str, ModuleType]]:
    """The parser with every sub-command, or with ``only`` that one.

    Importing a sub-command pulls its dependencies in; ``main`` loads only the
    one being run so that start-up stays short (``inspect`` is benchmarked
    against ``cat``).
    """
    parser, _, mods = _parsers(only)
    return parser, mods


def help_text(command: str | None = None) -> str:
    """What ``xlpy --help`` prints, or ``xlpy COMMAND --help`` for ``command``."""
    parser, sub, _ = _parsers(command)
    return (parser if command is None else sub.choices[command]).format_help()


def _parsers(
    only: str | None,
) -> tuple[argparse.ArgumentParser, Any, dict[str, ModuleType]]:
    """:func:`build_parser`'s parser, its sub-command action and the modules loaded."""
    parser = _Parser(
        prog="xlpy",
        description="Xen save/restore and migration streams for Python toolstacks: "
        "generate, inspect, convert and verify streams, restore them into a simulated "
        "domain or through libxenguest, and replay the LAST_CHECKPOINT outcome matrix.",
        epilog="Exit codes: 0 ok, 1 stream error or failed restore, 2 usage or program error. "
        "'xlpy help COMMAND' or 'xlpy COMMAND --help' explains a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {xlpy.__version__}")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=_Parser, help="the command to run"
    )
    sub.required = True
    mods: dict[str, ModuleType] = {}
    for name in COMMANDS if only is None else [only]:
        mod = importlib.import_module(f"xlpy.cli.{name}")
        mod.add_parser(sub)
        mods[name] = mod
    return parser, sub, mods


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    parser, mods = build_parser(words[0] if words and words[0] in COMMANDS else None)
    args = parser.parse_args(argv)
    try:
        return int(mods[args.command].run(args))
    except UsageError as e:
        print(f"xlpy {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except XlpyError as e:
        print(f"xlpy {args.command}: {e}", file=sys.stderr)
        return EXIT_STREAM
    except BrokenPipeError:
        return EXIT_STREAM
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
