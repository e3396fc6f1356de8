"""The simulated domain directory: sparse memory, atomic publication, clean destruction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from xlpy.errors import UsageError
from xlpy.receiver.domains import DomainFull
from xlpy.receiver.domains.sim import MAX_SIM_P2M_SIZE, SimDomain

PAGE = 4096


def pages(*tags: int) -> memoryview:
    return memoryview(b"".join(bytes([t]) * PAGE for t in tags))


def test_pages_land_at_pfn_offsets_and_unsent_pages_are_zero(tmp_path: Path) -> None:
    d = SimDomain(tmp_path / "dom")
    d.create(guest="pv", p2m_size=10, width=8, guest_width=8)
    d.write_pages(np.array([1, 2, 3, 7, 2], dtype=np.uint64), pages(1, 2, 3, 7, 9))
    assert d.read_page(2) == bytes([9]) * PAGE  # later duplicate wins
    assert d.read_page(0) == bytes(PAGE)
    d.zero_pages(np.array([3], dtype=np.uint64))
    d.finish({"outcome": "restored"}, {"shared_info": b"x"})
    assert not (tmp_path / "dom").exists()  # not visible before publish
    d.publish()
    mem = (tmp_path / "dom" / "memory").read_bytes()
    assert len(mem) == 10 * PAGE
    assert mem[PAGE : 2 * PAGE] == bytes([1]) * PAGE
    assert mem[3 * PAGE : 4 * PAGE] == bytes(PAGE)
    assert mem[7 * PAGE : 8 * PAGE] == bytes([7]) * PAGE
    assert json.loads((tmp_path / "dom" / "domain.json").read_text()) == {"outcome": "restored"}
    assert (tmp_path / "dom" / "shared_info").read_bytes() == b"x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dom"]


def test_memory_file_is_sparse(tmp_path: Path) -> None:
    d = SimDomain(tmp_path / "dom")
    d.create(guest="hvm", p2m_size=1 << 18, width=8, guest_width=8)  # 1 GiB guest
    d.write_pages(np.array([5], dtype=np.uint64), pages(5))
    d.finish({}, {})
    d.publish()
    st = (tmp_path / "dom" / "memory").stat()
    assert st.st_size == 1 << 30
    assert st.st_blocks * 512 < 1 << 20


def test_destroy_leaves_nothing(tmp_path: Path) -> None:
    d = SimDomain(tmp_path / "dom")
    d.create(guest="pv", p2m_size=4, width=8, guest_width=8)
    d.write_pages(np.array([0], dtype=np.uint64), pages(1))
    d.destroy()
    assert list(tmp_path.iterdir()) == []


def test_existing_out_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dom").mkdir()
    with pytest.raises(UsageError):
        SimDomain(tmp_path / "dom")


def test_guest_too_big_for_the_simulation(tmp_path: Path) -> None:
    d = SimDomain(tmp_path / "dom")
    with pytest.raises(DomainFull):
        d.create(guest="hvm", p2m_size=MAX_SIM_P2M_SIZE + 1, width=8, guest_width=8)
    d.destroy()
    assert list(tmp_path.iterdir()) == []
