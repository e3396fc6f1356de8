"""Public API of the legacy engine and its commands carries docstrings."""

from __future__ import annotations

import importlib
import inspect
from types import ModuleType

import pytest

MODULES = [
    "xlpy.outfile",
    "xlpy.stream.legacy.inspect",
    "xlpy.cli.common",
    "xlpy.stream.source",
    "xlpy.stream.legacy.compression",
    "xlpy.stream.legacy.format",
    "xlpy.stream.legacy.framing",
    "xlpy.stream.legacy.reader",
    "xlpy.stream.legacy.records",
    "xlpy.stream.legacy.senders",
    "xlpy.stream.legacy.writer",
]


def _undocumented(mod: ModuleType) -> list[str]:
    missing = []
    for name, obj in vars(mod).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
            continue
        if inspect.isfunction(obj) and not obj.__doc__:
            missing.append(name)
        elif inspect.isclass(obj):
            # A dataclass without a docstring gets its signature as __doc__.
            if not obj.__doc__ or obj.__doc__.startswith(f"{name}("):
                missing.append(name)
            for attr, member in vars(obj).items():
                if attr.startswith("_"):
                    continue
                fn = member.fget if isinstance(member, property) else member
                if inspect.isfunction(fn) and not fn.__doc__:
                    missing.append(f"{name}.{attr}")
    return missing


@pytest.mark.parametrize("name", MODULES)
def test_public_items_have_docstrings(name: str) -> None:
    missing = _undocumented(importlib.import_module(name))
    assert not missing, f"no docstring: {', '.join(missing)}"
