"""The benchmark modules load, and every bench_inspect helper they call exists."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tests.helpers.paths import REPO as ROOT

BENCH = sorted((ROOT / "bench").glob("bench_*.py"))


def _load(path: Path) -> object:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import run  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return run.load(path)


@pytest.mark.parametrize("path", BENCH, ids=[p.stem for p in BENCH])
def test_bench_module_uses_existing_helpers(path: Path) -> None:
    mod = _load(path)
    assert callable(getattr(mod, "run", None))
    inspect_mod = _load(ROOT / "bench" / "bench_inspect.py")
    for name in set(re.findall(r"\bhelper\.(\w+)", path.read_text())):
        assert hasattr(inspect_mod, name), f"{path.name} calls bench_inspect.{name}, which is gone"
