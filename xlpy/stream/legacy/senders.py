"""Sender profiles: what each Xen version's ``xc_domain_save`` and toolstack wrote.

A :class:`SenderProfile` (Xen version, toolstack framing, plain or Remus,
compression, trailer, toolstack width) turns a deterministic guest
(:mod:`xlpy.guest`) into the record sequence that sender would have written
(:func:`stream_records`), streamed through :class:`LegacyWriter` by
:func:`generate`.  Memory stays bounded: records are produced one page batch
(at most 1024 pages) at a time.  ``legacy-stream.md`` §5/§9 are the rules:

* pre-body: ``-7`` TSC_INFO before the first batch (plain, non-live save);
  a Remus stream's first checkpoint is live-like: a full pass, then ``-7`` at
  the switch to the last iteration, then the pages dirtied meanwhile; later
  checkpoints never repeat ``-7``;
* batches of at most 1024 entries in pfn order; unpopulated pfns as the bare
  ``0xF0000000`` XTAB entry; a PV guest's page tables with their L1-L4 type; no
  empty batch;
* end-of-checkpoint list: ``-2``; HVM params each only if non-zero, in the
  version's order (4.0: ``-3 -4``; 4.1: ``-3 -4 -8 -10``; 4.2/4.3: ``-14 -3 -15
  -16 -17 -4 -8 -10 -11``; 4.5 adds ``-19 -20``); ``-18`` (xl toolstack, 4.2+);
  ``-9`` (plain, 4.1+); ``-13`` (first checkpoint, compression); ``0``;
* Remus with compression: checkpoints 2.. are format B, their pages as ``-12``
  payloads emitted when the 8192-page stage fills and at the end of the batches;
* toolstack framing: bare libxc; xend (``LinuxGuestRecord`` header, HVM
  ``QemuDeviceModelRecord`` to EOF, Remus: ``RemusDeviceModelState`` per
  checkpoint); xl (xl header, HVM ``DeviceModelRecord0002`` per checkpoint);
  xenserver-classic (bare libxc, HVM ``QemuDeviceModelRecord\\n`` + big-endian
  length after the image).

Epochs: a plain stream carries epoch 0 (the initial memory).  A Remus stream
of N checkpoints carries epoch 0 and 1 in checkpoint 1 (full pass, then
``dirty(1)``) and ``dirty(k)`` at epoch k in checkpoint k, so the receiver
should end with the guest at epoch N (:func:`final_epoch`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from xlpy.errors import UsageError
from xlpy.guest import Guest, GuestSpec
from xlpy.stream.legacy import format as F
from xlpy.stream.legacy.compression import Compressor
from xlpy.stream.legacy.records import (
    CheckpointBegin,
    CompressedData,
    EnableCompression,
    EndOfBody,
    ExtInfoBlock,
    HvmParamChunk,
    HvmTail,
    LastCheckpoint,
    P2mFrameList,
    PageBatch,
    PvExtInfo,
    PvTail,
    QemuRecord,
    Record,
    StreamHeader,
    Toolstack,
    Trailer,
    TscInfo,
    VcpuInfo,
    VcpuState,
    XendHeader,
    XlHeader,
    XsaveRecord,
)
from xlpy.stream.legacy.writer import LegacyWriter

SENDERS = ("xen-4.0", "xen-4.1", "xen-4.2", "xen-4.3", "xen-4.5")
TOOLSTACKS = ("bare", "xend", "xl", "xenserver-classic")
MODES = ("plain", "remus")
TRAILERS = ("eof", "foreign")

#: What ``--trailer foreign`` appends: step 4 of xl's migration handshake, sent
#: by the sender on the stream fd after the image (``xl_cmdimpl.c``
#: ``migrate_domain``).  libxc never consumes it; a receiver that looks for
#: another checkpoint reads ``"doma"`` = 1634561892 as a chunk header.
FOREIGN_TRAILER = b"domain is yours, you are cleared to unpause\x00"

#: HVM-param chunks of each version's end-of-checkpoint list, in wire order.
_HVM_PARAM_ORDER: dict[str, tuple[int, ...]] = {
    "xen-4.0": (-3, -4),
    "xen-4.1": (-3, -4, -8, -10),
    "xen-4.2": (-14, -3, -15, -16, -17, -4, -8, -10, -11),
    "xen-4.3": (-14, -3, -15, -16, -17, -4, -8, -10, -11),
    "xen-4.5": (-14, -3, -15, -16, -17, -4, -8, -10, -11, -19, -20),
}

#: libxl's physmap entry name for the emulated VGA RAM (payload of -18, §8.4).
_PHYSMAP_NAME = b"vga.vram\x00"


@dataclass(frozen=True, slots=True, kw_only=True)
class SenderProfile:
    """One sender: Xen version, toolstack framing, mode, compression, trailer, width W.

    ``width`` is the toolstack width in bytes (8: 64-bit dom0, 4: 32-bit).
    :meth:`check` rejects combinations no real sender produced.
    """

    sender: str = "xen-4.3"
    toolstack: str = "bare"
    mode: str = "plain"
    checkpoints: int = 1
    compress: bool = False
    trailer: str = "eof"
    width: int = 8

    @property
    def version(self) -> tuple[int, int]:
        """The sender's Xen version as ``(major, minor)``, e.g. ``(4, 3)``."""
        major, minor = self.sender.removeprefix("xen-").split(".")
        return int(major), int(minor)

    @property
    def remus(self) -> bool:
        """True in Remus mode: ``checkpoints`` body+tail pairs, later ones a dirty subset."""
        return self.mode == "remus"

    @property
    def has_last_checkpoint(self) -> bool:
        """Emits -9 on a non-checkpointed save (S-post, 4.1+)."""
        return self.version >= (4, 1) and not self.remus

    @property
    def has_xsave(self) -> bool:
        """Knows "xcnt" and per-vcpu xsave records (4.1+)."""
        return self.version >= (4, 1)

    def xtab_entries(self, pfns: np.ndarray, guest: str) -> np.ndarray:
        """The batch entries this sender writes for unmappable ``pfns`` (uint64).

        4.0's HVM save ORs XTAB into the entry that held the gfn
        (xc_domain_save.c ``pfn_type[j] |= XEN_DOMCTL_PFINFO_XTAB``); 4.1+, and PV
        everywhere (Xen's getpageframeinfo replaces the entry with the type), write
        a bare XTAB.
        """
        if guest == "hvm" and self.version < (4, 1):
            return pfns.astype(np.uint64) | np.uint64(F.XEN_DOMCTL_PFINFO_XTAB)
        return np.full(pfns.shape, F.BARE_XTAB_ENTRY, dtype=np.uint64)

    @property
    def ext_vcpu_size(self) -> int:
        """``sizeof(struct xen_domctl_ext_vcpucontext)`` on the sender's Xen: what
        XEN_DOMCTL_get_ext_vcpucontext puts in ``size`` (domctl.h: the callback fields,
        32 bytes; + ``mcg_cap`` in 4.2; the union with ``hvm_vmce_vcpu`` from 4.3)."""
        if self.version >= (4, 3):
            return 56
        return 40 if self.version >= (4, 2) else 32

    @property
    def has_toolstack_chunk(self) -> bool:
        """libxl's ``toolstack_save`` callback, hence -18 (xl, 4.2+)."""
        return self.toolstack == "xl" and self.version >= (4, 2)

    def check(self, guest: GuestSpec) -> None:
        """Raise :class:`UsageError` for a combination no sender produced."""
        if self.sender not in SENDERS:
            raise UsageError(f"unknown sender {self.sender!r} (one of {', '.join(SENDERS)})")
        if self.toolstack not in TOOLSTACKS:
            raise UsageError(f"unknown toolstack {self.toolstack!r}")
        if self.mode not in MODES:
            raise UsageError(f"unknown mode {self.mode!r}")
        if self.trailer not in TRAILERS:
            raise UsageError(f"unknown trailer {self.trailer!r}")
        if self.width not in (4, 8):
            raise UsageError(f"toolstack width must be 4 or 8 bytes, not {self.width}")
        if self.checkpoints < 1:
            raise UsageError("at least one checkpoint is needed")
        if not self.remus and self.checkpoints != 1:
            raise UsageError("several checkpoints need --mode remus")
        if self.compress and not self.remus:
            raise UsageError("checkpoint compression exists only in Remus mode")
        if self.compress and self.version < (4, 2):
            raise UsageError(f"{self.sender} has no checkpoint compression (Xen 4.2+)")
        if self.toolstack == "xl" and self.version < (4, 1):
            raise UsageError(
                "xl framing needs xen-4.1+ (xl 4.0 wrote headerless images that no later xl reads)"
            )
        if self.toolstack == "xl" and self.remus and self.version < (4, 3):
            raise UsageError(f"xl remus does not exist in {self.sender} (Xen 4.3+)")
        if self.toolstack == "xenserver-classic" and self.remus:
            raise UsageError("xenserver-classic never sent Remus streams")
        if (
            self.toolstack == "xend"
            and guest.kind == "hvm"
            and not self.remus
            and self.trailer == "foreign"
        ):
            raise UsageError(
                "xend's HVM QemuDeviceModelRecord runs to EOF: no foreign trailer can follow it"
            )
        if self.version < (4, 2) and guest.vcpus > F.MAX_VCPUS_4_0:
            raise UsageError(f"{self.sender} supports at most {F.MAX_VCPUS_4_0} vcpus")


def final_epoch(profile: SenderProfile) -> int:
    """The guest epoch a receiver holds after the last checkpoint."""
    return profile.checkpoints if profile.remus else 0


def expected_memory(
    profile: SenderProfile, spec: GuestSpec, *, block: int = 1024
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The final guest memory: ``(pfns, pages)`` blocks over every populated pfn.

    ``pages`` is uint8 of shape (len(pfns), 4096), the content after the last
    checkpoint; pfns ascend.  Unpopulated pfns (XTAB) are left out.
    """
    guest = Guest(spec)
    epoch = final_epoch(profile)
    populated = np.flatnonzero(guest.populated)
    for s in range(0, populated.size, block):
        pfns = populated[s : s + block]
        yield pfns, guest.pages(pfns.astype(np.uint64), epoch)


class _Stream:
    """State of one generated stream (compression cache, vcpu state)."""

    def __init__(self, profile: SenderProfile, spec: GuestSpec, *, reuse_buffers: bool) -> None:
        profile.check(spec)
        self.p = profile
        self.spec = spec
        self.g = Guest(spec)
        self.w = profile.width
        self.entry_dtype = "<u8" if self.w == 8 else "<u4"
        self.compressor: Compressor | None = (
            Compressor(self._content, reuse_buffer=reuse_buffers) if profile.compress else None
        )

    def _content(self, pfns: list[int], versions: list[object]) -> np.ndarray:
        return self.g.pages_at(
            np.asarray(pfns, dtype=np.uint64), np.asarray(versions, dtype=np.int64)
        )

    # -- the whole stream ---------------------------------------------------------------

    def records(self) -> Iterator[Record]:
        p, g = self.p, self.g
        if p.toolstack == "xl":
            yield self._xl_header()
        elif p.toolstack == "xend":
            yield XendHeader(config=self._xend_config())
        yield StreamHeader(p2m_size=g.p2m_size, width=self.w)
        if g.kind == "pv":
            yield self._pv_ext_info()
            yield P2mFrameList(entries=g.p2m_frames())
        for k in range(p.checkpoints):
            yield from self._checkpoint(k)
        if p.trailer == "foreign":
            yield Trailer(data=FOREIGN_TRAILER)

    def _checkpoint(self, k: int) -> Iterator[Record]:
        p, g = self.p, self.g
        compressed = p.compress and k >= 1
        yield CheckpointBegin(number=k, compressed=compressed)
        if k == 0:
            if not p.remus:
                yield self._tsc()
                yield from self._batches(np.arange(g.p2m_size), 0)
            else:
                yield from self._batches(np.arange(g.p2m_size), 0)
                yield self._tsc()
                yield from self._batches(g.dirty(1), 1)
            epoch = 1 if p.remus else 0
        else:
            epoch = k + 1
            if compressed:
                yield from self._compressed_batches(g.dirty(epoch), epoch)
            else:
                yield from self._batches(g.dirty(epoch), epoch)
        yield from self._end_list(k)
        yield self._tail(epoch)
        qemu = self._qemu(epoch)
        if qemu is not None:
            yield qemu

    # -- body ----------------------------------------------------------------------------

    def _entries(self, pfns: np.ndarray) -> np.ndarray:
        """Batch entries: pfn | page type << 28 (page tables typed), XTAB for holes."""
        g = self.g
        pop = g.populated[pfns]
        typed = pfns.astype(np.uint64) | (g.page_types[pfns].astype(np.uint64) << np.uint64(28))
        holes = self.p.xtab_entries(pfns, g.kind)
        return np.where(pop, typed, holes).astype(self.entry_dtype)

    def _batches(self, pfns: np.ndarray, epoch: int) -> Iterator[PageBatch]:
        """Format-A batches over ``pfns`` (ascending) with their pages at ``epoch``."""
        for s in range(0, pfns.size, F.MAX_BATCH_SIZE):
            chunk = pfns[s : s + F.MAX_BATCH_SIZE]
            data_pfns = chunk[self.g.populated[chunk]].astype(np.uint64)
            pages = self.g.pages(data_pfns, epoch)
            yield PageBatch(
                width=self.w, entries=self._entries(chunk).tobytes(), data=pages.reshape(-1).data
            )

    def _compressed_batches(self, pfns: np.ndarray, epoch: int) -> Iterator[Record]:
        """Format-B batches, -12 payloads whenever the stage fills, the rest at the end."""
        assert self.compressor is not None
        versions = self.g.versions(pfns.astype(np.uint64), epoch)
        for s in range(0, pfns.size, F.MAX_BATCH_SIZE):
            chunk = pfns[s : s + F.MAX_BATCH_SIZE]
            yield PageBatch(width=self.w, entries=self._entries(chunk).tobytes(), data=None)
            for pfn, ver in zip(
                chunk.tolist(), versions[s : s + F.MAX_BATCH_SIZE].tolist(), strict=True
            ):
                if self.compressor.stage(pfn, ver):
                    # libxc flushes mid-batch, once the batch's entries are out.
                    for data in self.compressor.flush():
                        yield CompressedData(data=data)
        for data in self.compressor.flush():
            yield CompressedData(data=data)

    def _tsc(self) -> TscInfo:
        mode, nsec, khz, inc = self.g.tsc_info()
        return TscInfo(tsc_mode=mode, nsec=nsec, khz=khz, incarnation=inc)

    def _end_list(self, k: int) -> Iterator[Record]:
        g = self.g
        yield from end_of_checkpoint_list(
            self.p,
            max_vcpu_id=g.max_vcpu_id,
            online_vcpus=range(g.spec.vcpus),
            hvm_params=g.hvm_params() if g.kind == "hvm" else None,
            toolstack_blob=self._toolstack_blob(),
            first=k == 0,
        )

    # -- header pieces --------------------------------------------------------------------

    def _pv_ext_info(self) -> PvExtInfo:
        g = self.g
        return pv_ext_info(self.p, g.vcpu_context(0, 0), xcnt=g.xcnt if self.spec.xsave else None)

    @property
    def _xsave(self) -> bool:
        return self.p.has_xsave and self.spec.xsave

    def _toolstack_blob(self) -> bytes:
        """libxl's blob (§8.4): PV none, HVM one physmap entry (the VGA RAM)."""
        if self.g.kind == "pv":
            return libxl_toolstack_blob((), self.w)
        entry = (self.g.p2m_size << 12, 0xF0000000, 8 << 20, _PHYSMAP_NAME)
        return libxl_toolstack_blob((entry,), self.w)

    def _xl_header(self) -> XlHeader:
        json = self.p.version >= (4, 5)
        cfg = self._xl_config(json)
        return XlHeader(
            mandatory_flags=F.XL_MANDATORY_FLAG_JSON if json else 0,
            optional_flags=0,
            optional_data=struct.pack("<I", len(cfg)) + cfg,
        )

    def _name(self) -> str:
        return f"gen-{self.spec.kind}-{self.spec.seed}"

    def _xl_config(self, json: bool) -> bytes:
        mem = self.spec.pages * 4096 >> 20
        if json:
            text = (
                f'{{"c_info": {{"type": "{self.spec.kind}", "name": "{self._name()}"}}, '
                f'"b_info": {{"max_vcpus": {self.spec.vcpus}, "max_memkb": {mem << 10}}}}}\n'
            )
        else:
            builder = "hvm" if self.spec.kind == "hvm" else "generic"
            text = (
                f'name = "{self._name()}"\nbuilder = "{builder}"\n'
                f"memory = {mem}\nvcpus = {self.spec.vcpus}\n"
            )
        return text.encode() + b"\x00"

    def _xend_config(self) -> bytes:
        mem = self.spec.pages * 4096 >> 20
        image = "(hvm (kernel ))" if self.spec.kind == "hvm" else "(linux (kernel /boot/vmlinuz))"
        return (
            f"(domain (domid 1) (name {self._name()}) (memory {mem}) "
            f"(vcpus {self.spec.vcpus}) (image {image}))"
        ).encode()

    # -- tails and device model ---------------------------------------------------------

    def _tail(self, epoch: int) -> PvTail | HvmTail:
        g = self.g
        if g.kind == "hvm":
            ioreq, bufioreq, store = g.hvm_magic_pfns
            return HvmTail(
                ioreq_pfn=ioreq,
                bufioreq_pfn=bufioreq,
                store_pfn=store,
                context=g.hvm_context(epoch),
            )
        vcpus = tuple(
            VcpuState(
                vcpu_id=v,
                context=g.vcpu_context(v, epoch),
                ext=g.ext_vcpu_context(v, self.p.ext_vcpu_size),
                xsave=(
                    XsaveRecord(xfeature_mask=g.XFEATURE_MASK, data=g.xsave_area(v, epoch))
                    if self._xsave
                    else None
                ),
            )
            for v in range(g.spec.vcpus)
        )
        return PvTail(unmapped=(), vcpus=vcpus, shared_info=g.shared_info(epoch))

    def _qemu(self, epoch: int) -> QemuRecord | None:
        if self.g.kind != "hvm":
            return None
        return qemu_record(self.p, self.g.qemu_data(epoch))


# -- profile rules as functions of the state (shared with xlpy.stream.tolegacy) -------------


def vcpu_info(profile: SenderProfile, max_vcpu_id: int, online: Iterable[int]) -> VcpuInfo:
    """-2 VCPU_INFO as ``profile`` writes it: exactly one map word before 4.2 (max 64 vcpus).

    Raises :class:`UsageError` when ``max_vcpu_id`` does not fit that sender's map.
    """
    words = 1 if profile.version < (4, 2) else max_vcpu_id // 64 + 1
    if max_vcpu_id >= 64 * words:
        raise UsageError(f"{profile.sender} supports at most {F.MAX_VCPUS_4_0} vcpus")
    bits = sum(1 << v for v in set(online))
    return VcpuInfo(
        max_vcpu_id=max_vcpu_id,
        online_map=tuple((bits >> (64 * i)) & 0xFFFFFFFFFFFFFFFF for i in range(words)),
    )


def hvm_param_chunks(profile: SenderProfile) -> tuple[int, ...]:
    """The HVM-param chunk ids ``profile`` knows, in its end-of-checkpoint order."""
    return _HVM_PARAM_ORDER[profile.sender]


def end_of_checkpoint_list(
    profile: SenderProfile,
    *,
    max_vcpu_id: int,
    online_vcpus: Iterable[int],
    hvm_params: Mapping[int, int] | None,
    toolstack_blob: bytes,
    first: bool,
) -> Iterator[Record]:
    """The chunks that close a checkpoint body, up to and including the ``0``.

    ``hvm_params`` maps HVM-param chunk ids to values (``None`` for PV); zero
    values and ids the sender does not know are left out.  ``toolstack_blob``
    is sent as -18 only by senders that have the chunk.
    """
    yield vcpu_info(profile, max_vcpu_id, online_vcpus)
    if hvm_params is not None:
        for cid in hvm_param_chunks(profile):
            if hvm_params.get(cid):
                yield HvmParamChunk(chunk_id=cid, value=hvm_params[cid])
    if profile.has_toolstack_chunk:
        yield Toolstack(blob=toolstack_blob)
    if profile.has_last_checkpoint:
        yield LastCheckpoint()
    if first and profile.compress:
        yield EnableCompression()
    yield EndOfBody()


def pv_ext_info(
    profile: SenderProfile, vcpu0_context: bytes, *, extv: bool = True, xcnt: int | None = None
) -> PvExtInfo:
    """PV extended info: "vcpu" (vcpu0's context), "extv", and "xcnt" for senders with xsave."""
    blocks = [ExtInfoBlock(block_id=b"vcpu", data=vcpu0_context)]
    if extv:
        blocks.append(ExtInfoBlock(block_id=b"extv", data=b""))
    if xcnt is not None and profile.has_xsave:
        blocks.append(ExtInfoBlock(block_id=b"xcnt", data=struct.pack("<I", xcnt)))
    return PvExtInfo(blocks=tuple(blocks))


def libxl_toolstack_blob(physmap: Iterable[tuple[int, int, int, bytes]], width: int) -> bytes:
    """libxl's -18 blob (§8.4) from ``(phys_offset, start_addr, size, name)`` entries.

    ``name`` includes its NUL.  The C writer advances by ``sizeof(struct)``, so
    a 64-bit toolstack (``width`` 8) leaves 4 bytes of padding after each name.
    """
    entries = list(physmap)
    pad = bytes(4) if width == 8 else b""
    return struct.pack("<II", 1, len(entries)) + b"".join(
        struct.pack("<QQQI", phys, start, size, len(name)) + name + pad
        for phys, start, size, name in entries
    )


def qemu_record(profile: SenderProfile, data: bytes) -> QemuRecord | None:
    """The QEMU record ``profile``'s toolstack appends to an HVM checkpoint (bare: none)."""
    match profile.toolstack, profile.remus:
        case "xl", _:
            return QemuRecord(signature=F.QEMU_SIG_0002, data=data)
        case "xend", False:
            return QemuRecord(signature=F.QEMU_SIG_TO_EOF, data=data)
        case "xend", True:
            return QemuRecord(signature=F.QEMU_SIG_REMUS, data=data)
        case "xenserver-classic", _:
            return QemuRecord(signature=F.XENSERVER_QEMU_SIG, data=data)
    return None


def stream_records(
    profile: SenderProfile, spec: GuestSpec, *, reuse_buffers: bool = False
) -> Iterator[Record]:
    """The records ``profile`` would send for the guest ``spec``, in wire order.

    Raises :class:`UsageError` (before yielding anything) for an impossible
    combination.  Page batches carry at most 1024 pages each.  With
    ``reuse_buffers`` a ``CompressedData`` payload is a view valid only until
    the next record is produced (for streaming writers: no second copy).
    """
    stream = _Stream(profile, spec, reuse_buffers=reuse_buffers)
    return stream.records()


def generate(profile: SenderProfile, spec: GuestSpec, out: BinaryIO) -> int:
    """Write the stream of ``profile`` for ``spec`` to ``out``; returns bytes written."""
    records = stream_records(profile, spec, reuse_buffers=True)
    writer = LegacyWriter(out, width=profile.width)
    writer.write_all(records)
    return writer.offset
