"""libxc's PV finish checks of the vcpu contexts and the p2m frame list (§3.3, §7.1, §11).

Valid generated streams pass them (their contexts point at typed page tables and a start
info page); each corrupted frame number fails with libxc's message, domain destroyed.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from tests.helpers.legacy_streams import CTX, P2M, PAGE, PV_L4, build, pv_context
from xlpy.guest import Guest, GuestSpec
from xlpy.receiver import restore
from xlpy.stream.legacy import pvcontext
from xlpy.stream.legacy.senders import SenderProfile, generate

GEN = "xen-4.3.1"


def _restore(data: bytes, out: Path, gen: str = GEN) -> tuple[bool, list[str]]:
    r = restore(io.BytesIO(data), generation=gen, out=out)
    assert r.ok == out.exists()
    return r.ok, r.messages


@pytest.mark.parametrize("width", [8, 4])
@pytest.mark.parametrize("gen", ["xen-4.0", "xen-4.3.1", "xen-4.5"])
def test_generated_pv_streams_pass_the_checks(tmp_path: Path, width: int, gen: str) -> None:
    spec = GuestSpec(kind="pv", pages=80, seed=5, guest_width=width, vcpus=2)
    sender = "xen-4.0" if gen == "xen-4.0" else "xen-4.3"
    buf = io.BytesIO()
    generate(SenderProfile(sender=sender, mode="plain"), spec, buf)
    ok, messages = _restore(buf.getvalue(), tmp_path / "d", gen)
    assert ok, messages
    lay = Guest(spec).pv_layout
    assert lay is not None
    state = json.loads((tmp_path / "d" / "domain.json").read_text())
    assert (state["store_pfn"], state["console_pfn"]) == (lay.store, lay.console)
    # The page tables went out typed, the context points at the top one.
    ctx = pvcontext.read_context((tmp_path / "d" / "vcpu0.ctx").read_bytes(), width)
    assert pvcontext.cr3_to_pfn(ctx.cr3, width) == lay.pt_base
    assert ctx.edx == lay.start_info


def _ctx(**fields: int | None) -> bytes:
    kw: dict[str, object] = {"start_info_pfn": 0, "pt_base_pfn": PV_L4}
    kw.update(fields)
    return pvcontext.write_context(bytes(CTX), 8, **kw)  # type: ignore[arg-type]


ERR = "xc: error: {}: Internal error"


@pytest.mark.parametrize(
    ("context", "message"),
    [
        (_ctx(start_info_pfn=P2M), "Suspend record frame number is bad"),
        (_ctx(start_info_pfn=PV_L4), "Suspend record frame number is bad"),
        (_ctx(gdt_ents=8193), "GDT entry count out of range"),
        (_ctx(gdt_ents=513, gdt_pfns=(1, PV_L4)), "GDT frame number 1 (0xf) is bad"),
        (_ctx(gdt_ents=1, gdt_pfns=(P2M,)), "GDT frame number 0 (0x10) is bad"),
        (_ctx(pt_base_pfn=0), "PT base is bad. pfn=0 nr=16 type=00000000 40000000"),
        (_ctx(pt_base_pfn=99), "PT base is bad: pfn=99 p2m_size=16 type=00000000"),
        (_ctx(user_pt_pfn=3), "User PT base is bad. pfn=3 nr=16 type=00000000 40000000"),
        (_ctx(user_pt_pfn=1 << 20), f"User PT base is bad: pfn={1 << 20} p2m_size=16"),
    ],
)
def test_bad_vcpu_context_fails_finish(tmp_path: Path, context: bytes, message: str) -> None:
    data = build("pv", [{1: b"\x05" * PAGE}], last=True, context=context)
    ok, messages = _restore(data, tmp_path / "d")
    assert not ok and messages == [ERR.format(message)]
    assert list(tmp_path.iterdir()) == []


def test_user_pt_base_without_valid_bit_is_not_checked(tmp_path: Path) -> None:
    ctx = bytearray(_ctx())
    lay = pvcontext.layout(8)
    ctx[lay.ctrlreg + 8 : lay.ctrlreg + 16] = (3 << 12).to_bytes(8, "little")  # bit 0 clear
    ok, messages = _restore(
        build("pv", [{1: bytes(PAGE)}], last=True, context=bytes(ctx)), tmp_path / "d"
    )
    assert ok, messages


@pytest.mark.parametrize(("field", "pfn"), [("store", P2M + 1), ("console", P2M + 5)])
def test_start_info_frames_are_checked(tmp_path: Path, field: str, pfn: int) -> None:
    frames = {"store_pfn": 2, "console_pfn": 3, field + "_pfn": pfn}
    start_info = pvcontext.start_info_page(8, nr_pages=P2M, **frames)
    data = build("pv", [{0: start_info}], last=True)
    ok, messages = _restore(data, tmp_path / "d")
    which = "xenstore" if field == "store" else "console"
    assert not ok and messages == [ERR.format(f"Suspend record {which} frame number is bad")]
    # libxc's off-by-one: a frame equal to p2m_size passes.
    frames[field + "_pfn"] = P2M
    start_info = pvcontext.start_info_page(8, nr_pages=P2M, **frames)
    ok, messages = _restore(build("pv", [{0: start_info}], last=True), tmp_path / "e")
    assert ok, messages


@pytest.mark.parametrize("frame", [PV_L4, P2M])
def test_p2m_frame_list_is_checked_after_the_vcpus(tmp_path: Path, frame: int) -> None:
    data = build("pv", [{1: bytes(PAGE)}], last=True, frame_list=(frame,))
    ok, messages = _restore(data, tmp_path / "d")
    assert not ok
    assert messages == [ERR.format(f"PFN-to-MFN frame number 0 ({frame:#x}) is bad")]
    bad_ctx = _ctx(pt_base_pfn=0)
    data = build("pv", [{1: bytes(PAGE)}], last=True, frame_list=(frame,), context=bad_ctx)
    ok, messages = _restore(data, tmp_path / "e")
    assert messages[0].startswith("xc: error: PT base is bad")


def test_pae_cr3_folding_and_l3_base() -> None:
    pfn = 0x1234567
    cr3 = pvcontext.pfn_to_cr3(pfn, 4)
    assert cr3 == ((pfn << 12) | (pfn >> 20)) & 0xFFFFFFFF
    assert pvcontext.cr3_to_pfn(cr3, 4) == pfn
    assert pvcontext.cr3_to_pfn(pvcontext.pfn_to_cr3(pfn, 8), 8) == pfn
    assert pvcontext.layout(4).pt_levels == 3 and pvcontext.layout(8).pt_levels == 4


def test_pae_guest_pointing_cr3_at_an_l2_fails(tmp_path: Path) -> None:
    spec = GuestSpec(kind="pv", pages=40, seed=1, guest_width=4, vcpus=1)
    lay = Guest(spec).pv_layout
    assert lay is not None
    l2 = next(p for p, lv in lay.tables.items() if lv == 2)
    buf = io.BytesIO()
    generate(SenderProfile(sender="xen-4.3", mode="plain"), spec, buf)
    data = buf.getvalue()
    good = Guest(spec).vcpu_context(0, 0)
    bad = pvcontext.write_context(
        good, 4, start_info_pfn=lay.start_info, pt_base_pfn=l2, gdt_pfns=(lay.gdt,), gdt_ents=32
    )
    assert data.count(good) == 2  # the ext-info "vcpu" block and the tail
    at = data.rindex(good)
    data = data[:at] + bad + data[at + len(good) :]
    ok, messages = _restore(data, tmp_path / "d")
    assert not ok
    assert messages == [ERR.format(f"PT base is bad. pfn={l2} nr=40 type=20000000 30000000")]


def test_pv_context_helper_is_what_build_uses() -> None:
    ctx = pvcontext.read_context(pv_context(1), 8)
    assert (ctx.edx, pvcontext.cr3_to_pfn(ctx.cr3, 8), ctx.cr1, ctx.gdt_ents) == (0, PV_L4, 0, 0)
