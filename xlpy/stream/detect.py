"""What a stream is, from its first bytes: the one format detector every command uses.

Only looks (:meth:`~xlpy.stream.source.ByteSource.peek`), never consumes.  The kinds:

* ``v2``: a bare migration v2 libxc image (all-ones marker, ``"XenF"``);
* ``libxl``: a libxl v2 stream (``LibxlFmt`` ident), as ``xl migrate`` sends;
* ``xl-v2`` / ``xl-legacy``: an ``xl save`` file, by its STREAMv2 mandatory flag;
* ``xend``: xend's ``LinuxGuestRecord`` header before a legacy image;
* ``xenopsd``: a xapi/xenopsd suspend image (``XenSavedDomain`` / ``XenSavedDomv2-``);
* ``legacy``: a bare legacy libxc image, by the plausibility of its first fields;
* ``empty``, ``unknown``: nothing at all, or bytes that are none of these (a text file).
"""

from __future__ import annotations

import enum

from xlpy.errors import StreamMalformed
from xlpy.stream import xlheader
from xlpy.stream.legacy import format as LF
from xlpy.stream.legacy.framing import is_chunk_header
from xlpy.stream.source import ByteSource
from xlpy.stream.v2 import format as V2F

#: Enough bytes for every test below (the xl header is the longest).
PEEK = xlheader.XL_HEADER_SIZE
_LIBXC_MAGIC = V2F.IHDR_MARKER.to_bytes(8, "big")
_LIBXL_MAGIC = V2F.LIBXL_HDR_IDENT.to_bytes(8, "big")
_XENOPSD_SIGNATURES = (b"XenSavedDomain\n", b"XenSavedDomv2-\n")


class Format(enum.StrEnum):
    """A stream's kind, as :func:`detect` tells it."""

    V2 = "v2"
    LIBXL = "libxl"
    XL_V2 = "xl-v2"
    XL_LEGACY = "xl-legacy"
    XEND = "xend"
    XENOPSD = "xenopsd"
    LEGACY = "legacy"
    EMPTY = "empty"
    UNKNOWN = "unknown"

    @property
    def is_v2(self) -> bool:
        """A migration v2 stream (bare, libxl or inside an ``xl save`` file)."""
        return self in (Format.V2, Format.LIBXL, Format.XL_V2)

    @property
    def is_legacy(self) -> bool:
        """A legacy libxc image (bare, or behind an xl or xend header)."""
        return self in (Format.LEGACY, Format.XL_LEGACY, Format.XEND)

    @property
    def description(self) -> str:
        """What the format is, in words."""
        return _DESCRIPTIONS[self]


_DESCRIPTIONS = {
    Format.V2: "a migration v2 libxc image (Xen 4.6+)",
    Format.LIBXL: "a libxl migration v2 stream (xl migrate, Xen 4.6+)",
    Format.XL_V2: "an xl save file holding a migration v2 stream (Xen 4.6+)",
    Format.XL_LEGACY: "an xl save file holding a legacy libxc image (Xen 4.1-4.5)",
    Format.XEND: "a xend save file (LinuxGuestRecord) holding a legacy libxc image",
    Format.XENOPSD: "a xapi/xenopsd suspend image",
    Format.LEGACY: "a legacy libxc image (Xen 4.0-4.5)",
    Format.EMPTY: "an empty stream",
    Format.UNKNOWN: "not a Xen save or migration stream",
}


def detect_bytes(head: bytes) -> Format:
    """The format that ``head`` (the first :data:`PEEK` bytes, fewer only at the end of
    the input) starts with."""
    if not head:
        return Format.EMPTY
    if head.startswith(_XENOPSD_SIGNATURES):
        return Format.XENOPSD
    if head[:8] == _LIBXC_MAGIC:
        return Format.V2
    if head[:8] == _LIBXL_MAGIC:
        return Format.LIBXL
    if head.startswith(xlheader.XL_MAGIC) and len(head) >= xlheader.XL_HEADER_SIZE:
        try:
            fixed = xlheader.parse(head)
        except StreamMalformed:
            return Format.UNKNOWN
        return Format.XL_V2 if fixed.streamv2 else Format.XL_LEGACY
    if xlheader.XL_MAGIC.startswith(head) or head.startswith(xlheader.XL_MAGIC):
        return Format.XL_LEGACY  # cut inside the header: the legacy reader says where
    if head.startswith(LF.XEND_SIGNATURE) or LF.XEND_SIGNATURE.startswith(head):
        return Format.XEND
    return Format.LEGACY if _plausible_legacy(head) else Format.UNKNOWN


def _plausible_legacy(head: bytes) -> bool:
    """A legacy image opens with ``p2m_size`` (W bytes): on a 64-bit toolstack its high
    half is zero; on a 32-bit one the next u32 is the PV ext-info signature ``~0`` or an
    HVM image's first chunk header (legacy-stream.md §3)."""
    if len(head) < 8:
        return True  # too short to tell: the reader reports the truncation
    if head[4:8] == b"\0\0\0\0":
        return True
    if head[4:8] == b"\xff\xff\xff\xff":
        return True
    return is_chunk_header(int.from_bytes(head[4:8], "little", signed=True))


def detect(source: ByteSource) -> Format:
    """The format ``source`` starts with; nothing is consumed."""
    return detect_bytes(source.peek(PEEK))
