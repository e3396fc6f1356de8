"""Legacy stream reader (CONTRACT STUB: the implementation replaces the bodies).

Two levels:
* element readers (``read_framing``, ``read_header``, ``read_pv_ext_info``,
  ``read_p2m_frame_list``, ``read_chunk``, ``read_tail``, ``read_qemu_record``)
  that read exactly one element and nothing more; the reference receiver drives
  them with libxc's own control flow (known ids per generation, heartbeat on
  the source, stale vcpu map for later PV tails);
* ``records()``, the whole grammar (framing, header, checkpoints, tails, QEMU
  record, trailer) for inspect and convert.
"""

from __future__ import annotations

from collections.abc import Iterator

from xlpy.stream.legacy import format as F
from xlpy.stream.legacy.records import (
    HvmTail,
    P2mFrameList,
    PvExtInfo,
    PvTail,
    QemuRecord,
    Record,
    StreamHeader,
    VcpuInfo,
    XendHeader,
    XlHeader,
)
from xlpy.stream.source import ByteSource


class LegacyReader:
    """Reads a legacy stream from a :class:`ByteSource`; never seeks.

    ``width`` (4/8) and ``guest`` ("pv"/"hvm") override detection.  After
    ``read_header`` the attributes ``width``, ``guest``, ``p2m_size`` are set;
    after ``read_pv_ext_info`` also ``ext_info`` and ``guest_width``.
    With ``reuse_buffers`` page data of a batch is a view valid only until the
    next element is read.
    """

    def __init__(
        self,
        source: ByteSource,
        *,
        width: int | None = None,
        guest: str | None = None,
        reuse_buffers: bool = False,
    ) -> None:
        raise NotImplementedError

    def read_framing(self) -> XlHeader | XendHeader | None:
        """Consume an xl or xend header if one starts here; ``None`` for bare."""
        raise NotImplementedError

    def read_header(self) -> StreamHeader:
        """``p2m_size`` (detecting W and the guest type unless given)."""
        raise NotImplementedError

    def read_pv_ext_info(self) -> PvExtInfo | None:
        """PV ext-info, or ``None`` when the first W bytes are not ``~0``."""
        raise NotImplementedError

    def read_p2m_frame_list(self) -> P2mFrameList:
        raise NotImplementedError

    def read_chunk(
        self,
        *,
        known_ids: frozenset[int] = F.ALL_CHUNK_IDS,
        dataless_nibbles: frozenset[int] = F.DATALESS_NIBBLES,
        compressed: bool = False,
        max_vcpu_id: int = F.XC_SR_MAX_VCPUS - 1,
    ) -> Record:
        """One chunk header and its payload: a ``PageBatch``, a chunk record or
        ``EndOfBody``.  An unknown id or a count outside 1..1024 raises
        ``StreamMalformed(field="chunk_header", value=<the int>)``."""
        raise NotImplementedError

    def read_tail(self, *, vcpu_info: VcpuInfo | None = None) -> PvTail | HvmTail:
        """The PV or HVM tail; a PV tail is sized by ``vcpu_info`` (default {vcpu0})."""
        raise NotImplementedError

    def read_qemu_record(self) -> QemuRecord | None:
        """A QEMU record if one of the known signatures starts here, else ``None``."""
        raise NotImplementedError

    def records(self) -> Iterator[Record]:
        """The whole stream as records, in wire order."""
        raise NotImplementedError
