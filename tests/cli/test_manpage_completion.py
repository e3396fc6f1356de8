"""``xlpy help --man`` and ``xlpy help --completion bash``: generated from the parser, so
they name every command and option it has, and they work in man and bash."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from xlpy.cli import COMMANDS, build_parser, main
from xlpy.cli.completion import script
from xlpy.cli.manpage import MACROS, escape, render
from xlpy.cli.parsers import walk


def _page() -> str:
    return render(build_parser()[0])


def test_the_man_page_has_a_section_per_command_and_every_option() -> None:
    page = _page()
    commands = list(walk(build_parser()[0]))
    assert len(commands) > 10  # every sub-command, libxc's build and list included
    for command in commands[1:]:
        assert f'.SH "{command.name.upper()}"' in page, command.name
        section = page.split(f'.SH "{command.name.upper()}"', 1)[1].split("\n.SH ", 1)[0]
        for action in command.options():
            for opt in action.option_strings:
                assert rf"\fB{escape(opt)}\fR" in section, f"{command.name} {opt}"
            if action.help:
                first = command.help(action).splitlines()[0].strip()
                assert escape(first[:30]) in section.replace("\n", " "), f"{command.name}: help"


def test_the_man_page_is_well_formedescape() -> None:
    page = _page()
    assert page.startswith(".TH XLPY 1 ")
    for n, line in enumerate(page.splitlines(), 1):
        if line.startswith("."):
            assert line[1:].split(" ", 1)[0] in MACROS, f"line {n}: {line}"
        assert not line.startswith("'"), f"line {n} would be a request: {line}"
        assert line.isascii(), f"line {n}: non-ASCII reaches troff: {line}"
        # the only escapes used: fonts, minus, backslash, zero-width, glyphs
        bad = re.sub(r"\\(f[BIR]|-|e|&|\[u[0-9A-F]{4}\])", "", line)
        assert "\\" not in bad, f"line {n}: stray escape: {line}"
    assert page.count(".nf") == page.count(".fi")


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_groff_reads_the_man_page_without_a_warning() -> None:
    proc = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z"],
        input=_page(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_xlpy_help_man_prints_the_page(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["help", "--man"]) == 0
    assert capsys.readouterr().out == _page()


def test_a_command_goes_with_no_generated_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["help", "gen", "--man"]) == 2
    assert "COMMAND (gen) goes with none of" in capsys.readouterr().err


def test_xlpy_help_spec_prints_a_shipped_spec(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["help", "--spec", "legacy-stream"]) == 0
    out = capsys.readouterr().out
    assert "## 12. Outcome matrix" in out and "## Notes from the real code" in out


def _complete(words: list[str]) -> list[str]:
    """COMPREPLY after ``_xlpy`` runs on ``words`` (the last one being completed)."""
    bash_words = " ".join(f"'{w}'" for w in words)
    program = (
        f"{script(build_parser()[0])}\n"
        f"COMP_WORDS=({bash_words}); COMP_CWORD={len(words) - 1}; COMPREPLY=()\n"
        '_xlpy; printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    proc = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", program],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert proc.stderr == ""
    return proc.stdout.split()


bash = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")


@bash
def test_bash_completes_the_commands() -> None:
    assert _complete(["xlpy", ""]) == COMMANDS
    assert "restore" in _complete(["xlpy", "re"]) and "gen" not in _complete(["xlpy", "re"])
    assert _complete(["xlpy", "libxc", ""]) == ["build", "list"]


@bash
def test_bash_completes_a_commands_options_and_their_choices() -> None:
    assert _complete(["xlpy", "restore", "--ti"]) == ["--timeout"]
    assert _complete(["xlpy", "libxc", "build", "--f"]) == ["--force"]
    assert _complete(["xlpy", "gen", "--guest", ""]) == ["pv", "hvm"]
    assert _complete(["xlpy", "help", "--completion", ""]) == ["bash"]
    # an option's value is not taken for a command word
    assert "--sender" in _complete(["xlpy", "gen", "--guest", "hvm", "--se"])


def test_every_option_is_in_the_completion_script() -> None:
    text = script(build_parser()[0])
    for command in walk(build_parser()[0]):
        for action in command.options():
            for opt in action.option_strings:
                assert opt in text, f"{command.name} {opt}"
