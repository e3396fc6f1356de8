"""The ``xlpy`` command.

Each sub-command lives in its own module under ``xlpy.cli`` and provides
``add_parser(subparsers)`` and ``run(args) -> int``.  Exit codes everywhere:
0 ok, 1 stream error (or a failed restore), 2 usage or program error (a bad flag, an
output that cannot be written, no Xen on this machine); 141 (128 + SIGPIPE, as a shell
reports ``cat`` in that place) and no message when the reader of an output went away.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

from xlpy.errors import UsageError, XenUnavailable, XlpyError

#: Sub-command modules, in the order ``xlpy --help`` lists them.
COMMANDS = ["gen", "inspect", "verify", "restore", "abi", "repro", "convert", "libxc"]

EXIT_OK = 0
EXIT_STREAM = 1
EXIT_USAGE = 2
#: The reader of an output (stdout, fd:N) went away (EPIPE): 128 + SIGPIPE.
EXIT_PIPE = 141


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser(
    only: str | None = None,
) -> tuple[argparse.ArgumentParser, dict[str, ModuleType]]:
    """The parser with every sub-command, or with ``only`` that one.

    Importing a sub-command pulls its dependencies in; ``main`` loads only the
    one being run so that start-up stays short (``inspect`` is benchmarked
    against ``cat``).
    """
    parser = _Parser(
        prog="xlpy",
        description="Xen save/restore and migration streams for Python toolstacks: "
        "generate, inspect, convert and verify streams, restore them into a simulated "
        "domain or through libxenguest, and replay the LAST_CHECKPOINT outcome matrix.",
        epilog="Exit codes: 0 ok, 1 stream error or failed restore, 2 usage or program error.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    mods: dict[str, ModuleType] = {}
    for name in COMMANDS if only is None else [only]:
        mod = importlib.import_module(f"xlpy.cli.{name}")
        mod.add_parser(sub)
        mods[name] = mod
    return parser, mods


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    parser, mods = build_parser(words[0] if words and words[0] in COMMANDS else None)
    args = parser.parse_args(argv)
    try:
        return int(mods[args.command].run(args))
    except (UsageError, XenUnavailable) as e:
        print(f"xlpy {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except XlpyError as e:
        print(f"xlpy {args.command}: {e}", file=sys.stderr)
        return EXIT_STREAM
    except BrokenPipeError:
        return EXIT_PIPE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
