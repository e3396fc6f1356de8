"""The fuzz harness reaches the compression decoder, through inspect and directly."""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

import pytest

pytest.importorskip("atheris")

import xlpy.stream.legacy.compression as compression
from tests.helpers.paths import TESTS

HARNESS = TESTS / "fuzz" / "fuzz_reader.py"


def _harness(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The harness module, loaded as atheris runs it."""
    spec = importlib.util.spec_from_file_location("fuzz_reader", HARNESS)
    assert spec is not None and spec.loader is not None
    fuzz = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "fuzz_reader", fuzz)
    spec.loader.exec_module(fuzz)
    return fuzz


def test_harness_runs_the_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    fuzz = _harness(monkeypatch)
    calls: list[int] = []
    real = compression.check_structure

    def counting(data: bytes, pages: int, **kw: object) -> None:
        calls.append(pages)
        real(data, pages, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(compression, "check_structure", counting)
    monkeypatch.setattr(fuzz, "check_structure", counting)
    seeds = fuzz.seeds()
    for seed in seeds:
        fuzz.one_input(seed)
    direct = [s for s in seeds if s[0] >= 0x80]
    assert direct and len(calls) > len(direct), "no stream seed reached the decoder via inspect"


def test_harness_reaches_the_xenopsd_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    fuzz = _harness(monkeypatch)
    seen: list[bool] = []
    real = fuzz.xenopsd_inspect.inspect_image

    def counting(source: object, **kw: object) -> object:
        image = real(source, **kw)  # type: ignore[arg-type]
        seen.append(image.complete)
        return image

    monkeypatch.setattr(fuzz.xenopsd_inspect, "inspect_image", counting)
    for seed in fuzz.seeds():
        fuzz.one_input(seed)
    assert seen == [True, True, True], "the xenopsd seeds must read completely"
