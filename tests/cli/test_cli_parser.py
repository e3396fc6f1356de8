"""The ``xlpy`` parser: each command's own usage on a bad option, ``--version``, ``help``."""

from __future__ import annotations

import pytest

import xlpy
from tests.helpers.cli import xlpy as run_xlpy
from xlpy.cli import COMMANDS, help_text, main


@pytest.mark.parametrize(
    ("argv", "usage"),
    [
        (["verify", "--bogus", "x"], "usage: xlpy verify "),
        (
            ["gen", "--guest", "pv", "--sender", "xen-4.0", "--memory", "1M", "-o", "-", "--nope"],
            "usage: xlpy gen ",
        ),
        (["inspect", "f", "extra"], "usage: xlpy inspect "),
        (["libxc", "build", "--bogus"], "usage: xlpy libxc build "),
        (["help", "--bogus"], "usage: xlpy help "),
    ],
)
def test_a_bad_option_prints_the_commands_own_usage(
    argv: list[str], usage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage), err
    assert f"{usage.removeprefix('usage: ').strip()}: error: unrecognized arguments" in err


def test_a_bad_option_before_the_command_is_the_top_levels(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--bogus", "abi"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("usage: xlpy [-h]")


def test_version() -> None:
    res = run_xlpy("--version")
    assert res.returncode == 0, res.stderr
    assert res.stdout.decode() == f"xlpy {xlpy.__version__}\n"
    conv = run_xlpy("convert", "--version")
    assert conv.returncode == 0 and conv.stdout.decode() == f"xlpy convert {xlpy.__version__}\n"


def test_help_prints_the_top_level_or_a_commands_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["help"]) == 0
    top = capsys.readouterr().out
    assert top == help_text() and top.startswith("usage: xlpy [-h] [--version] COMMAND")
    assert all(f"    {name} " in top for name in COMMANDS)
    assert main(["help", "verify"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: xlpy verify ") and "--strict" in out
    with pytest.raises(SystemExit) as exc:
        main(["help", "nope"])
    assert exc.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_help_as_a_user_runs_it() -> None:
    res = run_xlpy("help", "gen")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(b"usage: xlpy gen ")
