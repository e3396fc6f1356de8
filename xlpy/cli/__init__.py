"""The ``xlpy`` command.

Each sub-command lives in its own module under ``xlpy.cli`` and provides
``add_parser(subparsers)`` and ``run(args) -> int``.  Exit codes everywhere:
0 ok, 1 stream error (or a failed restore), 2 usage or program error (a bad flag, an
output that cannot be written, no Xen on this machine); 141 (128 + SIGPIPE, as a shell
reports ``cat`` in that place) and no message when the reader of an output went away;
a run stopped by SIGINT, SIGTERM or SIGHUP removes its temporary outputs, says
"interrupted" and exits 128 + the signal's number.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

import xlpy
from xlpy.errors import TerminalStream, UsageError, XenUnavailable, XlpyError

#: Sub-command modules, in the order ``xlpy --help`` lists them.
COMMANDS = ["gen", "inspect", "verify", "restore", "abi", "repro", "convert", "libxc", "help"]

EXIT_OK = 0
EXIT_STREAM = 1
EXIT_USAGE = 2
#: The reader of an output (stdout, fd:N) went away (EPIPE): 128 + SIGPIPE.
EXIT_PIPE = 141


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


class Interrupted(KeyboardInterrupt):
    """A stop signal, raised where the program is: a KeyboardInterrupt carrying the
    signal's number, so that SIGTERM and SIGHUP unwind as Ctrl-C does (every ``finally``
    and ``except BaseException`` that removes a temporary output runs)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


#: Signals that stop a run.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _interrupt(signum: int, frame: object) -> None:
    # The first signal starts the unwinding; another one (systemd's SIGTERM and a closing
    # terminal's SIGHUP together) must not cut short the clean-up it runs.
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    raise Interrupted(signum)


@contextlib.contextmanager
def _stop_signals_unwind() -> Iterator[None]:
    """The stop signals raise :class:`Interrupted` while the command runs.

    A signal ignored at start stays ignored (``nohup`` ignores SIGHUP, a shell's
    background job SIGINT).  The previous handlers come back afterwards: ``main`` is also
    called inside other programs (the tests).
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; it is the one signals reach
        return
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    try:
        for s, handler in previous.items():
            if handler in (signal.SIG_DFL, signal.default_int_handler):
                signal.signal(s, _interrupt)
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _interrupted(command: str, e: KeyboardInterrupt) -> int:
    """Report the stop on a line of its own (after a progress bar's) and its exit code."""
    from xlpy.cli.progress import end_line

    signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
    end_line()
    print(f"xlpy {command}: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
    return 128 + signum


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    parser, sub, mods = _parsers(words[0] if words and words[0] in COMMANDS else None)
    args = parser.parse_args(argv)
    try:
        with _stop_signals_unwind():
            return int(mods[args.command].run(args))
    except (UsageError, XenUnavailable) as e:
        if isinstance(e, TerminalStream):  # a FILE left out: say how the command is used
            sub.choices[args.command].print_usage(sys.stderr)
        print(f"xlpy {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except XlpyError as e:
        print(f"xlpy {args.command}: {e}", file=sys.stderr)
        return EXIT_STREAM
    except BrokenPipeError:
        return EXIT_PIPE
    except KeyboardInterrupt as e:
        return _interrupted(args.command, e)


if __name__ == "__main__":
    sys.exit(main())
