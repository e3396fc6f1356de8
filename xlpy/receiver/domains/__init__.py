"""What the simulated receivers are asked to do, what they report, and where they write.

* :class:`ReceiveRequest` is one receive as the simulated libxc is asked for it, and
  :class:`Outcome` what happened, in the spec's terms (§10.6, §12);
* :class:`Domain` is what a receiver writes a guest into (pages, parameters, the final
  tail): the simulated domain directory (:mod:`.sim`) and the in-memory domain
  (:mod:`.mem`) implement it.
* :class:`Stop` is how a receiver leaves the step it is in, carrying the stream error
  its outcome reports.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from xlpy.errors import StreamError
from xlpy.progress import ProgressFn as ProgressFn


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceiveRequest:
    """A restore as a toolstack asks for it."""

    #: Receiver generation, e.g. ``"xen-4.3.1"`` (:mod:`xlpy.receiver.generations`).
    generation: str
    #: Directory of the restored domain (must not exist yet).
    out: Path
    #: Receiving toolstack (:mod:`xlpy.receiver.toolstacks`).
    toolstack: str = "xc_restore"
    #: ``checkpointed_stream``; ``None`` = the toolstack's default.  Generations
    #: without the argument ignore it (and report ``None``).
    checkpointed: int | None = None
    #: libxc's heartbeat after the first checkpoint (``HEARTBEAT_MS`` = 1 s).
    heartbeat: float = 1.0
    #: The caller's stall bound wherever the heartbeat does not apply (before the first
    #: checkpoint, after libxc): seconds without a byte; ``None`` waits.
    timeout: float | None = None
    progress: ProgressFn | None = None
    #: Overrides of the reader's detection (libxc learns both from its caller).
    guest: str | None = None
    width: int | None = None


@dataclass(slots=True, kw_only=True)
class Outcome:
    """What happened, in the terms of the spec's outcome table (§10.6, §12)."""

    #: The domain exists and the toolstack is satisfied.
    ok: bool
    #: ``xc_domain_restore``'s return code (0 also in the EAT case, where the toolstack fails).
    rc: int
    #: 0-based index of the last checkpoint applied, ``None`` when none was.
    committed_checkpoint: int | None
    #: Bytes libxc consumed after the end of the committed checkpoint (incl. its QEMU
    #: record when libxc reads it): the 4 eaten "Qemu" bytes of §12 EAT, or a dropped
    #: partial Remus checkpoint.
    bytes_past_image: int
    domain_destroyed: bool
    #: libxc's log lines (and the toolstack's), rendered as the stdio logger does.
    messages: list[str]
    out: Path | None
    generation: str = ""
    toolstack: str = ""
    checkpointed: int | None = None
    #: The typed stream error that stopped libxc, if any (also set on a Remus commit).
    error: StreamError | None = None
    #: Why the toolstack failed after libxc returned (EAT), if it did.
    toolstack_error: str | None = None
    #: Checkpoints whose body and tail were completely received.
    checkpoints_complete: int = 0
    #: Logical bytes consumed from the source when libxc returned.
    bytes_consumed: int = 0
    #: Where the committed checkpoint's libxc image ended (its tail, and the QEMU record
    #: when libxc reads it), ``None`` when no checkpoint was received whole.
    image_end: int | None = None
    #: The chunk header libxc read at ``image_end`` and gave up on (the EAT cell:
    #: ``b"Qemu"``); ``b""`` when it read none there.
    eaten: bytes = b""
    #: The toolstack framing the stream showed: the reader's (bare, xl, xend), or
    #: xenserver-classic when its QEMU record sat where one was read.
    framing: str = ""
    #: The signature of the first checkpoint's QEMU record, where libxc or the toolstack
    #: read it (counting the bytes libxc ate before it); ``None``: none known.
    qemu_signature: bytes | None = None
    #: How many of ``messages`` libxc logged for the read that ended a checkpointed
    #: stream after a complete checkpoint (that read's failure commits it).
    ending_lines: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class DomainFull(Exception):
    """The domain could not hold what the stream asks for (libxc's allocation failure)."""


class Stop(Exception):
    """A receiver leaving the step it is in, as libxc's and libxl's ``goto``s do.

    Raised and caught inside one receiver (each names its own kinds of stop); ``error``
    is the stream error behind it, the one the outcome reports.
    """

    def __init__(self, error: StreamError) -> None:
        super().__init__(str(error))
        self.error = error


class Domain(Protocol):
    """The guest the reference state machine builds (an empty domain libxc was given)."""

    def create(self, *, guest: str, p2m_size: int, width: int, guest_width: int) -> None:
        """Size the guest; :class:`DomainFull` when ``p2m_size`` cannot be backed."""

    def write_pages(self, pfns: np.ndarray, data: memoryview) -> None:
        """Write one 4096-byte page per pfn, from consecutive pages of ``data``."""

    def page_file(self, pfns: np.ndarray) -> tuple[int, list[tuple[int, int]], str] | None:
        """A descriptor, its ``(offset, length)`` pieces that take the pages of ``pfns``
        (in order) when written there directly, e.g. straight from the stream, and its name
        in a write error; ``None`` when pages go only through :meth:`write_pages`."""

    def read_page(self, pfn: int) -> bytes:
        """The current content of ``pfn`` (zeros if never written)."""

    def zero_pages(self, pfns: np.ndarray) -> None:
        """Make pages read as zeros: PV unmapped pfns given back, HVM magic pages cleared."""

    def finish(self, state: Mapping[str, Any], files: Mapping[str, bytes]) -> None:
        """Record the final domain state and the tail blobs (libxc's FINISH step)."""

    def publish(self) -> None:
        """Make the domain visible: the toolstack accepted it."""

    def destroy(self) -> None:
        """Remove every trace of the domain (libxc's ``xc_domain_destroy``)."""
