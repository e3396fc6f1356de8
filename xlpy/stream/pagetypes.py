"""Page types (``XEN_DOMCTL_PFINFO_*``), for legacy and v2 streams alike: one table.

A legacy batch entry carries the type in bits 28-31 of its low u32 and a v2 PAGE_DATA
entry in bits 60-63; both are the same 4-bit *type nibble*.  Which nibbles carry a
page of data is what every reader, writer, converter and receiver must agree on:

* NOTAB, L1-L4 and their pinned forms (0x0-0x4, 0x9-0xC) carry a page;
* BROKEN (0xD), XALLOC (0xE) and XTAB (0xF) carry none — but a legacy receiver only
  knows the ones of its release: XTAB always, XALLOC since 4.2.0 (f35c8f6857), BROKEN
  since 4.3.0 (b7a98e60d4), so a 4.0/4.1 receiver expects a page after an XALLOC entry;
* 0x5-0x8 are reserved (the v2 spec rejects them).
"""

from __future__ import annotations

from typing import Final

XEN_DOMCTL_PFINFO_LTAB_SHIFT: Final = 28
XEN_DOMCTL_PFINFO_NOTAB: Final = 0x0 << 28
XEN_DOMCTL_PFINFO_L1TAB: Final = 0x1 << 28
XEN_DOMCTL_PFINFO_L2TAB: Final = 0x2 << 28
XEN_DOMCTL_PFINFO_L3TAB: Final = 0x3 << 28
XEN_DOMCTL_PFINFO_L4TAB: Final = 0x4 << 28
XEN_DOMCTL_PFINFO_LTABTYPE_MASK: Final = 0x7 << 28
XEN_DOMCTL_PFINFO_LPINTAB: Final = 0x8 << 28
XEN_DOMCTL_PFINFO_BROKEN: Final = 0xD << 28
XEN_DOMCTL_PFINFO_XALLOC: Final = 0xE << 28
XEN_DOMCTL_PFINFO_XTAB: Final = 0xF << 28
XEN_DOMCTL_PFINFO_LTAB_MASK: Final = 0xF << 28

#: Nibbles without page data, as the newest receivers (4.3.0+) and the v2 format know them.
DATALESS_NIBBLES: Final = frozenset({0xD, 0xE, 0xF})
#: As a 4.2 receiver knows them (no BROKEN yet).
DATALESS_NIBBLES_4_2: Final = frozenset({0xE, 0xF})
#: As a 4.0/4.1 receiver knows them: XTAB only.
DATALESS_NIBBLES_4_0: Final = frozenset({0xF})
#: Nibbles the v2 spec reserves: 0x5-0x8.
RESERVED_NIBBLES: Final = frozenset({0x5, 0x6, 0x7, 0x8})
#: Nibbles that carry a page of data: NOTAB, L1-L4 and their pinned forms.
DATA_NIBBLES: Final = frozenset(range(16)) - DATALESS_NIBBLES - RESERVED_NIBBLES


def carries_page(dataless: frozenset[int] = DATALESS_NIBBLES) -> tuple[bool, ...]:
    """For each nibble 0-15: whether an entry of that type is followed by a page.

    ``dataless`` is the receiver's set (legacy: by release); the reserved nibbles count
    as carrying a page there, as a legacy receiver treats every unknown type.
    """
    return tuple(n not in dataless for n in range(16))
