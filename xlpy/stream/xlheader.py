"""The ``xl save`` file header, for legacy and v2 images alike: one layout, one parser.

``xl`` (``xl_cmdimpl.c``/``xl_saverestore.c``) writes a 32-byte magic, then four u32 in
the writer's byte order: the byte-order mark ``04 03 02 01`` (little-endian as read),
the mandatory flags, the optional flags and the length of the optional data (xl's
config) that follows.  Mandatory flag ``STREAMv2`` marks a migration v2 image (4.6+);
``JSON`` a libxl JSON config.  Only little-endian headers exist in practice (x86).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from xlpy.errors import StreamMalformed

XL_MAGIC: Final = b"Xen saved domain, xl format\n \0 \r"
XL_BYTEORDER_LE: Final = b"\x04\x03\x02\x01"
XL_MANDATORY_FLAG_JSON: Final = 1 << 0
XL_MANDATORY_FLAG_STREAMv2: Final = 1 << 1
#: What follows the magic: byte order mark, mandatory flags, optional flags, optional length.
XL_HEADER_FORMAT: Final = struct.Struct("<4sIII")
XL_HEADER_SIZE: Final = len(XL_MAGIC) + XL_HEADER_FORMAT.size


@dataclass(frozen=True, slots=True)
class XlFixed:
    """The fixed fields after the magic."""

    mandatory_flags: int
    optional_flags: int
    optional_length: int

    @property
    def streamv2(self) -> bool:
        """The image is a migration v2 stream (xl 4.6+ always sets the flag)."""
        return bool(self.mandatory_flags & XL_MANDATORY_FLAG_STREAMv2)


def parse_fixed(raw: bytes, offset: int, record: int | None = None) -> XlFixed:
    """The 16 bytes after the magic; a byte order other than little-endian is a
    :class:`~xlpy.errors.StreamMalformed` at ``offset`` (and ``record``)."""
    order, mandatory, optional, length = XL_HEADER_FORMAT.unpack(raw)
    if order != XL_BYTEORDER_LE:
        raise StreamMalformed(
            "xl header: wrong byte order",
            offset=offset,
            record=record,
            field="xl_header.byteorder",
            value=int.from_bytes(order, "little"),
        )
    return XlFixed(mandatory, optional, length)


def parse(raw: bytes, offset: int = 0) -> XlFixed:
    """The whole 48-byte header (magic included) read at stream ``offset``."""
    if raw[: len(XL_MAGIC)] != XL_MAGIC:
        raise StreamMalformed("no xl header: wrong magic", offset=offset, field="xl_header.magic")
    return parse_fixed(raw[len(XL_MAGIC) : XL_HEADER_SIZE], offset)
