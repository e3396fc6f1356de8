"""Constants of the legacy libxc stream, named as in Xen's headers.

Sources: ``../shared/spec/legacy-stream.md`` §1-§9 (``xg_save_restore.h``,
``xen/include/public/domctl.h``, ``xc_compression.c``, ``xl_cmdimpl.c``,
``XendCheckpoint.py``).  Little-endian inside the libxc image.
"""

from __future__ import annotations

from xlpy.stream.pagetypes import (
    DATALESS_NIBBLES as DATALESS_NIBBLES,
)
from xlpy.stream.pagetypes import (
    DATALESS_NIBBLES_4_0 as DATALESS_NIBBLES_4_0,
)
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
from xlpy.stream.pagetypes import (
    XEN_DOMCTL_PFINFO_LTAB_MASK as XEN_DOMCTL_PFINFO_LTAB_MASK,
)

# The page types are shared with the v2 format: one table (xlpy.stream.pagetypes).
from xlpy.stream.pagetypes import (
    XEN_DOMCTL_PFINFO_LTAB_SHIFT as XEN_DOMCTL_PFINFO_LTAB_SHIFT,
)
from xlpy.stream.pagetypes import (
    XEN_DOMCTL_PFINFO_LTABTYPE_MASK as XEN_DOMCTL_PFINFO_LTABTYPE_MASK,
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
from xlpy.stream.xlheader import XL_BYTEORDER_LE as XL_BYTEORDER_LE
from xlpy.stream.xlheader import XL_MAGIC as XL_MAGIC
from xlpy.stream.xlheader import XL_MANDATORY_FLAG_JSON as XL_MANDATORY_FLAG_JSON
from xlpy.stream.xlheader import XL_MANDATORY_FLAG_STREAMv2 as XL_MANDATORY_FLAG_STREAMv2

PAGE_SIZE = 4096
PAGE_SHIFT = 12

# --- XC_SAVE_ID_* (xg_save_restore.h; -19/-20 from 4.5) ------------------
XC_SAVE_ID_ENABLE_VERIFY_MODE = -1
XC_SAVE_ID_VCPU_INFO = -2
XC_SAVE_ID_HVM_IDENT_PT = -3
XC_SAVE_ID_HVM_VM86_TSS = -4
XC_SAVE_ID_TMEM = -5
XC_SAVE_ID_TMEM_EXTRA = -6
XC_SAVE_ID_TSC_INFO = -7
XC_SAVE_ID_HVM_CONSOLE_PFN = -8
XC_SAVE_ID_LAST_CHECKPOINT = -9
XC_SAVE_ID_HVM_ACPI_IOPORTS_LOCATION = -10
XC_SAVE_ID_HVM_VIRIDIAN = -11
XC_SAVE_ID_COMPRESSED_DATA = -12
XC_SAVE_ID_ENABLE_COMPRESSION = -13
XC_SAVE_ID_HVM_GENERATION_ID_ADDR = -14
XC_SAVE_ID_HVM_PAGING_RING_PFN = -15
XC_SAVE_ID_HVM_ACCESS_RING_PFN = -16
XC_SAVE_ID_HVM_SHARING_RING_PFN = -17
XC_SAVE_ID_TOOLSTACK = -18
XC_SAVE_ID_HVM_IOREQ_SERVER_PFN = -19
XC_SAVE_ID_HVM_NR_IOREQ_SERVER_PAGES = -20

#: The 16-byte ``{int id; u32 pad; u64 value}`` chunks.
HVM_PARAM_CHUNKS = frozenset(
    {
        XC_SAVE_ID_HVM_IDENT_PT,
        XC_SAVE_ID_HVM_VM86_TSS,
        XC_SAVE_ID_HVM_CONSOLE_PFN,
        XC_SAVE_ID_HVM_ACPI_IOPORTS_LOCATION,
        XC_SAVE_ID_HVM_VIRIDIAN,
        XC_SAVE_ID_HVM_GENERATION_ID_ADDR,
        XC_SAVE_ID_HVM_PAGING_RING_PFN,
        XC_SAVE_ID_HVM_ACCESS_RING_PFN,
        XC_SAVE_ID_HVM_SHARING_RING_PFN,
        XC_SAVE_ID_HVM_IOREQ_SERVER_PFN,
        XC_SAVE_ID_HVM_NR_IOREQ_SERVER_PAGES,
    }
)

#: Names as in Xen's ``tools/python/xen/migration/legacy.py`` ``chunk_type_to_str``
#: (4.6 calls -16 "hvm_monitor_ring_pfn"; we keep Xen's spelling for `inspect`).
CHUNK_NAMES: dict[int, str] = {
    XC_SAVE_ID_ENABLE_VERIFY_MODE: "enable_verify_mode",
    XC_SAVE_ID_VCPU_INFO: "vcpu_info",
    XC_SAVE_ID_HVM_IDENT_PT: "hvm_ident_pt",
    XC_SAVE_ID_HVM_VM86_TSS: "hvm_vm86_tss",
    XC_SAVE_ID_TMEM: "tmem",
    XC_SAVE_ID_TMEM_EXTRA: "tmem_extra",
    XC_SAVE_ID_TSC_INFO: "tsc_info",
    XC_SAVE_ID_HVM_CONSOLE_PFN: "hvm_console_pfn",
    XC_SAVE_ID_LAST_CHECKPOINT: "last_checkpoint",
    XC_SAVE_ID_HVM_ACPI_IOPORTS_LOCATION: "hvm_acpi_ioports_location",
    XC_SAVE_ID_HVM_VIRIDIAN: "hvm_viridian",
    XC_SAVE_ID_COMPRESSED_DATA: "compressed_data",
    XC_SAVE_ID_ENABLE_COMPRESSION: "enable_compression",
    XC_SAVE_ID_HVM_GENERATION_ID_ADDR: "hvm_generation_id_addr",
    XC_SAVE_ID_HVM_PAGING_RING_PFN: "hvm_paging_ring_pfn",
    XC_SAVE_ID_HVM_ACCESS_RING_PFN: "hvm_monitor_ring_pfn",
    XC_SAVE_ID_HVM_SHARING_RING_PFN: "hvm_sharing_ring_pfn",
    XC_SAVE_ID_TOOLSTACK: "toolstack",
    XC_SAVE_ID_HVM_IOREQ_SERVER_PFN: "hvm_ioreq_server_pfn",
    XC_SAVE_ID_HVM_NR_IOREQ_SERVER_PAGES: "hvm_nr_ioreq_server_pages",
}

#: Chunk ids each receiver generation's ``pagebuf_get_one`` knows (§5 "since").
KNOWN_IDS_4_0 = frozenset(range(-7, 0))
KNOWN_IDS_4_1 = KNOWN_IDS_4_0 | {-8, -9, -10}
KNOWN_IDS_4_2 = KNOWN_IDS_4_1 | frozenset(range(-18, -10))
KNOWN_IDS_4_5 = KNOWN_IDS_4_2 | {-19, -20}
ALL_CHUNK_IDS = KNOWN_IDS_4_5

# --- tmem (§5.2; xen/include/public/tmem.h) -----------------------------------
TMEM_POOL_PAGESIZE_SHIFT = 4
TMEM_POOL_PAGESIZE_MASK = 0xF

# --- page batches (§4) ------------------------------------------------------
MAX_BATCH_SIZE = 1024
PFN_MASK = 0x0FFFFFFF
#: The bare XTAB entry the sender writes for unmappable pfns (pfn not ORed in).
BARE_XTAB_ENTRY = 0xF0000000

# --- limits (§15.1) ---------------------------------------------------------
XC_SR_MAX_VCPUS = 4096
MAX_VCPUS_4_0 = 64
MAX_UNMAPPED_PFNS = 1 << 28
MAX_P2M_SIZE = 0x0FFFFFFF + 1  # sender refuses larger ("Cannot save this big a guest")

# --- PV header (§3.2) -------------------------------------------------------
VCPU_CONTEXT_SIZE_32 = 2800
VCPU_CONTEXT_SIZE_64 = 5168
EXT_VCPU_CONTEXT_SIZE = 128
SHARED_INFO_SIZE = PAGE_SIZE

# --- HVM tail / QEMU records (§7.2, §8.1) -----------------------------------
QEMU_SIG_TO_EOF = b"QemuDeviceModelRecord"
QEMU_SIG_0002 = b"DeviceModelRecord0002"
QEMU_SIG_REMUS = b"RemusDeviceModelState"
QEMU_SIGNATURE_LEN = 21
#: XenServer-classic xenopsd: signature + "\n", then a big-endian u32 length.
XENSERVER_QEMU_SIG = b"QemuDeviceModelRecord\n"
QEMU_MAGIC = b"QEVM"

# --- compression (§6.4) -----------------------------------------------------
COMP_EMPTY = 0x00
COMP_FULL = 0x80
COMP_SKIP_FLAG = 0x80
COMP_MAX_RUN_WORDS = 127
DELTA_CACHE_SIZE = 8192
#: The sender's output buffer (``OUTBUF_SIZE`` in xc_domain_save.c, 16 MiB in every release).
OUTBUF_SIZE = 16 << 20


def max_compressed_chunk(width: int) -> int:
    """The largest -12 payload a sender of word size ``width`` writes.

    ``write_compressed`` compresses into what is left of ``OUTBUF_SIZE`` after the
    chunk's header (the i32 id and the W-sized length), so no payload is larger.
    """
    return OUTBUF_SIZE - 4 - width


# --- toolstack framing (§8.2, §8.3) -----------------------------------------
XEND_SIGNATURE = b"LinuxGuestRecord"
