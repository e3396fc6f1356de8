"""The specs the code and its help texts cite, shipped with the package.

``legacy-stream.md §12`` in a docstring or a help text is ``xlpy/docs/legacy-stream.md``,
section 12: these are copies of the project's specs (``legacy-stream.md``, ``abi.md``,
``xenopsd-image.md``, ``design.md``), so that an installed xlpy carries every file its
texts point at.  ``xlpy help --spec NAME`` prints one.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable


def names() -> list[str]:
    """The shipped specs, without ``.md``, sorted."""
    return sorted(f.name.removesuffix(".md") for f in files(__name__).iterdir() if _is_spec(f))


def spec(name: str) -> Traversable:
    """The shipped spec ``name`` (``legacy-stream`` or ``legacy-stream.md``)."""
    return files(__name__).joinpath(f"{name.removesuffix('.md')}.md")


def _is_spec(f: Traversable) -> bool:
    return f.is_file() and f.name.endswith(".md")
