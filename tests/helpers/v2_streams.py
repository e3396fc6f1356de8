"""v2 streams for the tests, written with :class:`V2Writer` or converted from legacy ones.

:func:`v2_sample`: small valid streams of every framing (the ``v2_samples`` fixtures);
:func:`make_v2`: a generated guest in a Xen 4.17 sender's record order, with what a
legacy reader must find in its conversion (:class:`V2Guest`); :func:`v2_stream`: the
repro matrix's legacy streams through the converter.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from xlpy import repro
from xlpy.guest import Guest, GuestSpec
from xlpy.stream.convert import legacy_to_v2
from xlpy.stream.legacy import format as LF
from xlpy.stream.source import ByteSource
from xlpy.stream.tolegacy import v2_to_legacy
from xlpy.stream.v2 import format as F
from xlpy.stream.v2.writer import V2Writer


@dataclass(frozen=True)
class V2Sample:
    """A small valid v2 stream and the ``-f`` format Xen's verify-stream-v2 needs for it."""

    data: bytes
    fmt: str  # "libxc", "libxl" or "xl"


def v2_sample(
    *,
    guest: str,
    width: int = 8,
    version: int = 3,
    framing: str = "libxc",
    xenstore: bool = False,
    checkpoints: int = 0,
) -> V2Sample:
    rng = np.random.default_rng(width * 10 + version)
    out = io.BytesIO()
    w = V2Writer(out)
    if framing == "xl":
        w.xl_header(optional_data=b"\x05\0\0\0name\n")
    if framing in ("xl", "libxl"):
        w.libxl_header(options=F.LIBXL_OPT_LEGACY)
        w.libxc_context()
    w.image_header(version=version)
    pv = guest == "pv"
    w.domain_header(F.DHDR_TYPE_X86_PV if pv else F.DHDR_TYPE_X86_HVM, xen_major=4, xen_minor=17)
    if pv:
        w.x86_pv_info(width, 4 if width == 8 else 3)
    if version >= 3:
        w.static_data_end()
    if pv:
        w.x86_pv_p2m_frames(0, 255, [17])
    w.page_data_pfns(np.arange(8), rng.integers(0, 256, 8 * 4096, dtype=np.uint8))
    w.page_data_pfns(
        [8, 9, 10],
        rng.integers(0, 256, 4096, dtype=np.uint8),
        types=[F.XEN_DOMCTL_PFINFO_XTAB, F.XEN_DOMCTL_PFINFO_L1TAB, F.XEN_DOMCTL_PFINFO_XALLOC],
    )
    for i in range(checkpoints):
        w.checkpoint()
        w.emulator_context(b"QEVM-ckpt%d" % i)
        w.checkpoint_end()
        w.page_data_pfns([i], bytes(4096))
    w.tsc_info(0, 2_000_000, 123456789, 2)
    if pv:
        w.x86_pv_vcpu_basic(0, bytes(5168 if width == 8 else 2800))
        w.x86_pv_vcpu_extended(0, bytes(128))
        w.x86_pv_vcpu_xsave(0, b"\x07" * 13)  # 3 bytes of padding
        w.shared_info(bytes(4096))
    else:
        w.hvm_params([(1, 0xFEFFF), (6, 0xFEFFE), (9, 0xFEFFD)])
        w.hvm_context(b"\x55" * 1021)  # 3 bytes of padding
    w.end()
    if framing in ("xl", "libxl"):
        if xenstore:
            w.emulator_xenstore_data([(b"physmap/1/start_addr", b"f0000000")])
        if not pv:
            w.emulator_context(b"QEVM" + bytes(37))
        w.end()
    return V2Sample(out.getvalue(), framing)


V2_SAMPLE_SPECS: dict[str, dict[str, object]] = {
    "pv64-libxc-v3": {"guest": "pv", "width": 8},
    "pv32-libxc-v2": {"guest": "pv", "width": 4, "version": 2},
    "hvm-libxc-v2": {"guest": "hvm", "version": 2},
    "hvm-libxl": {"guest": "hvm", "framing": "libxl"},
    "pv-xl": {"guest": "pv", "framing": "xl"},
}
#: Valid streams Xen's verify-stream-v2 rejects on Python 3 (pinned differences).
V2_SAMPLE_SPECS_XEN_MISREADS: dict[str, dict[str, object]] = {
    "hvm-libxl-xenstore": {"guest": "hvm", "framing": "libxl", "xenstore": True},
    "pv-libxl-checkpointed": {"guest": "pv", "framing": "libxl", "checkpoints": 2},
}


STORE, IOREQ, BUFIOREQ, IDENT_PT, CONSOLE, ACPI = 1, 5, 6, 12, 17, 19
IOREQ_SERVER, NR_IOREQ, X87_FIP, VM86_SIZED = 32, 33, 36, 37
XCR0_FP_SSE = 3


@dataclass
class V2Guest:
    """A v2 stream and what a legacy reader must find in its conversion."""

    data: bytes
    kind: str
    guest: Guest
    final_epoch: int
    vcpus: int
    xsave_areas: dict[int, bytes] = field(default_factory=dict)
    config: bytes | None = None
    qemu: bytes | None = None
    #: The stream carries the libxl physmap (EMULATOR_XENSTORE_DATA).
    physmap: bool = False


def xsave_area(g: Guest, vcpu: int, epoch: int, xcr0: int) -> bytes:
    return struct.pack("<QQ", xcr0, xcr0) + g.xsave_area(vcpu, epoch)[16:]


def cpu_records(instances: tuple[int, ...]) -> bytes:
    """HVM save records of typecode CPU (2) for ``instances``, bodies zero."""
    return b"".join(struct.pack("<HHI", 2, i, 16) + bytes(16) for i in instances)


def hvm_params(g: Guest) -> list[tuple[int, int]]:
    top = g.p2m_size
    return [
        (STORE, top - 3),
        (IOREQ, top - 1),
        (BUFIOREQ, top - 2),
        (VM86_SIZED, (128 << 32) | 0xFEFFD000),
        (CONSOLE, top - 4),
        (ACPI, 1),
        (IDENT_PT, 0xFEFFC000),
        (IOREQ_SERVER, top - 8),
        (NR_IOREQ, 2),
        (X87_FIP, 8),
    ]


def make_v2(
    kind: str,
    *,
    guest_width: int = 8,
    framing: str = "libxl",
    checkpoints: int = 0,
    vcpus: int = 2,
    pages: int = 300,
    xcr0: int = XCR0_FP_SSE,
    batch: int = 700,
    seed: int = 3,
    qemu: bool = True,
    hvm_cpus: tuple[int, ...] = (),
) -> V2Guest:
    """A v2 stream of a generated guest; ``checkpoints`` > 0 makes it checkpointed (Remus)."""
    spec = GuestSpec(kind=kind, pages=pages, seed=seed, guest_width=guest_width, vcpus=vcpus)  # type: ignore[arg-type]
    g = Guest(spec)
    buf = io.BytesIO()
    w = V2Writer(buf)
    libxl = framing in ("libxl", "xl")
    config = None
    if framing == "xl":
        config = (
            json.dumps(
                {
                    "c_info": {"type": kind, "name": "guest-A"},
                    "b_info": {"max_vcpus": vcpus, "max_memkb": 8192},
                }
            ).encode()
            + b"\0"
        )
        w.xl_header(
            mandatory_flags=LF.XL_MANDATORY_FLAG_STREAMv2 | LF.XL_MANDATORY_FLAG_JSON,
            optional_data=struct.pack("<I", len(config)) + config,
        )
    if libxl:
        w.libxl_header()
        w.libxc_context()
    w.image_header(version=3)
    pv = kind == "pv"
    w.domain_header(F.DHDR_TYPE_X86_PV if pv else F.DHDR_TYPE_X86_HVM, xen_major=4, xen_minor=17)
    if pv:
        w.x86_pv_info(guest_width, 4 if guest_width == 8 else 3)
        w.x86_pv_p2m_frames(0, g.p2m_size - 1, g.p2m_frames())
    w.write_record(F.REC_TYPE_X86_CPUID_POLICY, bytes(48))
    w.write_record(F.REC_TYPE_X86_MSR_POLICY, bytes(32))
    w.static_data_end()
    n_ckpt = max(checkpoints, 1)
    areas: dict[int, bytes] = {}
    qemu_data = None
    for k in range(n_ckpt):
        pfns = np.arange(g.p2m_size) if k == 0 else g.dirty(k)
        for s in range(0, pfns.size, batch):
            chunk = pfns[s : s + batch]
            pop = g.populated[chunk]
            types = np.where(pop, F.XEN_DOMCTL_PFINFO_NOTAB, F.XEN_DOMCTL_PFINFO_XTAB)
            if pv:
                types = np.where(chunk % 97 == 5, F.XEN_DOMCTL_PFINFO_L1TAB, types)
            data = g.pages(chunk[pop].astype(np.uint64), k)
            w.page_data_pfns(chunk, data.reshape(-1).data, types)
        mode, nsec, khz, inc = g.tsc_info()
        w.tsc_info(mode, khz, nsec, inc)
        if pv:
            w.shared_info(g.shared_info(k))
            for v in range(vcpus):
                areas[v] = xsave_area(g, v, k, xcr0)
                w.x86_pv_vcpu_basic(v, g.vcpu_context(v, k))
                w.x86_pv_vcpu_extended(v, g.ext_vcpu_context(v)[:72])
                w.x86_pv_vcpu_xsave(v, areas[v])
                w.x86_pv_vcpu_msrs(v, struct.pack("<IIQ", 0xC0000103, 0, 0))
        else:
            w.hvm_context(cpu_records(hvm_cpus) + g.hvm_context(k))
            w.hvm_params(hvm_params(g))
        qemu_data = g.qemu_data(k) if qemu else None
        if checkpoints:
            w.checkpoint()
            if libxl:
                physmap = [(b"physmap/f0000000/start_addr", b"f0000000")]
                physmap += [(b"physmap/f0000000/size", b"800000")]
                physmap += [(b"physmap/f0000000/name", b"vga.vram")]
                w.emulator_xenstore_data(physmap)
                if qemu_data is not None and not pv:
                    w.emulator_context(qemu_data)
                w.checkpoint_end()
    w.end()
    tail = b""
    if libxl:
        if not checkpoints:
            w.emulator_xenstore_data(
                [
                    (b"physmap/f0000000/start_addr", b"f0000000"),
                    (b"physmap/f0000000/size", b"800000"),
                    (b"physmap/f0000000/name", b"vga.vram"),
                ]
            )
            if qemu_data is not None and not pv:
                w.emulator_context(qemu_data)
        w.end()
    elif not pv and qemu_data is not None and not checkpoints:
        tail = LF.QEMU_SIG_0002 + struct.pack("<I", len(qemu_data)) + qemu_data
    return V2Guest(
        data=buf.getvalue() + tail,
        kind=kind,
        guest=g,
        final_epoch=n_ckpt - 1,
        vcpus=vcpus,
        xsave_areas=areas,
        config=config,
        qemu=None if pv else qemu_data,
        physmap=libxl,
    )


def to_legacy(data: bytes, **kw: object) -> tuple[bytes, list[str]]:
    warned: list[str] = []
    out = io.BytesIO()
    v2_to_legacy(ByteSource(io.BytesIO(data)), out, warn=warned.append, **kw)  # type: ignore[arg-type]
    return out.getvalue(), warned


@lru_cache(maxsize=16)
def v2_stream(mode: str, guest: str, fmt: str) -> bytes:
    """The repro matrix's xen-4.1 ``mode`` stream of ``guest``, converted to v2 (``fmt``)."""
    legacy = repro.cell_stream("xen-4.1", mode, guest, "eof")
    out = io.BytesIO()
    legacy_to_v2(ByteSource(io.BytesIO(legacy)), out, fmt=fmt)
    return out.getvalue()
