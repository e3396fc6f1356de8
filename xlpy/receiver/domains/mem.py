"""An in-memory domain: what the reference receiver restored, as Python objects.

For callers that look at the result in-process and restore many times (the every-offset
truncation test, fuzzers): no directory, no files, nothing to clean up.  Pages are kept
per pfn, so it suits small guests only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from xlpy.receiver.domains import DomainFull
from xlpy.stream.legacy.format import PAGE_SIZE

#: Largest guest kept in memory (pages are Python objects).
MAX_MEM_P2M_SIZE = 1 << 20


class MemDomain:
    """Implements ``Domain`` with a dict of pages; ``restored`` once published."""

    def __init__(self) -> None:
        self.pages: dict[int, bytes] = {}
        self.p2m_size = 0
        self.state: dict[str, Any] | None = None
        self.files: dict[str, bytes] = {}
        self.restored = False
        self.destroyed = False

    def create(self, *, guest: str, p2m_size: int, width: int, guest_width: int) -> None:
        if p2m_size > MAX_MEM_P2M_SIZE:
            raise DomainFull(f"p2m_size {p2m_size:#x} exceeds {MAX_MEM_P2M_SIZE:#x}")
        self.p2m_size = p2m_size

    def write_pages(self, pfns: np.ndarray, data: memoryview) -> None:
        for i, pfn in enumerate(pfns.tolist()):
            self.pages[int(pfn)] = bytes(data[i * PAGE_SIZE : (i + 1) * PAGE_SIZE])

    def page_file(self, pfns: np.ndarray) -> None:
        return None

    def read_page(self, pfn: int) -> bytes:
        return self.pages.get(pfn, bytes(PAGE_SIZE))

    def zero_pages(self, pfns: np.ndarray) -> None:
        for pfn in pfns.tolist():
            self.pages.pop(int(pfn), None)

    def finish(self, state: Mapping[str, Any], files: Mapping[str, bytes]) -> None:
        self.state = dict(state)
        self.files = dict(files)

    def publish(self) -> None:
        self.restored = True

    def destroy(self) -> None:
        self.pages.clear()
        self.state = None
        self.files = {}
        self.destroyed = True

    def memory(self) -> bytes:
        """The guest's memory as the simulated domain's ``memory`` file holds it."""
        out = bytearray(self.p2m_size * PAGE_SIZE)
        for pfn, page in self.pages.items():
            out[pfn * PAGE_SIZE : (pfn + 1) * PAGE_SIZE] = page
        return bytes(out)
