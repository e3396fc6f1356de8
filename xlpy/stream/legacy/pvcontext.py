"""The fields of a PV vcpu context and start-info page that libxc's PV finish checks.

A legacy stream carries each vcpu's ``vcpu_guest_context`` (x86_32: 2800 bytes, x86_64:
5168 bytes) with the frame numbers the sender canonicalised to pfns (§7.1): ``user_regs.edx``
(vcpu0's start-info frame, the third argument of the suspend hypercall), ``gdt_frames`` /
``gdt_ents``, ``ctrlreg[3]`` (the page-table base, folded as ``xen_pfn_to_cr3`` does) and,
on x86_64, ``ctrlreg[1]`` (the user page-table base, bit 0 = valid).  The start-info page
holds the xenstore and console frames.

Offsets are those of Xen's public headers (``arch-x86/xen.h``, ``xen-x86_32.h``,
``xen-x86_64.h``, ``xen.h``); the layouts did not change between 4.0 and 4.17.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from xlpy.stream.legacy import format as F

#: ``VMASST_TYPE_pae_extended_cr3``: a PAE guest's L3 may live above 4 GiB.
VMASST_PAE_EXTENDED_CR3 = 1 << 3
#: GDT entries per frame (8-byte descriptors) and the most a context may claim.
GDT_ENTRIES_PER_FRAME = 512
MAX_GDT_ENTRIES = 8192


@dataclass(frozen=True, slots=True)
class ContextLayout:
    """Byte offsets in one guest width's ``vcpu_guest_context``."""

    size: int
    #: ``unsigned long`` of the guest.
    word: int
    edx: int
    gdt_frames: int
    gdt_ents: int
    ctrlreg: int
    vm_assist: int
    #: Page-table levels libxc derives from the context size (§3.2 "vcpu").
    pt_levels: int


LAYOUTS = {
    8: ContextLayout(F.VCPU_CONTEXT_SIZE_64, 8, 616, 4832, 4960, 4984, 5136, 4),
    4: ContextLayout(F.VCPU_CONTEXT_SIZE_32, 4, 524, 2640, 2704, 2716, 2796, 3),
}

#: start_info_t offsets: (nr_pages, store_mfn, console.domU.mfn) per guest width.
_START_INFO = {8: (32, 56, 72), 4: (32, 44, 52)}
_START_INFO_MAGIC = {8: b"xen-3.0-x86_64", 4: b"xen-3.0-x86_32p"}


def layout(guest_width: int) -> ContextLayout:
    """The context layout of a 4- or 8-byte guest."""
    return LAYOUTS[guest_width]


def cr3_to_pfn(cr3: int, guest_width: int) -> int:
    """``UNFOLD_CR3``: a 32-bit PAE cr3 keeps pfn bits 20+ in its low bits."""
    if guest_width == 8:
        return cr3 >> 12
    c = cr3 & 0xFFFFFFFF
    return ((c >> 12) | (c << 20)) & 0xFFFFFFFF


def pfn_to_cr3(pfn: int, guest_width: int) -> int:
    """``FOLD_CR3``, the inverse of :func:`cr3_to_pfn`."""
    if guest_width == 8:
        return pfn << 12
    p = pfn & 0xFFFFFFFF
    return ((p << 12) | (p >> 20)) & 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class PvContext:
    """What libxc's PV finish reads from one vcpu context (raw, canonical values)."""

    edx: int
    gdt_frames: tuple[int, ...]
    gdt_ents: int
    cr1: int
    cr3: int


def _word(buf: bytes, off: int, w: int) -> int:
    return int.from_bytes(buf[off : off + w], "little")


def read_context(ctx: bytes, guest_width: int) -> PvContext:
    """The checked fields of a context of ``guest_width``'s size."""
    lay = layout(guest_width)
    w = lay.word
    return PvContext(
        edx=_word(ctx, lay.edx, w),
        gdt_frames=tuple(_word(ctx, lay.gdt_frames + i * w, w) for i in range(16)),
        gdt_ents=_word(ctx, lay.gdt_ents, w),
        cr1=_word(ctx, lay.ctrlreg + 1 * w, w),
        cr3=_word(ctx, lay.ctrlreg + 3 * w, w),
    )


def write_context(
    base: bytes,
    guest_width: int,
    *,
    start_info_pfn: int,
    pt_base_pfn: int,
    user_pt_pfn: int | None = None,
    gdt_pfns: tuple[int, ...] = (),
    gdt_ents: int = 0,
) -> bytes:
    """``base`` with the frame fields a sender canonicalised set (others kept).

    ``user_pt_pfn`` is x86_64's ``ctrlreg[1]`` (``None``: not valid, 0).
    """
    lay = layout(guest_width)
    w = lay.word
    out = bytearray(base.ljust(lay.size, b"\0")[: lay.size])

    def put(off: int, value: int) -> None:
        out[off : off + w] = value.to_bytes(w, "little")

    put(lay.edx, start_info_pfn)
    for i in range(16):
        put(lay.gdt_frames + i * w, gdt_pfns[i] if i < len(gdt_pfns) else 0)
    put(lay.gdt_ents, gdt_ents)
    cr1 = 0 if user_pt_pfn is None or w == 4 else pfn_to_cr3(user_pt_pfn, 8) | 1
    put(lay.ctrlreg + 1 * w, cr1)
    put(lay.ctrlreg + 3 * w, pfn_to_cr3(pt_base_pfn, guest_width))
    if w == 4:
        put(lay.vm_assist, _word(bytes(out), lay.vm_assist, 4) | VMASST_PAE_EXTENDED_CR3)
    return bytes(out)


def start_info_page(guest_width: int, *, nr_pages: int, store_pfn: int, console_pfn: int) -> bytes:
    """A start-info page as a suspended guest leaves it (frames canonicalised to pfns)."""
    nr_off, store_off, console_off = _START_INFO[guest_width]
    page = bytearray(F.PAGE_SIZE)
    magic = _START_INFO_MAGIC[guest_width]
    page[: len(magic)] = magic
    fmt = "<Q" if guest_width == 8 else "<I"
    struct.pack_into(fmt, page, nr_off, nr_pages)
    struct.pack_into(fmt, page, store_off, store_pfn)
    struct.pack_into(fmt, page, console_off, console_pfn)
    return bytes(page)


def read_start_info(page: bytes, guest_width: int) -> tuple[int, int]:
    """``(store_mfn, console.domU.mfn)`` of a start-info page (pfns in a stream)."""
    _, store_off, console_off = _START_INFO[guest_width]
    return _word(page, store_off, guest_width), _word(page, console_off, guest_width)
