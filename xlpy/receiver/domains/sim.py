"""The simulated domain: a restored guest as a directory, and the backend that fills it.

Layout of ``DIR``:

* ``memory`` — sparse file, the page of pfn ``p`` at ``p * 4096`` (never-sent pages read
  as zeros);
* ``domain.json`` — guest type, widths, ``p2m_size``, online vcpus, HVM params, TSC info,
  console/store pfns, committed checkpoint, receiver generation, ``checkpointed_stream``,
  outcome and libxc's messages;
* ``vcpu<N>.ctx`` (+ ``.ext``, ``.xsave``) and ``shared_info`` (PV), ``hvm_context`` (HVM),
  ``qemu`` (the QEMU record's data), ``toolstack`` (chunk -18 blob).

Everything is written under a temporary name next to ``DIR`` and renamed on success; a
destroyed domain leaves nothing.  Later checkpoints are applied in place, so memory use is
bounded by one buffered checkpoint, not the guest size.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from xlpy.errors import UsageError
from xlpy.outfile import guarded, rename_noreplace
from xlpy.receiver.domains import DomainFull
from xlpy.stream.legacy.format import PAGE_SIZE

#: Largest guest the simulation backs: the sender refuses bigger ones (§3.1).
MAX_SIM_P2M_SIZE = 1 << 28


class SimDomain:
    """A domain directory being built under a temporary name (implements ``Domain``)."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        # lexists: a dangling symbolic link is a name in use too (publish would fail on it).
        if os.path.lexists(self.out):
            raise UsageError(f"{self.out} already exists; choose a new --out directory")
        if not self.out.parent.is_dir():
            raise UsageError(f"{self.out.parent} is not a directory; cannot create {self.out}")
        self.tmp: Path | None = None
        self._mem_fd: int | None = None
        self.p2m_size = 0
        #: ``memory`` as a write error names it: under ``--out``, not the temporary name.
        self.memory_name = str(self.out / "memory")

    # -- Domain --------------------------------------------------------------------------

    def create(self, *, guest: str, p2m_size: int, width: int, guest_width: int) -> None:
        if p2m_size > MAX_SIM_P2M_SIZE:
            raise DomainFull(f"p2m_size {p2m_size:#x} exceeds {MAX_SIM_P2M_SIZE:#x}")
        self.p2m_size = p2m_size
        try:
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", dir=self.out.parent))
        except OSError as e:
            raise UsageError(f"cannot create {self.out}: {e.strerror}") from None
        os.chmod(self.tmp, 0o755)  # mkdtemp's 0700 is for the temporary name only
        with guarded(self.memory_name):
            fd = os.open(self.tmp / "memory", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self._mem_fd = fd
        try:
            os.ftruncate(fd, p2m_size * PAGE_SIZE)
        except OSError as e:
            raise DomainFull(f"cannot size memory to {p2m_size} pages: {e}") from e

    def _fd(self) -> int:
        if self._mem_fd is None:
            raise RuntimeError("domain not created")
        return self._mem_fd

    def write_pages(self, pfns: np.ndarray, data: memoryview) -> None:
        if not len(pfns):
            return
        fd, pieces, name = self.page_file(pfns)
        pos = 0
        with guarded(name):
            for off, length in pieces:
                view = data[pos : pos + length]
                pos += length
                while len(view):
                    k = os.pwrite(fd, view, off)
                    view = view[k:]
                    off += k

    def page_file(self, pfns: np.ndarray) -> tuple[int, list[tuple[int, int]], str]:
        """``memory``, its ``(offset, length)`` pieces for the pages of ``pfns``, in order,
        and its name.

        One piece per run of consecutive pfns: a plain stream is mostly long runs.
        """
        n = len(pfns)
        if not n:
            return self._fd(), [], self.memory_name
        breaks = np.flatnonzero(np.diff(pfns.astype(np.int64)) != 1) + 1
        starts = np.concatenate(([0], breaks)).tolist()
        ends = np.concatenate((breaks, [n])).tolist()
        firsts = pfns[starts].tolist()
        pieces = [
            (int(p) * PAGE_SIZE, (e - s) * PAGE_SIZE)
            for p, s, e in zip(firsts, starts, ends, strict=True)
        ]
        return self._fd(), pieces, self.memory_name

    def read_page(self, pfn: int) -> bytes:
        out = os.pread(self._fd(), PAGE_SIZE, pfn * PAGE_SIZE)
        return out.ljust(PAGE_SIZE, b"\0")

    def zero_pages(self, pfns: np.ndarray) -> None:
        zero = bytes(PAGE_SIZE)
        with guarded(self.memory_name):
            for pfn in pfns.tolist():
                os.pwrite(self._fd(), zero, int(pfn) * PAGE_SIZE)

    def _dir(self) -> Path:
        if self.tmp is None:
            raise RuntimeError("domain not created")
        return self.tmp

    def finish(self, state: Mapping[str, Any], files: Mapping[str, bytes]) -> None:
        text = json.dumps(state, indent=2, sort_keys=True) + "\n"
        for name, blob in [*files.items(), ("domain.json", text.encode())]:
            with guarded(str(self.out / name)):
                (self._dir() / name).write_bytes(blob)

    def publish(self) -> None:
        self._close()
        try:
            # Not os.rename: it silently replaces an empty directory someone created
            # under the name while the restore ran (a shared /tmp).
            rename_noreplace(self._dir(), self.out)
        except OSError as e:
            raise UsageError(
                f"cannot create {self.out}: {e.strerror} (the name appeared during the "
                "restore; the restored domain was discarded)"
            ) from None
        self.tmp = None

    def destroy(self) -> None:
        self._close()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def _close(self) -> None:
        if self._mem_fd is not None:
            os.close(self._mem_fd)
            self._mem_fd = None
