"""The ``xlpy`` parser tree read back: every command's parser with its words, options
and arguments, and how argparse shows them.

The man page (:mod:`xlpy.cli.manpage`) and the shell completion
(:mod:`xlpy.cli.completion`) are generated from this one reading of
:func:`xlpy.cli.build_parser`, so neither can list an option the parser does not have.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """One parser of the tree: ``words`` (``("xlpy", "libxc", "build")``) and the parser."""

    words: tuple[str, ...]
    parser: argparse.ArgumentParser

    @property
    def name(self) -> str:
        """The words as typed: ``xlpy libxc build``."""
        return " ".join(self.words)

    def options(self) -> list[argparse.Action]:
        """The options (``-o``, ``--json``), in the order ``--help`` lists them."""
        return [a for a in self.parser._actions if a.option_strings and _shown(a)]

    def positionals(self) -> list[argparse.Action]:
        """The positional arguments, a sub-command choice excluded."""
        return [
            a
            for a in self.parser._actions
            if not a.option_strings and _shown(a) and not _is_subcommands(a)
        ]

    def subcommands(self) -> dict[str, argparse.ArgumentParser]:
        """The sub-commands by name, in their order (empty for a leaf command)."""
        for a in self.parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                return dict(a.choices)
        return {}

    def subcommand_help(self) -> dict[str, str]:
        """Each sub-command's one-line help, as the parent's ``--help`` shows it."""
        for a in self.parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                return {c.dest: c.help or "" for c in a._choices_actions}
        return {}

    def metavar(self, action: argparse.Action) -> str:
        """What follows an option (``FILE``, ``{pv,hvm}``), or ``""`` for a flag."""
        if action.nargs == 0:
            return ""
        formatter = self.parser._get_formatter()
        if action.option_strings:
            default = formatter._get_default_metavar_for_optional(action)
        else:
            default = formatter._get_default_metavar_for_positional(action)
        return formatter._format_args(action, default)

    def help(self, action: argparse.Action) -> str:
        """``action``'s help with ``%(default)s`` and the like filled in."""
        return self.parser._get_formatter()._expand_help(action) if action.help else ""


def walk(parser: argparse.ArgumentParser, words: tuple[str, ...] = ("xlpy",)) -> Iterator[Command]:
    """``parser`` and every parser under it, depth first, in ``--help`` order."""
    command = Command(words, parser)
    yield command
    for word, sub in command.subcommands().items():
        yield from walk(sub, (*words, word))


def _shown(action: argparse.Action) -> bool:
    return action.help is not argparse.SUPPRESS


def _is_subcommands(action: argparse.Action) -> bool:
    return isinstance(action, argparse._SubParsersAction)
