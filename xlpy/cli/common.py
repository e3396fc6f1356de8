"""Argument types the sub-commands share (argparse ``type=`` callables).

A bad value becomes argparse's usage error (exit 2) with the parser's message.
"""

from __future__ import annotations

import argparse
import re
from typing import BinaryIO

from xlpy.errors import UsageError
from xlpy.stream.legacy.framing import parse_width
from xlpy.stream.source import open_source

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``64M``, ``1G``, ``512K``, ``4096`` (bytes; suffixes are binary, ``iB``/``B`` allowed)."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"bad size {text!r} (expected e.g. 64M, 1G)")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def width_arg(text: str) -> int:
    """A width in bytes (4, 8) or bits (32, 64), as :func:`parse_width` reads it."""
    try:
        return parse_width(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def size_arg(text: str) -> int:
    """A size as :func:`parse_size` reads it."""
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def source_fd(spec: str) -> tuple[int, BinaryIO | None]:
    """SOURCE (a path, ``-`` or ``fd:N``) as a descriptor, and the file to close when it
    was a path; one that cannot be opened is a :class:`~xlpy.errors.UsageError`."""
    try:
        source, owned = open_source(spec)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot open {spec}: {e}") from None
    assert source.fileno is not None
    return source.fileno, owned
