"""Where the repository and the test tree are, whatever a test module's depth."""

from __future__ import annotations

from pathlib import Path

#: The repository root (holds ``xlpy/``, ``tools/``, ``Makefile``).
REPO = Path(__file__).resolve().parents[2]
#: ``tests/``: the crafted streams (``streams/``) and the fuzz harness (``fuzz/``).
TESTS = REPO / "tests"
