"""Telling apart what surrounds and opens a legacy libxc image (§1, §8).

Pure functions over bytes already looked at: the reader peeks, these decide.
Nothing in a legacy stream records the toolstack width W or the guest type;
these are the heuristics Xen's own tools use, and each says "don't know"
rather than guess where the bytes are ambiguous.
"""

from __future__ import annotations

import re

from xlpy.stream.legacy import format as F

FRAMING_BARE = "bare"
FRAMING_XL = "xl"
FRAMING_XEND = "xend"
FRAMING_XENSERVER_CLASSIC = "xenserver-classic"

#: xl cfg text (``builder``/``type``), libxl JSON (``"type": "hvm"``), xend S-expression.
_HVM_HINTS = (
    re.compile(rb"""(?m)^\s*(?:builder|type)\s*=\s*["']hvm["']"""),
    re.compile(rb'"type"\s*:\s*"hvm"'),
    re.compile(rb"\(image\s+\(hvm\b"),
)
_PV_HINTS = (
    re.compile(rb"""(?m)^\s*(?:builder|type)\s*=\s*["'](?:generic|linux|pv)["']"""),
    re.compile(rb'"type"\s*:\s*"pv"'),
    re.compile(rb"\(image\s+\(linux\b"),
)


def detect_framing(head: bytes) -> str:
    """The framing that ``head`` (the first bytes of the input, as many as
    the longest magic unless the input is shorter) starts with.

    XenServer-classic has no header: it is only recognisable by its trailer,
    so it reads as ``bare`` here.
    """
    for magic, kind in ((F.XL_MAGIC, FRAMING_XL), (F.XEND_SIGNATURE, FRAMING_XEND)):
        # A stream that ends inside the magic is a truncated header, not bare.
        if head.startswith(magic) or (head and magic.startswith(head)):
            return kind
    return FRAMING_BARE


#: The signatures of the QEMU records libxc reads inside its HVM tail (§8.1).
LIBXC_QEMU_SIGNATURES = (F.QEMU_SIG_0002, F.QEMU_SIG_REMUS, F.QEMU_SIG_TO_EOF)


def qemu_signature(head: bytes) -> bytes | None:
    """The QEMU record signature ``head`` starts with, or ``None``.

    XenServer-classic's ``QemuDeviceModelRecord\\n`` is xend's 21-byte signature plus a
    newline, so it is looked for first: ``head`` needs its 22 bytes to tell them apart.
    """
    if head.startswith(F.XENSERVER_QEMU_SIG):
        return F.XENSERVER_QEMU_SIG
    sig = head[: F.QEMU_SIGNATURE_LEN]
    return sig if sig in LIBXC_QEMU_SIGNATURES else None


def detect_width(head: bytes) -> int | None:
    """W from octets 4-7 of the libxc image (v2 spec, "Legacy Images").

    A 64-bit toolstack's ``p2m_size`` has a zero high half; on a 32-bit one
    those octets are the ext-info signature or a (non-zero) chunk header.
    ``None`` when fewer than 8 bytes are available.
    """
    if len(head) < 8:
        return None
    return 8 if head[4:8] == b"\0\0\0\0" else 4


def is_chunk_header(value: int, known_ids: frozenset[int] = F.ALL_CHUNK_IDS) -> bool:
    """A page count 1..1024 or a known ``XC_SAVE_ID_*`` (0, the end marker, is not)."""
    return 1 <= value <= F.MAX_BATCH_SIZE or value in known_ids


def guest_from_config(config: bytes) -> str | None:
    """``"hvm"``/``"pv"`` when a toolstack config says which, else ``None``."""
    if any(p.search(config) for p in _HVM_HINTS):
        return "hvm"
    if any(p.search(config) for p in _PV_HINTS):
        return "pv"
    return None


def guest_from_image(after_p2m_size: bytes, width: int) -> str | None:
    """Guess the guest type from the bytes that follow ``p2m_size``.

    The ext-info signature ``~0`` means PV; a valid chunk header means HVM
    (a PV image without ext-info starts with a p2m frame pfn, which may look
    like a page count, so the signature test comes first).  ``None`` when
    neither holds.
    """
    if len(after_p2m_size) >= width and after_p2m_size[:width] == b"\xff" * width:
        return "pv"
    if len(after_p2m_size) >= 4:
        value = int.from_bytes(after_p2m_size[:4], "little", signed=True)
        if is_chunk_header(value):
            return "hvm"
    return None


def parse_width(text: str) -> int:
    """``--width`` in bytes (4, 8) or bits (32, 64, as Xen's converter takes it) → bytes."""
    widths = {"4": 4, "8": 8, "32": 4, "64": 8}
    if text not in widths:
        raise ValueError(f"width must be 4 or 8 (bytes) or 32 or 64 (bits), not {text!r}")
    return widths[text]
