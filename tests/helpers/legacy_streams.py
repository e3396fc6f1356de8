"""Legacy streams for the tests: small hand-built ones (the record encoder) and ``xlpy gen``'s.

Each checkpoint is a ``{pfn: page bytes}`` dict; :func:`expected_memory` folds them into
what a receiver committing checkpoint ``k`` must hold.  Kept tiny on purpose: the
sender profiles (``xlpy gen``) cover realistic streams; these pin exact bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

from xlpy.cli import main as xlpy_main
from xlpy.stream.legacy import format as F
from xlpy.stream.legacy.compression import compress_page
from xlpy.stream.legacy.pvcontext import write_context
from xlpy.stream.legacy.records import (
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
    VcpuInfo,
    VcpuState,
)
from xlpy.stream.legacy.writer import encode

PAGE = F.PAGE_SIZE
P2M = 16
CTX = F.VCPU_CONTEXT_SIZE_64
#: PV streams' page-table base: an all-zero L4 (so memory checks need not list it),
#: sent typed in checkpoint 0; start info is pfn 0 (zero: xenstore/console frame 0).
PV_L4 = P2M - 1


def pv_context(fill: int) -> bytes:
    """A context of ``fill`` bytes whose frame fields pass libxc's PV finish checks."""
    return write_context(bytes([fill]) * CTX, 8, start_info_pfn=0, pt_base_pfn=PV_L4)


def page(tag: int, pfn: int) -> bytes:
    """A recognisable page: every byte says which checkpoint and pfn wrote it."""
    return bytes([(tag * 37 + pfn * 11 + 1) % 251]) * (PAGE // 2) + bytes(PAGE // 2)


def remus_checkpoints(n: int) -> list[dict[int, bytes]]:
    """Checkpoint 0 sends pfns 1..6; later ones rewrite two pfns each (one new half)."""
    cps = [{p: page(0, p) for p in range(1, 7)}]
    for k in range(1, n):
        cps.append({k + 1: page(k, k + 1), 9 + k: page(k, 9 + k)})
    return cps


def build(
    guest: str,
    checkpoints: Sequence[dict[int, bytes]],
    *,
    last: bool = False,
    compress: bool = False,
    qemu: bytes | None = F.QEMU_SIG_0002,
    hvm_params: dict[int, int] | None = None,
    vcpus: int = 1,
    p2m_size: int = P2M,
    trailer: bytes = b"",
    context: bytes | None = None,
    frame_list: tuple[int, ...] = (0,),
) -> bytes:
    """A bare (no toolstack header) 64-bit-toolstack stream of ``checkpoints``.

    ``last`` puts -9 in the (only) checkpoint; ``compress`` makes checkpoints >= 2
    format B (after -13 in the first); ``qemu`` is the QEMU record signature written
    after every HVM tail (``None``: none); ``trailer`` follows the last byte.
    PV: ``context`` replaces every vcpu context, ``frame_list`` the p2m frame list.
    """
    recs: list[Record] = [StreamHeader(p2m_size=p2m_size, width=8)]
    if guest == "pv":
        recs.append(
            PvExtInfo(
                blocks=(
                    ExtInfoBlock(block_id=b"vcpu", data=bytes(CTX)),
                    ExtInfoBlock(block_id=b"extv", data=b""),
                )
            )
        )
        recs.append(P2mFrameList(entries=frame_list))
    if guest == "pv" and checkpoints:
        l4 = struct.pack("<Q", (4 << 28) | PV_L4)  # XEN_DOMCTL_PFINFO_L4TAB
        recs.append(PageBatch(width=8, entries=l4, data=bytes(PAGE)))
    held: dict[int, bytes] = {}
    for k, cp in enumerate(checkpoints):
        pfns = sorted(cp)
        ent = b"".join(struct.pack("<Q", p) for p in pfns)
        if compress and k > 0:
            recs.append(PageBatch(width=8, entries=ent, data=None))
            blob = b"".join(compress_page(cp[p], held.get(p, bytes(PAGE))) for p in pfns)
            recs.append(CompressedData(data=blob))
        elif pfns:
            recs.append(PageBatch(width=8, entries=ent, data=b"".join(cp[p] for p in pfns)))
        held.update(cp)
        recs.append(VcpuInfo(max_vcpu_id=vcpus - 1, online_map=((1 << vcpus) - 1,)))
        for cid, value in sorted((hvm_params or {}).items(), reverse=True):
            recs.append(HvmParamChunk(chunk_id=cid, value=value))
        if last:
            recs.append(LastCheckpoint())
        if compress and k == 0:
            recs.append(EnableCompression())
        recs.append(EndOfBody())
        if guest == "pv":
            recs.append(
                PvTail(
                    unmapped=(),
                    vcpus=tuple(
                        VcpuState(vcpu_id=v, context=context or pv_context(k + 1), ext=bytes(128))
                        for v in range(vcpus)
                    ),
                    shared_info=bytes([k + 1]) * PAGE,
                )
            )
        else:
            recs.append(
                HvmTail(ioreq_pfn=13, bufioreq_pfn=14, store_pfn=15, context=bytes([k + 1]) * 64)
            )
            if qemu is not None:
                recs.append(QemuRecord(signature=qemu, data=F.QEMU_MAGIC + bytes([k]) * 12))
    return encode(recs) + trailer


def expected_memory(
    checkpoints: Sequence[dict[int, bytes]], upto: int, p2m_size: int = P2M
) -> bytes:
    """The memory image after checkpoints ``0..upto`` were applied (unsent pages zero)."""
    mem = bytearray(p2m_size * PAGE)
    for cp in checkpoints[: upto + 1]:
        for p, data in cp.items():
            mem[p * PAGE : (p + 1) * PAGE] = data
    return bytes(mem)


#: XenServer-classic's QEMU record after the libxc image (§8.1).
XENSERVER_QEMU = F.XENSERVER_QEMU_SIG + struct.pack(">I", 16) + F.QEMU_MAGIC + bytes(12)


def strip_xl_header(data: bytes) -> bytes:
    """The stream after the xl save header (magic, 4 u32, optional data)."""
    assert data.startswith(F.XL_MAGIC)
    (optlen,) = struct.unpack_from("<I", data, len(F.XL_MAGIC) + 12)
    return data[len(F.XL_MAGIC) + 16 + optlen :]


def gen_stream(
    path: Path, guest: str, gw: int, w: int, sender: str, framing: str, seed: int
) -> None:
    """``xlpy gen`` of one plain 2 MiB stream into ``path`` (``gw``: a PV guest's width)."""
    args = ["gen", "--guest", guest, "--width", str(w), "--sender", sender]
    args += ["--toolstack", framing, "--mode", "plain", "--memory", "2M", "--seed", str(seed)]
    if guest == "pv":
        args += ["--guest-width", str(gw)]
    assert xlpy_main([*args, "-o", str(path)]) == 0
