"""The package's layering, read from its imports with ``ast`` (tools/import_graph.py).

Nothing under ``xlpy/stream/`` or ``xlpy/receiver/`` imports the binding, the backends,
the API or the CLI; the binding imports no stream or receiver code; the bottom module
``xlpy.operation`` imports nothing of xlpy; and no import cycle exists anywhere.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

from tests.helpers.paths import REPO


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "import_graph", REPO / "tools" / "import_graph.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["import_graph"] = module
    spec.loader.exec_module(module)
    return module


def test_no_upward_edge_and_no_cycle() -> None:
    tool = _tool()
    graph = tool.edges()
    assert len(graph) > 100  # the walk found the package's imports
    assert tool.violations(graph) == []


def test_the_check_catches_an_upward_edge_and_a_cycle() -> None:
    tool = _tool()
    bad = {
        ("xlpy.stream.legacy.reader", "xlpy.binding.detect"),
        ("xlpy.binding.restore", "xlpy.receiver.legacy"),
        ("xlpy.operation", "xlpy.errors"),
        ("xlpy.receiver.v2", "xlpy.api"),
        ("xlpy.a", "xlpy.b"),
        ("xlpy.b", "xlpy.a"),
    }
    found = tool.violations(bad)
    assert len(found) == 5, found
    assert any("import cycle" in line for line in found)


def test_deferred_and_type_checking_imports_count(tmp_path: Path) -> None:
    tool = _tool()
    pkg = tmp_path / "xlpy"
    (pkg / "stream").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "stream" / "__init__.py").write_text("")
    (pkg / "binding.py").write_text("")
    (pkg / "stream" / "x.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from xlpy import binding\n"
        "def f():\n    from .. import binding\n"
    )
    tool.ROOT = pkg
    assert tool.edges() == {("xlpy.stream.x", "xlpy.binding")}


def test_v2_record_bodies_are_unpacked_only_in_the_v2_format_package() -> None:
    v2_formats = re.compile(
        r"\bF\.(PAGE_DATA_HDR|X86_PV_INFO|X86_PV_P2M_FRAMES|X86_PV_VCPU_HDR|X86_TSC_INFO"
        r"|HVM_PARAMS|HVM_PARAMS_ENTRY|EMULATOR_HEADER)_FORMAT\.unpack"
    )
    offenders = [
        str(p.relative_to(REPO))
        for p in (REPO / "xlpy").rglob("*.py")
        if "stream/v2" not in p.as_posix() and v2_formats.search(p.read_text())
    ]
    assert offenders == []


def test_shared_definitions_are_defined_once() -> None:
    defs = {
        "class StreamType": re.compile(r"^class StreamType\b", re.M),
        "XEN_DOMCTL_PFINFO_XTAB": re.compile(r"^XEN_DOMCTL_PFINFO_XTAB\b.*=", re.M),
        "DATALESS_NIBBLES": re.compile(r"^DATALESS_NIBBLES\b.*=", re.M),
        "XL_MAGIC": re.compile(r"^XL_MAGIC\b.*=", re.M),
        "XL_HEADER_FORMAT": re.compile(r"^XL_HEADER_FORMAT\b.*=", re.M),
    }
    sources = {p: p.read_text() for p in (REPO / "xlpy").rglob("*.py")}
    for name, pattern in defs.items():
        where = [str(p.relative_to(REPO)) for p, text in sources.items() if pattern.search(text)]
        assert len(where) == 1, (name, where)


def test_the_legacy_receiver_names_reader_fields_only_by_constant() -> None:
    # A renamed reader field must not silently change the receiver's message: the
    # receiver compares against xlpy.stream.legacy.fields, never a dotted literal.
    text = (REPO / "xlpy" / "receiver" / "legacy.py").read_text()
    assert not re.search(r"\bf (==|!=) \"|f\.startswith\(", text)
    assert "FLD." in text and "Element." in text
