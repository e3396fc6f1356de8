"""Every sub-command takes widths and sizes through xlpy.cli.common's one parser type."""

from __future__ import annotations

import argparse
import importlib.util
import sys

import pytest

from tests.helpers.paths import REPO as ROOT
from xlpy.cli import build_parser
from xlpy.cli.common import parse_size, size_arg, width_arg


def test_width_and_size_options_share_one_type() -> None:
    parser, _ = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    seen = {}
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.dest in ("width", "guest_width"):
                seen[(name, action.dest)] = action.type
            elif action.dest == "memory":
                assert action.type is size_arg
    assert {"gen", "inspect", "convert", "restore"} <= {n for n, _ in seen}
    assert all(t is width_arg for t in seen.values()), seen


def test_bench_reads_sizes_as_gen_does(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, mod)  # its dataclasses look themselves up
    spec.loader.exec_module(mod)
    assert mod.size_arg is size_arg
    assert parse_size("2MiB") == 2 << 20
