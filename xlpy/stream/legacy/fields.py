"""The names a legacy reader gives what it was reading when it failed.

A :class:`~xlpy.errors.StreamError`'s ``field`` is ``"element.part"``; the reader spells
each one with these constants, and the receivers (:mod:`xlpy.receiver.legacy`) choose
libxc's message from the same constants, so a renamed field cannot silently change what
a receiver prints: both sides name the one constant.
"""

from __future__ import annotations

import enum


class Element(enum.StrEnum):
    """The element being read: a ``field``'s part before the first dot."""

    HEADER = "header"
    EXT_INFO = "ext_info"
    P2M_FRAME_LIST = "p2m_frame_list"
    CHUNK_HEADER = "chunk_header"
    BATCH = "batch"
    VCPU_INFO = "vcpu_info"
    HVM_PARAM = "hvm_param"
    TSC_INFO = "tsc_info"
    TMEM = "tmem"
    TMEM_EXTRA = "tmem_extra"
    COMPRESSED_DATA = "compressed_data"
    TOOLSTACK = "toolstack"


def element(field: str | None) -> str:
    """The element part of ``field`` (``"batch.pages"`` -> ``"batch"``; ``""`` for none)."""
    return (field or "").split(".", 1)[0]


EXT_INFO_SIGNATURE = "ext_info.signature"
EXT_INFO_TOTAL_BYTES = "ext_info.total_bytes"
EXT_INFO_BLOCK_ID = "ext_info.block_id"
EXT_INFO_BLOCK_SIZE = "ext_info.block_size"
EXT_INFO_VCPU_SIZE = "ext_info.vcpu_size"
#: The "vcpu" ext-info block's data (``ext_info.<block name>``).
EXT_INFO_VCPU = "ext_info.vcpu"
P2M_FRAME_LIST_ENTRIES = "p2m_frame_list.entries"
CHUNK_HEADER = "chunk_header"
BATCH_ENTRIES = "batch.entries"
BATCH_PAGES = "batch.pages"
VCPU_INFO_MAX_VCPU_ID = "vcpu_info.max_vcpu_id"
VCPU_INFO_ONLINE_MAP = "vcpu_info.online_map"
HVM_PARAM_VALUE = "hvm_param.value"
TSC_INFO = "tsc_info"
COMPRESSED_DATA_LENGTH = "compressed_data.length"
COMPRESSED_DATA_DATA = "compressed_data.data"
TOOLSTACK_LENGTH = "toolstack.length"
TOOLSTACK_DATA = "toolstack.data"
PV_TAIL_PFN_COUNT = "pv_tail.pfn_count"
PV_TAIL_PFNS = "pv_tail.pfns"
PV_TAIL_SHARED_INFO = "pv_tail.shared_info"
HVM_TAIL_MAGIC_PFNS = "hvm_tail.magic_pfns"
HVM_TAIL_CONTEXT_LENGTH = "hvm_tail.context_length"
HVM_TAIL_CONTEXT = "hvm_tail.context"
