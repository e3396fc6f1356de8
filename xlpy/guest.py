"""A deterministic guest, described entirely by a seed.

Stream generators, receivers and converters need the same guest on both ends:
the generator to write its pages, a test to check what a receiver restored.
Everything here is a pure function of the :class:`GuestSpec`:

* memory: ``pages`` pfns (``p2m_size``); an HVM guest has the legacy VGA hole
  (pfns 0xA0-0xBF) unpopulated, so a sender emits bare XTAB entries there;
* page contents per *epoch*: epoch 0 is the initial memory; epoch ``e >= 1``
  dirties a pseudo-random subset ``dirty(e)`` (fraction ``dirty``) and rewrites
  one to three short word spans in each dirtied page, so consecutive versions
  differ sparsely, as a running guest's pages do.  A page's content at epoch
  ``e`` is its base content overlaid with the spans of the last epoch ``<= e``
  that dirtied it.  About one page in eight is all zeroes at epoch 0.
* a PV guest's special pages at the bottom of memory (:class:`PvLayout`): start info
  (pointing at the xenstore and console pages), a GDT frame and a page-table tree
  (x86_64: kernel and user L4, L3, L2, L1; PAE: L3, L2, L1) sent with their page types;
  their contents are fixed, and later epochs never dirty them;
* vcpus (all online), PV contexts whose frame fields (start info, GDT, cr3, user cr3)
  point at those pages as a sender canonicalises them, shared info, HVM params, tail
  pfns, the HVM context blob and QEMU device-model data (``QEVM`` magic).

Contents are built in bulk with numpy from a 512 KiB pool drawn once from the
seed and mixed per page with a 64-bit hash, so generating pages costs a gather
and an XOR per word rather than a random generator per page.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

from xlpy.stream.legacy import format as F
from xlpy.stream.legacy import pvcontext

PAGE = F.PAGE_SIZE
_WORDS = PAGE // 8
_POOL_WORDS = 1 << 16
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)

#: The legacy VGA hole an HVM guest leaves unpopulated.
HVM_HOLE = range(0xA0, 0xC0)
#: Fewest pages a generated guest may have (HVM keeps a few special pages on top, PV
#: its special pages below the p2m frames at pfn 16).
MIN_PAGES = {"pv": 16, "hvm": 16}
#: Present, writable, user, accessed, dirty: the flags of a generated PTE.
_PTE_FLAGS = 0x67
#: A PAE L3 entry may only have the present bit.
_PAE_L3_FLAGS = 0x1
#: Salts that keep the hash streams of different purposes apart.
_SALT_ZERO, _SALT_KEY, _SALT_DIRTY, _SALT_SPAN, _SALT_OFF, _SALT_BYTES = range(1, 7)

GuestKind = Literal["pv", "hvm"]


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, element-wise on ``uint64`` (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    out: np.ndarray = x ^ (x >> np.uint64(31))
    return out


def _hash(seed: int, salt: int, *keys: np.ndarray | int) -> np.ndarray:
    """A 64-bit hash of ``(seed, salt, keys...)``, broadcast over array keys."""
    with np.errstate(over="ignore"):
        h = _mix(np.asarray([(seed * 0x9E3779B97F4A7C15 + salt) & 0xFFFFFFFFFFFFFFFF], np.uint64))
        for k in keys:
            h = _mix(h ^ (np.asarray(k, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)))
    return h


def det_bytes(seed: int, salt: int, n: int, *keys: int) -> bytes:
    """``n`` deterministic bytes for small blobs (contexts, configs, QEMU data)."""
    words = (n + 7) // 8
    with np.errstate(over="ignore"):
        h = _hash(seed, _SALT_BYTES + salt, *keys, np.arange(words, dtype=np.uint64))
    return h.astype("<u8").tobytes()[:n]


@dataclass(frozen=True, slots=True, kw_only=True)
class GuestSpec:
    """What a generated guest looks like.

    ``pages`` is ``p2m_size``; ``guest_width`` is 4 or 8 bytes (PV only: the
    "vcpu" ext-info block and context sizes); ``dirty`` the fraction of
    populated pages each later epoch rewrites; ``xsave`` gives PV vcpus an
    xsave area (sent only by senders that know "xcnt").
    """

    kind: GuestKind
    pages: int
    seed: int = 0
    guest_width: int = 8
    vcpus: int = 2
    dirty: float = 0.2
    xsave: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ("pv", "hvm"):
            raise ValueError(f"guest kind must be pv or hvm, not {self.kind!r}")
        if self.pages < MIN_PAGES[self.kind] or self.pages > F.MAX_P2M_SIZE:
            raise ValueError(
                f"{self.kind} guest needs {MIN_PAGES[self.kind]}..{F.MAX_P2M_SIZE} pages, "
                f"not {self.pages}"
            )
        if self.seed < 0:
            # numpy's generators take only non-negative seeds.
            raise ValueError(f"seed must be a non-negative integer, not {self.seed}")
        if self.guest_width not in (4, 8):
            raise ValueError(f"guest width must be 4 or 8 bytes, not {self.guest_width}")
        if not 1 <= self.vcpus <= F.XC_SR_MAX_VCPUS:
            raise ValueError(f"vcpus must be 1..{F.XC_SR_MAX_VCPUS}, not {self.vcpus}")
        if not 0.0 <= self.dirty <= 1.0:
            raise ValueError(f"dirty fraction must be in [0, 1], not {self.dirty}")


@dataclass(frozen=True, slots=True)
class PvLayout:
    """Where a PV guest's special pages are (pfns) and the page-table tree's types."""

    start_info: int
    store: int
    console: int
    gdt: int
    #: Kernel page-table base (``ctrlreg[3]``): an L4 (x86_64) or the PAE L3.
    pt_base: int
    #: x86_64's user page-table base (``ctrlreg[1]``), ``None`` for PAE.
    user_pt_base: int | None
    #: Page-table pfn -> its level (1..4); each level's table maps the next one down.
    tables: dict[int, int]

    @staticmethod
    def for_width(guest_width: int) -> PvLayout:
        """The layout of a 4- or 8-byte guest: pfns 1..9 (x86_64) or 1..7 (PAE)."""
        if guest_width == 8:
            return PvLayout(1, 2, 3, 4, 5, 6, {5: 4, 6: 4, 7: 3, 8: 2, 9: 1})
        return PvLayout(1, 2, 3, 4, 5, None, {5: 3, 6: 2, 7: 1})

    @property
    def end(self) -> int:
        """One past the last special pfn."""
        return max(self.tables) + 1


class Guest:
    """Page contents and machine state of a :class:`GuestSpec`."""

    def __init__(self, spec: GuestSpec) -> None:
        self.spec = spec
        self.p2m_size = spec.pages
        self.kind = spec.kind
        self.seed = spec.seed
        rng = np.random.default_rng([spec.seed, 0x67656E])
        self._pool = rng.integers(0, 1 << 64, size=_POOL_WORDS, dtype=np.uint64, endpoint=False)
        # Every page-sized window of the pool, as a view: gathering rows of it
        # copies whole pages without building an index array.
        self._windows = np.lib.stride_tricks.sliding_window_view(self._pool, _WORDS)

    # -- memory layout ----------------------------------------------------------------

    @cached_property
    def populated(self) -> np.ndarray:
        """Boolean mask over pfns: which have memory (the rest are XTAB holes)."""
        mask = np.ones(self.p2m_size, dtype=bool)
        if self.kind == "hvm" and self.p2m_size > HVM_HOLE.stop + 8:
            mask[HVM_HOLE.start : HVM_HOLE.stop] = False
        return mask

    def dirty(self, epoch: int) -> np.ndarray:
        """Sorted populated pfns that ``epoch`` (>= 1) rewrites."""
        return np.flatnonzero(self._dirty_mask(np.arange(self.p2m_size, dtype=np.uint64), epoch))

    def _dirty_mask(self, pfns: np.ndarray, epoch: int) -> np.ndarray:
        limit = np.uint64(min(int(self.spec.dirty * 2.0**64), 0xFFFFFFFFFFFFFFFF))
        hit = _hash(self.seed, _SALT_DIRTY, epoch, pfns) < limit
        if self.spec.dirty >= 1.0:
            hit[:] = True
        idx = pfns.astype(np.int64)
        result: np.ndarray = hit & self.populated[idx] & ~self._special[idx]
        return result

    # -- PV special pages -------------------------------------------------------------

    @cached_property
    def pv_layout(self) -> PvLayout | None:
        """The PV special pages (``None`` for HVM)."""
        return PvLayout.for_width(self.spec.guest_width) if self.kind == "pv" else None

    @cached_property
    def _special(self) -> np.ndarray:
        mask = np.zeros(self.p2m_size, dtype=bool)
        if self.pv_layout is not None:
            mask[1 : self.pv_layout.end] = True
        return mask

    @cached_property
    def page_types(self) -> np.ndarray:
        """Per pfn, the page-type nibble a sender puts in the batch entry (uint32)."""
        types = np.zeros(self.p2m_size, dtype=np.uint32)
        if self.pv_layout is not None:
            for pfn, level in self.pv_layout.tables.items():
                types[pfn] = level
        return types

    def _special_page(self, pfn: int) -> bytes | None:
        """The fixed content of a special pfn (``None``: an ordinary page)."""
        lay = self.pv_layout
        if lay is None or not self._special[pfn]:
            return None
        gw = self.spec.guest_width
        if pfn == lay.start_info:
            return pvcontext.start_info_page(
                gw, nr_pages=self.p2m_size, store_pfn=lay.store, console_pfn=lay.console
            )
        level = lay.tables.get(pfn)
        if level is None:
            return None  # store, console, GDT: ordinary-looking contents
        # Each table maps the next level down; the L1 maps the first ordinary pages.
        ptes = np.zeros(_WORDS, dtype="<u8")
        if level == 1:
            targets = np.arange(lay.end, min(self.p2m_size, lay.end + 64), dtype=np.uint64)
            ptes[: len(targets)] = (targets << np.uint64(12)) | np.uint64(_PTE_FLAGS)
        else:
            lower = next(p for p, lv in lay.tables.items() if lv == level - 1)
            flags = _PAE_L3_FLAGS if gw == 4 and level == 3 else _PTE_FLAGS
            ptes[0] = (lower << 12) | flags
        return ptes.tobytes()

    def versions(self, pfns: np.ndarray, epoch: int) -> np.ndarray:
        """For each pfn, the last epoch ``<= epoch`` that rewrote it (0: never)."""
        p = np.asarray(pfns, dtype=np.uint64)
        ver = np.zeros(p.shape, dtype=np.int64)
        for e in range(1, epoch + 1):
            ver[self._dirty_mask(p, e)] = e
        return ver

    # -- page contents ----------------------------------------------------------------

    def pages_at(self, pfns: np.ndarray, versions: np.ndarray) -> np.ndarray:
        """Contents (uint8, shape (n, 4096)) of ``pfns``, each at its ``versions`` entry."""
        p = np.asarray(pfns, dtype=np.uint64)
        n = p.shape[0]
        with np.errstate(over="ignore"):
            key = _hash(self.seed, _SALT_KEY, p)
            start = (key >> np.uint64(20)) % np.uint64(_POOL_WORDS - _WORDS)
            words = self._windows[start.astype(np.int64)]
            words ^= key[:, None]
            zero = (_hash(self.seed, _SALT_ZERO, p) & np.uint64(7)) == 0
            words[zero] = 0
        out = words.view(np.uint8).reshape(n, PAGE)
        if self.pv_layout is not None:
            for i in np.flatnonzero((p >= 1) & (p < self.pv_layout.end)).tolist():
                special = self._special_page(int(p[i]))
                if special is not None:
                    out[i] = np.frombuffer(special, dtype=np.uint8)
        vers = np.asarray(versions, dtype=np.int64)
        sel = np.flatnonzero(vers > 0)
        if sel.size:
            with np.errstate(over="ignore"):
                spans = _hash(
                    self.seed,
                    _SALT_SPAN,
                    p[sel][:, None],
                    vers[sel].astype(np.uint64)[:, None],
                    np.arange(4, dtype=np.uint64)[None, :],
                )
            words = out.view("<u4")
            pool32 = self._pool.view("<u4")
            for i, h in zip(sel.tolist(), spans.tolist(), strict=True):
                self._overlay(words[i], pool32, h)
        result: np.ndarray = out
        return result

    @staticmethod
    def _overlay(words: np.ndarray, pool32: np.ndarray, h: list[int]) -> None:
        """Rewrite the one to three word spans that a version dirtied in a page."""
        for k in range(1 + h[0] % 3):
            off = h[k + 1] % (PAGE // 4)
            length = min(1 + (h[k + 1] >> 12) % 96, PAGE // 4 - off)
            src = (h[k + 1] >> 32) % (2 * _POOL_WORDS - 256)
            words[off : off + length] = pool32[src : src + length] ^ np.uint32(h[0] & 0xFFFFFFFF)

    def pages(self, pfns: np.ndarray, epoch: int) -> np.ndarray:
        """Contents of ``pfns`` as they are at ``epoch``."""
        return self.pages_at(pfns, self.versions(pfns, epoch))

    def page(self, pfn: int, epoch: int) -> bytes:
        """One page at ``epoch``."""
        return bytes(self.pages(np.array([pfn], dtype=np.uint64), epoch)[0].tobytes())

    # -- machine state ----------------------------------------------------------------

    @property
    def max_vcpu_id(self) -> int:
        return self.spec.vcpus - 1

    def online_map(self, words: int | None = None) -> tuple[int, ...]:
        """The VCPU_INFO online bitmap (all vcpus online) as u64 words."""
        n = words if words is not None else self.max_vcpu_id // 64 + 1
        bits = (1 << self.spec.vcpus) - 1
        return tuple((bits >> (64 * i)) & 0xFFFFFFFFFFFFFFFF for i in range(n))

    @property
    def context_size(self) -> int:
        return F.VCPU_CONTEXT_SIZE_64 if self.spec.guest_width == 8 else F.VCPU_CONTEXT_SIZE_32

    def vcpu_context(self, vcpu: int, epoch: int) -> bytes:
        """A PV vcpu context: deterministic FPU area, the frame fields pointing at the
        special pages as a sender canonicalises them (``edx`` = start info on vcpu0),
        everything else zero."""
        base = det_bytes(self.seed, 1, 512, vcpu, epoch) + bytes(self.context_size - 512)
        lay = self.pv_layout or PvLayout.for_width(self.spec.guest_width)
        return pvcontext.write_context(
            base,
            self.spec.guest_width,
            start_info_pfn=lay.start_info if vcpu == 0 else 0,
            pt_base_pfn=lay.pt_base,
            user_pt_pfn=lay.user_pt_base,
            gdt_pfns=(lay.gdt,),
            gdt_ents=32,
        )

    def ext_vcpu_context(self, vcpu: int, size: int = 56) -> bytes:
        """The 128-byte ``ext_vcpucontext`` a sender's libxc copies out of the domctl.

        Xen fills ``vcpu`` and ``size`` (``sizeof`` the struct on the sender's Xen,
        which a receiving Xen checks: a ``vcpu`` past the domain's vcpus is -ESRCH);
        the rest of the struct is the guest's state, the rest of the 128 bytes zero.
        """
        head = struct.pack("<II", vcpu, size)
        return head + det_bytes(self.seed, 2, size - len(head), vcpu) + bytes(128 - size)

    #: x87 + SSE + AVX state, as a 4.1-4.5 era CPU reports it.
    XFEATURE_MASK = 0x7
    XSAVE_AREA_SIZE = 832

    @property
    def xcnt(self) -> int:
        """The "xcnt" value: xsave record size (area + mask + size fields)."""
        return self.XSAVE_AREA_SIZE + 16

    def xsave_area(self, vcpu: int, epoch: int) -> bytes:
        return det_bytes(self.seed, 3, self.XSAVE_AREA_SIZE, vcpu, epoch)

    def shared_info(self, epoch: int) -> bytes:
        return det_bytes(self.seed, 4, 64, epoch) + bytes(PAGE - 64)

    def p2m_frames(self) -> tuple[int, ...]:
        """Pfns of the PV p2m-table frames (``ceil(p2m_size / FPP)`` of them)."""
        fpp = PAGE // self.spec.guest_width
        n = -(-self.p2m_size // fpp)
        return tuple((16 + i) % self.p2m_size for i in range(n))

    @property
    def hvm_magic_pfns(self) -> tuple[int, int, int]:
        """ioreq, buffered-ioreq and xenstore pfns: the top three pages."""
        top = self.p2m_size
        return (top - 1, top - 2, top - 3)

    def hvm_params(self) -> dict[int, int]:
        """``XC_SAVE_ID_*`` HVM-param chunk id -> value; zero values are not sent."""
        top = self.p2m_size
        return {
            F.XC_SAVE_ID_HVM_GENERATION_ID_ADDR: 0,
            F.XC_SAVE_ID_HVM_IDENT_PT: 0xFEFFC000,
            F.XC_SAVE_ID_HVM_PAGING_RING_PFN: 0,
            F.XC_SAVE_ID_HVM_ACCESS_RING_PFN: 0,
            F.XC_SAVE_ID_HVM_SHARING_RING_PFN: 0,
            F.XC_SAVE_ID_HVM_VM86_TSS: 0xFEFFD000,
            F.XC_SAVE_ID_HVM_CONSOLE_PFN: top - 4,
            F.XC_SAVE_ID_HVM_ACPI_IOPORTS_LOCATION: 1,
            F.XC_SAVE_ID_HVM_VIRIDIAN: self.seed & 1,
            F.XC_SAVE_ID_HVM_IOREQ_SERVER_PFN: top - 8,
            F.XC_SAVE_ID_HVM_NR_IOREQ_SERVER_PAGES: 2,
        }

    def hvm_context(self, epoch: int) -> bytes:
        """An HVM context blob: the save header record, an opaque body, the END record."""
        header = struct.pack("<IIQII", 0x54381286, 1, 0, 0x000306C3, 2_000_000)
        body = det_bytes(self.seed, 5, 1024 * self.spec.vcpus, epoch)
        return (
            struct.pack("<HHI", 1, 0, len(header))
            + header
            + struct.pack("<HHI", 0x7F, 0, len(body))
            + body
            + struct.pack("<HHI", 0, 0, 0)
        )

    def qemu_data(self, epoch: int) -> bytes:
        """QEMU device-model save data (``QEVM`` magic, then opaque bytes)."""
        return F.QEMU_MAGIC + struct.pack(">I", 3) + det_bytes(self.seed, 6, 4088, epoch)

    def tsc_info(self) -> tuple[int, int, int, int]:
        """``(tsc_mode, nsec, khz, incarnation)`` for TSC_INFO."""
        h = int(_hash(self.seed, _SALT_OFF, 7)[0])
        return (0, h & 0xFFFFFFFFFFFF, 2_000_000 + h % 1_000_000, 1)
