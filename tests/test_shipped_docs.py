"""The specs the texts cite ship with the package (xlpy/docs), so an installed copy can
follow every ``NAME.md §N`` its help, docstrings and data point at."""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

from xlpy import docs
from xlpy.cli import COMMANDS, help_text

PACKAGE = Path(docs.__file__).resolve().parent.parent
#: ``legacy-stream.md §12``, ``xlpy/docs/abi.md §1-§2``, ``abi.md`` alone.
CITATION = re.compile(r"(?:([\w./-]*/))?([a-z0-9-]+\.md)\b(?:\s*(?:\\u00a7|§)(\d+))?")


def _headings(name: str) -> set[str]:
    """The section numbers of a shipped spec (``## 12.`` -> ``12``)."""
    text = docs.spec(name).read_text(encoding="utf-8")
    return set(re.findall(r"^##+ (\d+)[.\s]", text, re.MULTILINE))


def test_the_specs_are_package_data() -> None:
    shipped = {f.name for f in files("xlpy.docs").iterdir() if f.name.endswith(".md")}
    assert {"legacy-stream.md", "abi.md", "xenopsd-image.md", "design.md"} <= shipped
    assert docs.names() == sorted(n.removesuffix(".md") for n in shipped)
    pyproject = (PACKAGE.parent / "pyproject.toml").read_text()
    assert '"docs/*.md"' in pyproject  # what puts them in the wheel


def test_every_help_reference_names_a_shipped_file_and_section() -> None:
    cited = []
    for command in [None, *COMMANDS]:
        text = help_text(command)
        for where, name, section in CITATION.findall(text):
            cited.append(name)
            assert where == "xlpy/docs/", f"{command}: {name} cited as {where}{name}"
            assert docs.spec(name).is_file(), f"{command}: {name} is not shipped"
            if section:
                assert section in _headings(name), f"{command}: {name} has no §{section}"
    assert "legacy-stream.md" in cited  # xlpy repro's


def test_no_text_in_the_package_points_outside_it() -> None:
    for path in [
        *PACKAGE.joinpath("xlpy").rglob("*.py"),
        *PACKAGE.joinpath("xlpy").rglob("*.json"),
    ]:
        text = path.read_text(encoding="utf-8")
        assert "shared/spec" not in text, path
        for _, name, _ in CITATION.findall(text):
            assert docs.spec(name).is_file(), f"{path} cites {name}, which is not shipped"


def test_the_notes_from_the_real_code_are_at_the_end_of_legacy_stream() -> None:
    text = docs.spec("legacy-stream").read_text(encoding="utf-8")
    notes = text[text.index("## Notes from the real code") :]
    assert "ERROR Internal error: Max batch size exceeded (1970103633). Giving up." in notes
    assert "4.0.4:tools/libxc/xc_private.c" in notes and "L28-32" in notes
    assert "rdexact failed" in notes and "50d9892" in notes
