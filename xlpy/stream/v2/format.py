"""Constants and wire layouts of the migration v2 streams.

Names follow Xen's specs and headers: ``docs/specs/libxc-migration-stream.pandoc``
(``xg_sr_stream_format.h``), ``docs/specs/libxl-migration-stream.pandoc``
(``libxl_sr_stream_format.h``).  libxc and libxl record types live in two
separate numbering spaces; libxl's carry the ``REC_TYPE_LIBXL_`` prefix where
libxc uses the same number for something else.  Everything in a v2 stream is
little-endian except the libxc image header and libxl stream header, which are
big-endian.
"""

from __future__ import annotations

import struct
from typing import Final

from xlpy.stream.pagetypes import (
    XEN_DOMCTL_PFINFO_BROKEN as XEN_DOMCTL_PFINFO_BROKEN,
)
from xlpy.stream.pagetypes import (
    XEN_DOMCTL_PFINFO_L1TAB as XEN_DOMCTL_PFINFO_L1TAB,
)
from xlpy.stream.pagetypes import (
    XEN_DOMCTL_PFINFO_L2TAB as XEN_DOMCTL_PFINFO_L2TAB,
)
from xlpy.stream.pagetypes import (
    XEN_DOMCTL_PFINFO_L3TAB as XEN_DOMCTL_PFINFO_L3TAB,
)
from xlpy.stream.pagetypes import (
    XEN_DOMCTL_PFINFO_L4TAB as XEN_DOMCTL_PFINFO_L4TAB,
)
from xlpy.stream.pagetypes import (
    XEN_DOMCTL_PFINFO_LPINTAB as XEN_DOMCTL_PFINFO_LPINTAB,
)

# The page types are shared with the legacy format: one table (xlpy.stream.pagetypes).
from xlpy.stream.pagetypes import (
    XEN_DOMCTL_PFINFO_LTAB_SHIFT as XEN_DOMCTL_PFINFO_LTAB_SHIFT,
)
from xlpy.stream.pagetypes import (
    XEN_DOMCTL_PFINFO_NOTAB as XEN_DOMCTL_PFINFO_NOTAB,
)
from xlpy.stream.pagetypes import (
    XEN_DOMCTL_PFINFO_XALLOC as XEN_DOMCTL_PFINFO_XALLOC,
)
from xlpy.stream.pagetypes import (
    XEN_DOMCTL_PFINFO_XTAB as XEN_DOMCTL_PFINFO_XTAB,
)
from xlpy.stream.xlheader import XL_HEADER_SIZE as XL_HEADER_SIZE

# --- libxc image header (big-endian) ---------------------------------------
IHDR_FORMAT: Final = struct.Struct(">QIIHHI")  # marker, id, version, options, res1, res2
IHDR_SIZE: Final = 24
IHDR_MARKER: Final = 0xFFFFFFFFFFFFFFFF
IHDR_ID: Final = 0x58454E46  # "XENF"
IHDR_VERSION_MIN: Final = 2
IHDR_VERSION_MAX: Final = 3
IHDR_OPT_BIG_ENDIAN: Final = 1 << 0
IHDR_OPT_RESZ_MASK: Final = 0xFFFE

# --- libxc domain header -----------------------------------------------------
DHDR_FORMAT: Final = struct.Struct("<IHHII")  # type, page_shift, reserved, xen_major, xen_minor
DHDR_SIZE: Final = 16
DHDR_TYPE_X86_PV: Final = 0x0001
DHDR_TYPE_X86_HVM: Final = 0x0002
DHDR_TYPE_X86_PVH: Final = 0x0003
DHDR_TYPE_ARM: Final = 0x0004
DHDR_TYPE_NAMES: Final = {
    DHDR_TYPE_X86_PV: "x86 PV",
    DHDR_TYPE_X86_HVM: "x86 HVM",
    DHDR_TYPE_X86_PVH: "x86 PVH",
    DHDR_TYPE_ARM: "ARM",
}
PAGE_SHIFT: Final = 12
PAGE_SIZE: Final = 1 << PAGE_SHIFT

# --- records (both layers) ---------------------------------------------------
RHDR_FORMAT: Final = struct.Struct("<II")  # type, length
RHDR_SIZE: Final = 8
REC_ALIGN: Final = 8
#: libxc's receiver refuses longer records (xg_sr_common.h) before allocating.
REC_LENGTH_MAX: Final = 128 << 20
#: Bit 31 marks an optional record a receiver may skip.
REC_TYPE_OPTIONAL: Final = 0x80000000

REC_TYPE_END: Final = 0x00000000
REC_TYPE_PAGE_DATA: Final = 0x00000001
REC_TYPE_X86_PV_INFO: Final = 0x00000002
REC_TYPE_X86_PV_P2M_FRAMES: Final = 0x00000003
REC_TYPE_X86_PV_VCPU_BASIC: Final = 0x00000004
REC_TYPE_X86_PV_VCPU_EXTENDED: Final = 0x00000005
REC_TYPE_X86_PV_VCPU_XSAVE: Final = 0x00000006
REC_TYPE_SHARED_INFO: Final = 0x00000007
REC_TYPE_X86_TSC_INFO: Final = 0x00000008
REC_TYPE_HVM_CONTEXT: Final = 0x00000009
REC_TYPE_HVM_PARAMS: Final = 0x0000000A
REC_TYPE_TOOLSTACK: Final = 0x0000000B
REC_TYPE_X86_PV_VCPU_MSRS: Final = 0x0000000C
REC_TYPE_VERIFY: Final = 0x0000000D
REC_TYPE_CHECKPOINT: Final = 0x0000000E
REC_TYPE_CHECKPOINT_DIRTY_PFN_LIST: Final = 0x0000000F
REC_TYPE_STATIC_DATA_END: Final = 0x00000010
REC_TYPE_X86_CPUID_POLICY: Final = 0x00000011
REC_TYPE_X86_MSR_POLICY: Final = 0x00000012

#: Record names as libxc's ``rec_type_to_str`` spells them.
LIBXC_REC_NAMES: Final = {
    REC_TYPE_END: "End",
    REC_TYPE_PAGE_DATA: "Page data",
    REC_TYPE_X86_PV_INFO: "x86 PV info",
    REC_TYPE_X86_PV_P2M_FRAMES: "x86 PV P2M frames",
    REC_TYPE_X86_PV_VCPU_BASIC: "x86 PV vcpu basic",
    REC_TYPE_X86_PV_VCPU_EXTENDED: "x86 PV vcpu extended",
    REC_TYPE_X86_PV_VCPU_XSAVE: "x86 PV vcpu xsave",
    REC_TYPE_SHARED_INFO: "Shared info",
    REC_TYPE_X86_TSC_INFO: "x86 TSC info",
    REC_TYPE_HVM_CONTEXT: "HVM context",
    REC_TYPE_HVM_PARAMS: "HVM params",
    REC_TYPE_TOOLSTACK: "Toolstack",
    REC_TYPE_X86_PV_VCPU_MSRS: "x86 PV vcpu msrs",
    REC_TYPE_VERIFY: "Verify",
    REC_TYPE_CHECKPOINT: "Checkpoint",
    REC_TYPE_CHECKPOINT_DIRTY_PFN_LIST: "Checkpoint dirty pfn list",
    REC_TYPE_STATIC_DATA_END: "Static data end",
    REC_TYPE_X86_CPUID_POLICY: "x86 CPUID policy",
    REC_TYPE_X86_MSR_POLICY: "x86 MSR policy",
}
#: Records that only exist from image version 3 on.
V3_ONLY_REC_TYPES: Final = frozenset(
    {REC_TYPE_STATIC_DATA_END, REC_TYPE_X86_CPUID_POLICY, REC_TYPE_X86_MSR_POLICY}
)

# PAGE_DATA: u32 count, u32 reserved, u64 pfn[count], page data.
PAGE_DATA_HDR_FORMAT: Final = struct.Struct("<II")
PAGE_DATA_PFN_MASK: Final = (1 << 52) - 1
PAGE_DATA_PFN_RESZ_MASK: Final = ((1 << 60) - 1) & ~PAGE_DATA_PFN_MASK
PAGE_DATA_TYPE_SHIFT: Final = 60
PAGE_DATA_TYPE_MASK: Final = 0xF << PAGE_DATA_TYPE_SHIFT
#: The type nibble of a pfn entry is XEN_DOMCTL_PFINFO_* (a u32, bits 28-31)
#: shifted up by 32.
PFINFO_SHIFT_IN_ENTRY: Final = 32


X86_PV_INFO_FORMAT: Final = struct.Struct("<BBHI")  # guest_width, pt_levels, res1, res2
X86_PV_P2M_FRAMES_FORMAT: Final = struct.Struct("<II")  # p2m_start_pfn, p2m_end_pfn
X86_PV_VCPU_HDR_FORMAT: Final = struct.Struct("<II")  # vcpu_id, reserved
X86_TSC_INFO_FORMAT: Final = struct.Struct("<IIQII")  # mode, khz, nsec, incarnation, res
HVM_PARAMS_FORMAT: Final = struct.Struct("<II")  # count, reserved
HVM_PARAMS_ENTRY_FORMAT: Final = struct.Struct("<QQ")  # index, value
X86_CPUID_POLICY_ENTRY_SIZE: Final = 24  # xen_cpuid_leaf_t
X86_MSR_POLICY_ENTRY_SIZE: Final = 16  # xen_msr_entry_t
SHARED_INFO_SIZE: Final = PAGE_SIZE

# --- libxl stream header (big-endian) ---------------------------------------
LIBXL_HDR_FORMAT: Final = struct.Struct(">QII")  # ident, version, options
LIBXL_HDR_SIZE: Final = 16
LIBXL_HDR_IDENT: Final = 0x4C6962786C466D74  # "LibxlFmt"
LIBXL_HDR_VERSION: Final = 2
LIBXL_OPT_BIG_ENDIAN: Final = 1 << 0
#: Set by Xen's convert-legacy-stream on images it converted.
LIBXL_OPT_LEGACY: Final = 1 << 1
LIBXL_OPT_RESZ_MASK: Final = 0xFFFC

REC_TYPE_LIBXL_END: Final = 0x00000000
REC_TYPE_LIBXC_CONTEXT: Final = 0x00000001
REC_TYPE_EMULATOR_XENSTORE_DATA: Final = 0x00000002
REC_TYPE_EMULATOR_CONTEXT: Final = 0x00000003
REC_TYPE_CHECKPOINT_END: Final = 0x00000004
REC_TYPE_CHECKPOINT_STATE: Final = 0x00000005

LIBXL_REC_NAMES: Final = {
    REC_TYPE_LIBXL_END: "End",
    REC_TYPE_LIBXC_CONTEXT: "Libxc context",
    REC_TYPE_EMULATOR_XENSTORE_DATA: "Emulator xenstore data",
    REC_TYPE_EMULATOR_CONTEXT: "Emulator context",
    REC_TYPE_CHECKPOINT_END: "Checkpoint end",
    REC_TYPE_CHECKPOINT_STATE: "Checkpoint state",
}

EMULATOR_HEADER_FORMAT: Final = struct.Struct("<II")  # emulator_id, index
EMULATOR_ID_UNKNOWN: Final = 0x00000000
EMULATOR_ID_QEMU_TRAD: Final = 0x00000001
EMULATOR_ID_QEMU_UPSTREAM: Final = 0x00000002
EMULATOR_ID_NAMES: Final = {
    EMULATOR_ID_UNKNOWN: "Unknown",
    EMULATOR_ID_QEMU_TRAD: "Qemu Traditional",
    EMULATOR_ID_QEMU_UPSTREAM: "Qemu Upstream",
}

# --- xl save header ------------------------------------------------------
#: magic (32 bytes) then byteorder, mandatory_flags, optional_flags, optional_data_len.


def padding_for(length: int) -> int:
    """Bytes of zero padding that follow a record body of ``length`` bytes."""
    return -length & (REC_ALIGN - 1)
