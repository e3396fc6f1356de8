"""Typed records of the legacy libxc stream.

The reader yields these, the writer serialises them; ``parse(serialise(r)) == r``.
Every record carries ``offset`` (absolute byte offset of its first byte in the
input, framing included) and ``index`` (0-based position in the record
sequence); both are excluded from equality so that records built by a writer
compare equal to records read back.

Page data never becomes one Python object per page: a :class:`PageBatch` holds
the raw W-sized entries as ``bytes`` and the page data as one buffer.  When a
reader is created with ``reuse_buffers=True`` that buffer is a view into storage
reused by the next batch: consumers that keep it must copy it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from xlpy.stream.legacy import format as F

if TYPE_CHECKING:  # numpy costs ~0.1 s to import: only entry_array() needs it
    import numpy as np


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """Base of every record: where it starts in the input and its place in the sequence.

    Both are -1 for records built by hand (a writer's input) and do not take part in
    equality.
    """

    offset: int = field(default=-1, compare=False)
    index: int = field(default=-1, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class BlobRecord(Record):
    """A record carrying one variable-length blob (toolstack data, HVM context, QEMU data,
    trailer) that a reader may skip instead of keeping.

    ``skipped`` is the number of blob bytes a reader created with ``keep_blobs=False``
    (as inspect's) consumed without keeping; the blob field is then empty.  The wire
    length of the blob is ``len(blob) + skipped``.
    """

    skipped: int = 0


# --- framing around the libxc image (§8) -----------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class XlHeader(Record):
    """xl save-file header (§8.3): magic, byte order, flags, optional data."""

    mandatory_flags: int = 0
    optional_flags: int = 0
    optional_data: bytes = b""

    @property
    def config(self) -> bytes | None:
        """The xl config text carried in ``optional_data`` (u32 length + bytes)."""
        if len(self.optional_data) < 4:
            return None
        n = int.from_bytes(self.optional_data[:4], "little")
        return self.optional_data[4 : 4 + n]


@dataclass(frozen=True, slots=True, kw_only=True)
class XendHeader(Record):
    """xend ``LinuxGuestRecord`` + big-endian int32 length + S-expression config (§8.2)."""

    config: bytes = b""


# --- libxc header (§3) -------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamHeader(Record):
    """The W-sized ``p2m_size`` that opens every libxc image."""

    p2m_size: int
    width: int  # toolstack width W in bytes (4 or 8)


@dataclass(frozen=True, slots=True, kw_only=True)
class ExtInfoBlock:
    """One ``{char id[4]; u32 size; u8 data[size]}`` block of the PV extended info."""

    block_id: bytes
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class PvExtInfo(Record):
    """PV extended info (§3.2): ``~0`` signature, total size, blocks in wire order."""

    blocks: tuple[ExtInfoBlock, ...]

    def _find(self, block_id: bytes) -> ExtInfoBlock | None:
        for b in self.blocks:
            if b.block_id == block_id:
                return b
        return None

    @property
    def vcpu_context(self) -> bytes | None:
        """The "vcpu" block's data (a vcpu context of the guest's width), if present."""
        b = self._find(b"vcpu")
        return b.data if b else None

    @property
    def guest_width(self) -> int | None:
        """4 or 8 from the "vcpu" block size, ``None`` when there is no such block."""
        ctx = self.vcpu_context
        if ctx is None:
            return None
        return 4 if len(ctx) == F.VCPU_CONTEXT_SIZE_32 else 8

    @property
    def extv(self) -> bool:
        """True when an "extv" block is present: each PV vcpu context is followed by
        its extended context (``xen_domctl_ext_vcpucontext``, 128 bytes)."""
        return self._find(b"extv") is not None

    @property
    def xcnt(self) -> int | None:
        """Per-vcpu xsave record size from the "xcnt" block, if present."""
        b = self._find(b"xcnt")
        return int.from_bytes(b.data[:4], "little") if b else None


@dataclass(frozen=True, slots=True, kw_only=True)
class P2mFrameList(Record):
    """PV p2m frame list (§3.3): ceil(p2m_size / (4096/guest_width)) W-sized pfns."""

    entries: tuple[int, ...]


# --- body: checkpoints, batches, chunks (§4, §5) -----------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointBegin(Record):
    """Marker (no bytes on the wire): a checkpoint body starts here.

    ``number`` is 0-based; ``compressed`` says the body is format B (§6).
    """

    number: int
    compressed: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class PageBatch(Record):
    """``int count; W entries[count]; [page data]`` (format A) or without data (format B).

    ``entries`` are the raw little-endian W-sized entries; ``data`` holds 4096
    bytes per data-bearing entry in entry order, or is ``None`` in format B (and when
    a reader's :class:`~xlpy.stream.legacy.reader.PageSink` took the pages).
    """

    width: int
    entries: bytes
    data: bytes | memoryview | None

    @property
    def count(self) -> int:
        """Number of pfn entries in the batch (1..1024)."""
        return len(self.entries) // self.width

    def entry_array(self) -> np.ndarray:
        """Entries as a ``uint64`` numpy array (zero-extended for W=4)."""
        import numpy as np

        dt = "<u8" if self.width == 8 else "<u4"
        return np.frombuffer(self.entries, dtype=dt).astype(np.uint64)


@dataclass(frozen=True, slots=True, kw_only=True)
class EnableVerifyMode(Record):
    """XC_SAVE_ID_ENABLE_VERIFY_MODE (-1)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class VcpuInfo(Record):
    """XC_SAVE_ID_VCPU_INFO (-2): max vcpu id and the online bitmap as u64 words."""

    max_vcpu_id: int
    online_map: tuple[int, ...]

    def online_vcpus(self) -> list[int]:
        """Ids 0..max_vcpu_id whose bit is set in the online map, ascending."""
        return [
            i
            for i in range(self.max_vcpu_id + 1)
            if i // 64 < len(self.online_map) and self.online_map[i // 64] >> (i % 64) & 1
        ]


@dataclass(frozen=True, slots=True, kw_only=True)
class HvmParamChunk(Record):
    """The 16-byte ``{int id; u32 pad; u64 value}`` chunks (-3 -4 -8 -10 -11 -14..-17 -19 -20)."""

    chunk_id: int
    value: int
    pad: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class TmemPage:
    """One tmem page of a pool: object id (three u64), index in the object, its bytes."""

    oid: tuple[int, int, int]
    index: int
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class TmemPool:
    """One tmem pool of a -5 chunk: id, flags (page-size shift inside), page count, uuid
    and the pages read (fewer than ``n_pages`` when the list ended early)."""

    pool_id: int
    flags: int
    n_pages: int
    uuid: tuple[int, int]
    pages: tuple[TmemPage, ...]
    #: True when the page list ended with the ``oid={-1,-1,-1}`` terminator.
    terminated: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Tmem(Record):
    """XC_SAVE_ID_TMEM (-5), payload of §5.2."""

    version: int
    max_pools: int
    client_flags: int
    weight: int
    cap: int
    pools: tuple[TmemPool, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class TmemExtraEntry:
    """One -6 entry: the tmem page (pool, object id, index) to invalidate."""

    pool_id: int
    oid: tuple[int, int, int]
    index: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TmemExtra(Record):
    """XC_SAVE_ID_TMEM_EXTRA (-6): invalidations, ``pool_id=0xFFFFFFFF`` terminated."""

    entries: tuple[TmemExtraEntry, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class TscInfo(Record):
    """XC_SAVE_ID_TSC_INFO (-7): ``u32 mode; u64 nsec; u32 khz; u32 incarnation``."""

    tsc_mode: int
    nsec: int
    khz: int
    incarnation: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LastCheckpoint(Record):
    """XC_SAVE_ID_LAST_CHECKPOINT (-9)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CompressedData(Record):
    """XC_SAVE_ID_COMPRESSED_DATA (-12): W-sized length + compressed page stream (§6)."""

    data: bytes | bytearray


@dataclass(frozen=True, slots=True, kw_only=True)
class EnableCompression(Record):
    """XC_SAVE_ID_ENABLE_COMPRESSION (-13)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Toolstack(BlobRecord):
    """XC_SAVE_ID_TOOLSTACK (-18): ``u32 n; u8 blob[n]`` (libxl: §8.4)."""

    blob: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class EndOfBody(Record):
    """The ``int 0`` that ends a checkpoint body."""


# --- tails (§7) ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class XsaveRecord:
    """A PV vcpu's xsave record in the tail: the feature mask and the xsave area."""

    xfeature_mask: int
    data: bytes  # the u64 size field is len(data)


@dataclass(frozen=True, slots=True, kw_only=True)
class VcpuState:
    """One online vcpu in the PV tail: its context, extended context (``extv``) and
    xsave record (``xcnt``), the last two ``None`` when the stream has none."""

    vcpu_id: int
    context: bytes
    ext: bytes | None = None
    xsave: XsaveRecord | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PvTail(Record):
    """PV tail: unmapped pfns, per online vcpu context (+ext, +xsave), shared info."""

    unmapped: tuple[int, ...]
    vcpus: tuple[VcpuState, ...]
    shared_info: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class HvmTail(BlobRecord):
    """HVM tail: ioreq, buffered-ioreq, xenstore pfns (u64) and the HVM context blob."""

    ioreq_pfn: int
    bufioreq_pfn: int
    store_pfn: int
    context: bytes


# --- after the libxc image (§8.1) -------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class QemuRecord(BlobRecord):
    """A QEMU device-model record.

    ``signature`` is one of ``QemuDeviceModelRecord`` (data to EOF),
    ``DeviceModelRecord0002``/``RemusDeviceModelState`` (LE u32 length) or the
    XenServer-classic ``QemuDeviceModelRecord\\n`` (BE u32 length).
    """

    signature: bytes
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Trailer(BlobRecord):
    """Bytes after the libxc image that no legacy element describes (e.g. a handshake)."""

    data: bytes


#: The ``XC_SAVE_ID_*`` of each chunk record but :class:`HvmParamChunk`, whose id is
#: one of several and travels in the record.
CHUNK_IDS: dict[type[Record], int] = {
    EnableVerifyMode: F.XC_SAVE_ID_ENABLE_VERIFY_MODE,
    VcpuInfo: F.XC_SAVE_ID_VCPU_INFO,
    Tmem: F.XC_SAVE_ID_TMEM,
    TmemExtra: F.XC_SAVE_ID_TMEM_EXTRA,
    TscInfo: F.XC_SAVE_ID_TSC_INFO,
    LastCheckpoint: F.XC_SAVE_ID_LAST_CHECKPOINT,
    CompressedData: F.XC_SAVE_ID_COMPRESSED_DATA,
    EnableCompression: F.XC_SAVE_ID_ENABLE_COMPRESSION,
    Toolstack: F.XC_SAVE_ID_TOOLSTACK,
}


def chunk_id_of(rec: Record) -> int | None:
    """The ``XC_SAVE_ID_*`` of a chunk record, ``None`` for other records."""
    if isinstance(rec, HvmParamChunk):
        return rec.chunk_id
    return CHUNK_IDS.get(type(rec))
