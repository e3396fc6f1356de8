"""``--help`` is plain text (a module docstring's reST made readable by
xlpy.cli.common.plain_text) and explains every option with its default."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from xlpy.cli import build_parser, help_text
from xlpy.cli.common import plain_text


def _parsers(
    parser: argparse.ArgumentParser, name: str
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every parser under ``parser`` (itself included), with its command words."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for word, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {word}")


def test_inline_literals_lose_their_backquotes() -> None:
    assert plain_text("``xlpy gen``: write ``-o FILE``") == "xlpy gen: write -o FILE"


def test_a_punctuation_literal_is_quoted() -> None:
    assert plain_text("file, ``-`` for stdin, ``fd:N``") == "file, '-' for stdin, fd:N"


def test_roles_become_their_target() -> None:
    text = "as :mod:`xlpy.outfile` says; :class:`~xlpy.errors.UsageError` on :py:func:`f`"
    assert plain_text(text) == "as xlpy.outfile says; UsageError on f"


def test_descriptions_are_plain_text() -> None:
    parser, _ = build_parser()
    for name, p in _parsers(parser, "xlpy"):
        text = p.format_help()
        assert "``" not in text and ":mod:" not in text and ":class:" not in text, name
    verify = help_text("verify")
    assert "xlpy verify: check a migration v2 stream (file, '-' for stdin, fd:N)." in verify


def test_every_option_is_explained_with_its_default() -> None:
    parser, _ = build_parser()
    for name, p in _parsers(parser, "xlpy"):
        for action in p._actions:
            if isinstance(action, argparse._HelpAction | argparse._VersionAction):
                continue
            what = f"{name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help, f"{what} has no help"
            if action.default not in (None, False, argparse.SUPPRESS):
                assert "default" in action.help, f"{what}: default {action.default!r} not shown"
