"""Tiny byte builders for hand-crafted legacy streams (tests and the broken-stream corpus).

Deliberately literal (struct, spec §3-§8 field by field) and independent of
xlpy's writer, so the reader is checked against the spec rather than against
its own inverse.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

PAGE = 4096
XL_MAGIC = b"Xen saved domain, xl format\n \0 \r"


def uw(v: int, width: int) -> bytes:
    return v.to_bytes(width, "little")


def i32(v: int) -> bytes:
    return struct.pack("<i", v)


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def page(tag: int) -> bytes:
    """A recognisable page: ``tag`` repeated as a u32."""
    return u32(tag & 0xFFFFFFFF) * (PAGE // 4)


def batch(entries: Iterable[int], width: int, *, data: bool = True) -> bytes:
    """``count; entries; pages`` with one page per data-bearing entry (nibble not D/E/F)."""
    ents = list(entries)
    out = [i32(len(ents))] + [uw(e, width) for e in ents]
    if data:
        out += [page(e) for e in ents if (e & 0xFFFFFFFF) >> 28 not in (0xD, 0xE, 0xF)]
    return b"".join(out)


def vcpu_info(max_id: int, words: Iterable[int]) -> bytes:
    return i32(-2) + i32(max_id) + b"".join(u64(w) for w in words)


def hvm_param(chunk_id: int, value: int, pad: int = 0) -> bytes:
    return i32(chunk_id) + u32(pad) + u64(value)


def tsc_info(mode: int = 0, nsec: int = 1, khz: int = 2, incarnation: int = 3) -> bytes:
    return i32(-7) + struct.pack("<IQII", mode, nsec, khz, incarnation)


def toolstack(blob: bytes) -> bytes:
    return i32(-18) + u32(len(blob)) + blob


def compressed_data(data: bytes, width: int) -> bytes:
    return i32(-12) + uw(len(data), width) + data


def ext_info(
    width: int,
    guest_width: int,
    *,
    extv: bool = True,
    xcnt: int | None = None,
    extra: Iterable[tuple[bytes, bytes]] = (),
) -> bytes:
    ctx = b"\x11" * (2800 if guest_width == 4 else 5168)
    blocks = [(b"vcpu", ctx)]
    if extv:
        blocks.append((b"extv", b""))
    if xcnt is not None:
        blocks.append((b"xcnt", u32(xcnt)))
    blocks += list(extra)
    body = b"".join(bid + u32(len(d)) + d for bid, d in blocks)
    return b"\xff" * width + u32(len(body)) + body


def frame_list(p2m_size: int, width: int, guest_width: int) -> bytes:
    fpp = PAGE // guest_width
    n = -(-p2m_size // fpp)
    return b"".join(uw(i + 1, width) for i in range(n))


def pv_tail(
    width: int,
    guest_width: int,
    vcpus: int = 1,
    *,
    extv: bool = True,
    xcnt: int | None = None,
    unmapped: Iterable[int] = (),
) -> bytes:
    um = list(unmapped)
    out = [u32(len(um))] + [uw(p, width) for p in um]
    for v in range(vcpus):
        out.append(bytes([0x20 + v]) * (2800 if guest_width == 4 else 5168))
        if extv:
            out.append(b"\x33" * 128)
        if xcnt is not None:
            out.append(u64(7) + u64(xcnt - 16) + b"\x44" * (xcnt - 16))
    out.append(b"\x55" * PAGE)
    return b"".join(out)


def hvm_tail(
    context: bytes = b"HVMCTX", pfns: tuple[int, int, int] = (0xFEFFE, 0xFEFFD, 0xFEFFC)
) -> bytes:
    return b"".join(u64(p) for p in pfns) + u32(len(context)) + context


def qemu_0002(data: bytes = b"QEVM\0\0\0\3qemu") -> bytes:
    return b"DeviceModelRecord0002" + u32(len(data)) + data


def qemu_remus(data: bytes = b"QEVM\0\0\0\3remus") -> bytes:
    return b"RemusDeviceModelState" + u32(len(data)) + data


def qemu_to_eof(data: bytes = b"QEVM\0\0\0\3to-eof") -> bytes:
    return b"QemuDeviceModelRecord" + data


def qemu_xenserver(data: bytes = b"QEVM\0\0\0\3xs") -> bytes:
    return b"QemuDeviceModelRecord\n" + struct.pack(">I", len(data)) + data


def xl_header(config: bytes = b'builder = "hvm"\n', mandatory: int = 0) -> bytes:
    opt = u32(len(config)) + config
    return XL_MAGIC + b"\x04\x03\x02\x01" + u32(mandatory) + u32(0) + u32(len(opt)) + opt


def xend_header(config: bytes = b"(vm (image (hvm (kernel ''))))") -> bytes:
    return b"LinuxGuestRecord" + struct.pack(">i", len(config)) + config


# --- whole images -----------------------------------------------------------------

HVM_P2M = 0x20
PV_P2M = 0x20


def hvm_body(width: int = 8, *, last: bool = True, entries: Iterable[int] = (1, 2, 3)) -> bytes:
    return (
        tsc_info()
        + batch(entries, width)
        + vcpu_info(0, [1])
        + hvm_param(-3, 0xFEFFC000)
        + toolstack(u32(1) + u32(0))
        + (i32(-9) if last else b"")
        + i32(0)
    )


def hvm_image(width: int = 8, *, qemu: bytes | None = None) -> bytes:
    """A plain 4.3-style HVM image: p2m_size, body with -9, tail, [QEMU record]."""
    q = qemu_0002() if qemu is None else qemu
    return uw(HVM_P2M, width) + hvm_body(width) + hvm_tail() + q


def pv_header(width: int = 8, guest_width: int = 8, *, xcnt: int | None = None) -> bytes:
    return (
        uw(PV_P2M, width)
        + ext_info(width, guest_width, xcnt=xcnt)
        + frame_list(PV_P2M, width, guest_width)
    )


def pv_image(width: int = 8, guest_width: int = 8, *, xcnt: int | None = None) -> bytes:
    """A plain PV image with two vcpus online, extv, optional xsave."""
    body = (
        tsc_info()
        + batch([1, 2 | 0x10000000, 0xF0000000, 3], width)
        + vcpu_info(1, [3])
        + toolstack(u32(1) + u32(0))
        + i32(-9)
        + i32(0)
    )
    return (
        pv_header(width, guest_width, xcnt=xcnt)
        + body
        + pv_tail(width, guest_width, 2, xcnt=xcnt, unmapped=[7])
    )
