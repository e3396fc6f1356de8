"""``xlpy.1``: the man page, generated from the parser (``xlpy help --man``, ``make man``).

One section per command (``XLPY GEN``, ``XLPY LIBXC BUILD``, ...) with its usage, its
description, and every argument and option with its help (defaults included, as
``--help`` shows them).  Nothing is written by hand, so the page cannot drift from the
parser; the specs it points at are the ones the package ships (:mod:`xlpy.docs`).
"""

from __future__ import annotations

import argparse

import xlpy
from xlpy import docs
from xlpy.cli.parsers import Command, walk

#: The macros the page uses (man(7)); the tests check that it uses no others.
MACROS = frozenset({"TH", "SH", "SS", "PP", "TP", "B", "nf", "fi"})


def render(parser: argparse.ArgumentParser) -> str:
    """The roff source of ``xlpy(1)`` for ``parser`` (:func:`xlpy.cli.build_parser`'s)."""
    commands = list(walk(parser))
    top = commands[0]
    lines = [
        f'.TH XLPY 1 "" "xlpy {xlpy.__version__}" "User Commands"',
        ".SH NAME",
        r"xlpy \- " + escape(_first_clause(parser.description or "")),
        ".SH SYNOPSIS",
        *_usage(top),
        ".SH DESCRIPTION",
        *_paragraphs(parser.description),
        *_arguments(top),
    ]
    for command in commands[1:]:
        formatter = command.parser._get_formatter()
        raw = isinstance(formatter, argparse.RawDescriptionHelpFormatter)
        lines += [f'.SH "{command.name.upper()}"', *_usage(command)]
        lines += _paragraphs(command.parser.description, raw)
        lines += _arguments(command)
        lines += _paragraphs(command.parser.epilog, raw)
    lines += ['.SH "EXIT STATUS"', *_paragraphs(parser.epilog)]
    lines += [".SH FILES", *_spec_files()]
    return "\n".join(lines) + "\n"


def _arguments(command: Command) -> list[str]:
    lines: list[str] = []
    subs = command.subcommand_help()
    if subs:
        lines.append(".SS Commands")
        for name, help in subs.items():
            lines += [".TP", f".B {escape(name)}", escape(help)]
    for title, actions in (("Arguments", command.positionals()), ("Options", command.options())):
        if not actions:
            continue
        lines.append(f".SS {title}")
        for action in actions:
            lines += [".TP", _invocation(command, action), *_lines(command.help(action))]
    return lines


def _invocation(command: Command, action: argparse.Action) -> str:
    """``\\fB\\-o\\fR \\fIFILE\\fR, \\fB\\-\\-out\\fR \\fIFILE\\fR``: bold words, italic values."""
    value = command.metavar(action)
    if not action.option_strings:
        return rf"\fI{escape(value)}\fR"
    shown = []
    for opt in action.option_strings:
        shown.append(rf"\fB{escape(opt)}\fR" + (rf" \fI{escape(value)}\fR" if value else ""))
    return _safe(", ".join(shown))


def _usage(command: Command) -> list[str]:
    return _verbatim(command.parser.format_usage().removeprefix("usage: "))


def _paragraphs(text: str | None, raw: bool = False) -> list[str]:
    """Prose: a blank line starts a paragraph; lines inside one are refilled by roff.
    ``raw``: laid out by hand (a RawDescriptionHelpFormatter's), kept line for line."""
    lines: list[str] = []
    for para in (text or "").split("\n\n"):
        if para.strip():
            lines += [".PP", *(_verbatim(para) if raw else _lines(para))]
    return lines


def _verbatim(text: str) -> list[str]:
    return [".nf", *(_safe(escape(line)) for line in text.rstrip().splitlines()), ".fi"]


def _lines(text: str) -> list[str]:
    return [_safe(escape(line.strip())) for line in text.splitlines() if line.strip()]


def _spec_files() -> list[str]:
    lines = []
    for name in docs.names():
        lines += [".TP", rf"\fIxlpy/docs/{escape(name)}.md\fR"]
        lines.append(
            "the spec the help texts cite (inside the installed package); "
            rf"\fBxlpy help \-\-spec {escape(name)}\fR prints it"
        )
    return lines


def _first_clause(text: str) -> str:
    return text.split(":", 1)[0]


def escape(text: str) -> str:
    """``text`` with roff's escape character and minus signs escaped, and anything past
    ASCII as a ``\\[uXXXX]`` glyph (troff reads bytes, not UTF-8)."""
    text = text.replace("\\", r"\e").replace("-", r"\-")
    return "".join(c if c.isascii() else f"\\[u{ord(c):04X}]" for c in text)


def _safe(line: str) -> str:
    """A text line that roff cannot take for a request (a leading ``.`` or ``'``)."""
    return rf"\&{line}" if line.startswith((".", "'")) else line
