#!/usr/bin/env python3
"""Regenerate the broken-stream corpus: one tiny file per failure, ``<name>.bin``.

Each case knows the error the reader must report: kind (truncated/malformed),
the offset where the faulty element starts and the field.  Offsets are computed
from how the stream was assembled, not copied from the reader's output.
``tests/stream/legacy/test_corpus.py`` checks that the files on disk match this script and
that the reader reports exactly these errors.  Run from anywhere:
``python3 tests/streams/make_corpus.py``.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parents[1]) not in sys.path:
    sys.path.insert(0, str(HERE.parents[1]))

from tests.streams import build as B  # noqa: E402

W = 8


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    kind: str  # "truncated" | "malformed" | "ok"
    offset: int | None
    field: str | None
    value: int | None = None
    guest: str | None = None
    width: int | None = None


class Parts:
    """Concatenated byte pieces that remember where each named piece starts."""

    def __init__(self) -> None:
        self.data = b""
        self.at: dict[str, int] = {}

    def add(self, name: str, b: bytes) -> Parts:
        self.at[name] = len(self.data)
        self.data += b
        return self

    def cut(self, name: str, keep: int) -> bytes:
        """The stream up to ``keep`` bytes into piece ``name``."""
        return self.data[: self.at[name] + keep]


def hvm_parts(*, last: bool = True, qemu: bytes | None = None) -> Parts:
    p = Parts().add("p2m", B.uw(B.HVM_P2M, W)).add("tsc", B.tsc_info())
    p.add("batch", B.batch([1, 0xF0000000, 2], W))
    p.add("vcpu", B.vcpu_info(0, [1])).add("ident", B.hvm_param(-3, 0xFEFFC000))
    p.add("toolstack", B.toolstack(B.u32(1) + B.u32(0)))
    if last:
        p.add("last", B.i32(-9))
    p.add("end", B.i32(0)).add("tail", B.hvm_tail())
    p.add("qemu", B.qemu_0002() if qemu is None else qemu)
    return p


def pv_parts(*, xcnt: int | None = 32, unmapped: tuple[int, ...] = (7,)) -> Parts:
    """A small PV image: W=8 toolstack, 32-bit guest, one vcpu, one page."""
    p = Parts().add("p2m", B.uw(B.PV_P2M, W))
    p.add("ext", B.ext_info(W, 4, xcnt=xcnt)).add("frames", B.frame_list(B.PV_P2M, W, 4))
    p.add("batch", B.batch([1], W)).add("vcpu", B.vcpu_info(0, [1]))
    p.add("last", B.i32(-9)).add("end", B.i32(0))
    p.add("tail", B.pv_tail(W, 4, 1, xcnt=xcnt, unmapped=unmapped))
    return p


def remus_parts(payload: bytes, *, complete: bool) -> Parts:
    """Checkpoint 1 (format A, -13), then checkpoint 2 in format B: pfns 1 and 2 sent as
    one -12 chunk carrying ``payload``; with ``complete`` its end, tail and QEMU record."""
    r = Parts().add("p2m", B.uw(B.HVM_P2M, W)).add("batch", B.batch([1], W))
    r.add("vcpu", B.vcpu_info(0, [1])).add("comp", B.i32(-13)).add("end", B.i32(0))
    r.add("tail", B.hvm_tail()).add("qemu", B.qemu_remus())
    r.add("b2", B.batch([1, 2], W, data=False)).add("c2", B.compressed_data(payload, W))
    if complete:
        r.add("end2", B.i32(0)).add("tail2", B.hvm_tail()).add("qemu2", B.qemu_remus())
    return r


def _trunc(name: str, p: Parts, piece: str, keep: int, elem: str, field: str, **kw: object) -> Case:
    return Case(name, p.cut(piece, keep), "truncated", p.at[elem], field, **kw)  # type: ignore[arg-type]


def cases() -> list[Case]:
    out: list[Case] = []
    h = hvm_parts()
    pv = pv_parts()
    pv_tail_at = pv.at["tail"]
    # -- framing and header ------------------------------------------------------
    out.append(
        Case("truncated-header-p2m-size", B.uw(B.HVM_P2M, W)[:5], "truncated", 0, "header.p2m_size")
    )
    xl = B.xl_header()
    out.append(Case("truncated-xl-header", xl[:40], "truncated", 0, "xl_header"))
    out.append(
        Case("truncated-xl-optional-data", xl[:50], "truncated", 0, "xl_header.optional_data")
    )
    out.append(
        Case(
            "xl-header-wrong-byteorder",
            xl[:32] + b"\x01\x02\x03\x04" + xl[36:] + h.data,
            "malformed",
            0,
            "xl_header.byteorder",
        )
    )
    out.append(
        Case(
            "xl-header-streamv2-flag",
            B.xl_header(mandatory=2) + h.data,
            "malformed",
            0,
            "xl_header.mandatory_flags",
            value=2,
        )
    )
    out.append(Case("truncated-xl-magic", xl[:20], "truncated", 0, "xl_header.magic"))
    out.append(Case("truncated-after-p2m-size", B.uw(B.HVM_P2M, W) + b"\xf9\xff", "truncated",
                    0, "header.guest"))  # fmt: skip
    xe = B.xend_header()
    out.append(Case("truncated-xend-config", xe[:24], "truncated", 0, "xend_header.config"))
    out.append(
        Case(
            "xend-negative-config-length",
            xe[:16] + struct.pack(">i", -5) + xe[20:],
            "malformed",
            0,
            "xend_header.config_length",
            value=-5,
        )
    )
    v2 = b"\xff" * 8 + b"XenF" + struct.pack(">IHH", 2, 1, 0)
    out.append(Case("migration-v2-image-header", v2, "malformed", 0, "header.p2m_size"))
    # -- PV ext-info and frame list ---------------------------------------------------
    ext = pv.at["ext"]
    out.append(_trunc("truncated-ext-info-total", pv, "ext", 10, "ext", "ext_info.total_bytes"))
    out.append(_trunc("truncated-ext-info-vcpu-block", pv, "ext", 100, "ext", "ext_info.vcpu"))
    bad_vcpu = B.uw(B.PV_P2M, W) + b"\xff" * W + B.u32(8 + 1234) + b"vcpu" + B.u32(1234)
    out.append(
        Case(
            "ext-info-bad-vcpu-size",
            bad_vcpu + b"\0" * 1234,
            "malformed",
            ext,
            "ext_info.vcpu_size",
            value=1234,
        )
    )
    over = B.uw(B.PV_P2M, W) + b"\xff" * W + B.u32(8 + 100) + b"abcd" + B.u32(101)
    out.append(
        Case(
            "ext-info-block-overruns-total",
            over + b"\0" * 101,
            "malformed",
            ext,
            "ext_info.block_size",
            value=101,
        )
    )
    short = B.uw(B.PV_P2M, W) + b"\xff" * W + B.u32(8 + 3) + b"extv" + B.u32(0) + b"\0" * 3
    out.append(
        Case(
            "ext-info-total-leaves-3-bytes",
            short,
            "malformed",
            ext,
            "ext_info.total_bytes",
            value=3,
        )
    )
    small_xcnt = B.uw(B.PV_P2M, W) + b"\xff" * W + B.u32(12) + b"xcnt" + B.u32(4) + B.u32(8)
    out.append(
        Case(
            "ext-info-xcnt-smaller-than-xsave-header",
            small_xcnt,
            "malformed",
            ext,
            "ext_info.xcnt",
            value=8,
        )
    )
    out.append(
        _trunc("truncated-p2m-frame-list", pv, "frames", 3, "frames", "p2m_frame_list.entries")
    )
    # -- body ------------------------------------------------------------------------
    out.append(_trunc("truncated-batch-count", h, "batch", 2, "batch", "chunk_header"))
    out.append(_trunc("truncated-batch-entries", h, "batch", 4 + 9, "batch", "batch.entries"))
    out.append(
        _trunc("truncated-batch-pages", h, "batch", 4 + 3 * W + 5000, "batch", "batch.pages")
    )
    for n in (1025, -21, -100, 0x7FFFFFFF):
        data = h.cut("batch", 0) + B.i32(n)
        out.append(
            Case(
                f"chunk-header-minus{-n}" if n < 0 else f"chunk-header-{n}",
                data,
                "malformed",
                h.at["batch"],
                "chunk_header",
                value=n,
            )
        )
    qemu_as_header = h.cut("vcpu", 0) + B.qemu_xenserver()
    out.append(
        Case(
            "qemu-read-as-chunk-header",
            qemu_as_header,
            "malformed",
            h.at["vcpu"],
            "chunk_header",
            value=1970103633,
        )
    )
    out.append(_trunc("truncated-tsc-info", h, "tsc", 10, "tsc", "tsc_info"))
    out.append(_trunc("truncated-vcpu-info-max-id", h, "vcpu", 6, "vcpu", "vcpu_info.max_vcpu_id"))
    out.append(_trunc("truncated-vcpu-info-map", h, "vcpu", 12, "vcpu", "vcpu_info.online_map"))
    out.append(
        Case(
            "vcpu-info-max-id-4096",
            h.cut("vcpu", 0) + B.vcpu_info(4096, [1] * 65),
            "malformed",
            h.at["vcpu"],
            "vcpu_info.max_vcpu_id",
            value=4096,
        )
    )
    out.append(
        Case(
            "vcpu-info-negative-max-id",
            h.cut("vcpu", 0) + B.vcpu_info(-1, [1]),
            "malformed",
            h.at["vcpu"],
            "vcpu_info.max_vcpu_id",
            value=-1,
        )
    )
    out.append(_trunc("truncated-hvm-param", h, "ident", 9, "ident", "hvm_param.value"))
    out.append(
        _trunc("truncated-toolstack-length", h, "toolstack", 6, "toolstack", "toolstack.length")
    )
    out.append(
        _trunc("truncated-toolstack-data", h, "toolstack", 10, "toolstack", "toolstack.data")
    )
    huge_ts = h.cut("toolstack", 0) + B.i32(-18) + B.u32(0xFFFFFFF0) + b"abc"
    out.append(
        Case(
            "toolstack-length-beyond-stream",
            huge_ts,
            "truncated",
            h.at["toolstack"],
            "toolstack.data",
        )
    )
    comp = h.cut("vcpu", 0) + B.compressed_data(b"\x80" + b"\0" * 100, W)
    out.append(
        Case(
            "truncated-compressed-data-length",
            comp[: h.at["vcpu"] + 7],
            "truncated",
            h.at["vcpu"],
            "compressed_data.length",
        )
    )
    out.append(
        Case(
            "truncated-compressed-data",
            comp[:-50],
            "truncated",
            h.at["vcpu"],
            "compressed_data.data",
        )
    )
    # Lengths beyond the sender's 16 MiB buffer are refused before any payload is read.
    for name, length in (
        ("compressed-data-length-2-62", 1 << 62),
        ("compressed-data-length-2-64-minus-1", (1 << 64) - 1),
        ("compressed-data-length-outbuf", (16 << 20) - 4 - W + 1),
    ):
        huge_comp = h.cut("vcpu", 0) + B.i32(-12) + B.uw(length, W) + b"\x80"
        out.append(
            Case(name, huge_comp, "malformed", h.at["vcpu"], "compressed_data.length", length)
        )
    tmem = B.i32(-5) + struct.pack("<7I", 1, 2, 0xFFFFFFFF, 0, 0, 0, 0xFFFFFFFF)
    tmem += struct.pack("<III2Q", 0, 1, 1, 5, 6) + struct.pack("<3QI", 1, 2, 3, 4) + b"t" * 4096
    tmem += B.u32(0xFFFFFFFF)
    tm_at = h.at["tsc"]
    out.append(
        Case(
            "truncated-tmem-page",
            h.cut("tsc", 0) + tmem[:-2000],
            "truncated",
            tm_at,
            "tmem.page_data",
        )
    )
    bad_marker = B.i32(-5) + struct.pack("<7I", 1, 2, 0, 0, 0, 0, 0xFFFFFFFF)
    out.append(
        Case(
            "tmem-bad-marker",
            h.cut("tsc", 0) + bad_marker,
            "malformed",
            tm_at,
            "tmem.marker",
            value=0,
        )
    )
    tx = B.i32(-6) + struct.pack("<I3QI", 1, 2, 3, 4, 5)
    out.append(
        Case("truncated-tmem-extra", h.cut("tsc", 0) + tx, "truncated", tm_at, "tmem_extra.pool_id")
    )
    # -- tails -------------------------------------------------------------------------
    out.append(_trunc("truncated-hvm-tail-pfns", h, "tail", 20, "tail", "hvm_tail.magic_pfns"))
    out.append(
        _trunc(
            "truncated-hvm-tail-context-length", h, "tail", 26, "tail", "hvm_tail.context_length"
        )
    )
    out.append(_trunc("truncated-hvm-tail-context", h, "tail", 30, "tail", "hvm_tail.context"))
    huge_ctx = h.cut("tail", 24) + B.u32(0xFFFFFFFF) + b"ctx"
    out.append(
        Case("hvm-tail-context-length-4g", huge_ctx, "truncated", h.at["tail"], "hvm_tail.context")
    )
    out.append(
        Case(
            "truncated-pv-tail-pfn-count",
            pv.cut("tail", 3),
            "truncated",
            pv_tail_at,
            "pv_tail.pfn_count",
        )
    )
    out.append(
        Case("truncated-pv-tail-pfns", pv.cut("tail", 9), "truncated", pv_tail_at, "pv_tail.pfns")
    )
    out.append(
        Case(
            "truncated-pv-tail-vcpu-context",
            pv.cut("tail", 12 + 100),
            "truncated",
            pv_tail_at,
            "pv_tail.vcpu_context",
        )
    )
    out.append(
        Case(
            "truncated-pv-tail-vcpu-ext",
            pv.cut("tail", 12 + 2800 + 10),
            "truncated",
            pv_tail_at,
            "pv_tail.vcpu_ext",
        )
    )
    xs = 12 + 2800 + 128
    out.append(
        Case(
            "truncated-pv-tail-xsave",
            pv.cut("tail", xs + 20),
            "truncated",
            pv_tail_at,
            "pv_tail.xsave",
        )
    )
    out.append(
        Case(
            "truncated-pv-tail-shared-info",
            pv.cut("tail", xs + 32 + 100),
            "truncated",
            pv_tail_at,
            "pv_tail.shared_info",
        )
    )
    many = pv.cut("tail", 0) + B.u32((1 << 28) + 1) + b"\0" * 64
    out.append(
        Case(
            "pv-tail-pfn-count-2-28-plus-1",
            many,
            "malformed",
            pv_tail_at,
            "pv_tail.pfn_count",
            value=(1 << 28) + 1,
        )
    )
    bad_xs = pv.cut("tail", xs + 8) + B.u64(99) + b"\0" * 64
    out.append(
        Case(
            "pv-tail-xsave-size-mismatch",
            bad_xs,
            "malformed",
            pv_tail_at,
            "pv_tail.xsave_size",
            value=99,
        )
    )
    # -- QEMU records ------------------------------------------------------------------
    q_at = h.at["qemu"]
    out.append(
        Case("truncated-qemu-0002-length", h.cut("qemu", 23), "truncated", q_at, "qemu.length")
    )
    out.append(Case("truncated-qemu-0002-data", h.data[:-3], "truncated", q_at, "qemu.data"))
    xsq = hvm_parts(qemu=B.qemu_xenserver())
    out.append(Case("truncated-xenserver-qemu-data", xsq.data[:-1], "truncated", q_at, "qemu.data"))
    rq = hvm_parts(last=False, qemu=B.qemu_remus())
    out.append(
        Case(
            "truncated-remus-qemu-length",
            rq.cut("qemu", 22),
            "truncated",
            rq.at["qemu"],
            "qemu.length",
        )
    )
    # -- Remus: a second checkpoint in format B, cut inside its batch entries -----------
    r = remus_parts(b"\0\0", complete=False)
    out.append(
        Case(
            "truncated-remus-format-b-entries",
            r.cut("b2", 4 + 11),
            "truncated",
            r.at["b2"],
            "batch.entries",
        )
    )
    out.append(
        Case(
            "truncated-remus-format-b-compressed",
            r.data[:-1],
            "truncated",
            r.at["c2"],
            "compressed_data.data",
        )
    )
    # -- bad compression runs (§6.4): found without the previous checkpoint's pages ----------
    # (name, payload for pages 1 and 2, read pointer of the fault, page index)
    for name, payload, pos, page in [
        ("compressed-zero-length-run", b"\0" + b"\xff\x80", 2, 1),  # SKIP 127, then 0x80
        ("compressed-run-overshoots-page", b"\x89" * 120, 114, 0),  # 114 x 36 B > 4096
        ("compressed-run-beyond-buffer", b"\x7f" + b"\xaa" * 10, 1, 0),  # RUN 508 B, 10 left
        ("compressed-full-page-cut", b"\x80" + b"\xaa" * 100, 0, 0),  # FULL, 100 of 4096 B
        ("compressed-buffer-exhausted", b"\0", 1, 1),  # page 2 has no byte left
    ]:
        bad = remus_parts(payload, complete=True)
        at = bad.at["c2"] + 4 + W + pos
        out.append(Case(name, bad.data, "malformed", at, "compressed_data.page", value=page))
    # -- guest type that cannot be decided -------------------------------------------------
    out.append(
        Case("guest-undecidable", B.uw(0x20, W) + B.uw(0x12345, W) + b"\0" * 8, "usage", None, None)
    )
    return out


def main() -> None:
    for old in HERE.glob("*.bin"):
        old.unlink()
    for c in cases():
        assert len(c.data) < 20 * 1024, (c.name, len(c.data))
        (HERE / f"{c.name}.bin").write_bytes(c.data)
    print(f"wrote {len(cases())} streams to {HERE}")


if __name__ == "__main__":
    main()
