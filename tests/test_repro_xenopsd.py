"""``xlpy repro --xenopsd``: the xenopsd rows reproduced, and the codes tell cells apart."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from xlpy.cli import main as xlpy_main
from xlpy.repro_xenopsd import (
    CODES,
    HANDOFFS,
    IMAGES,
    RECEIVERS,
    load_cells,
    render,
    run_cell,
    run_matrix,
)


def test_expected_table_covers_the_rows_and_says_why() -> None:
    cells = load_cells()
    assert len(cells) == len(IMAGES) * 2 * len(RECEIVERS) * len(HANDOFFS)
    keys = {(c.image, c.guest, c.receiver, c.handoff) for c in cells}
    assert len(keys) == len(cells)
    assert all(c.expected in CODES and c.cite for c in cells)


def test_every_cell_is_reproduced() -> None:
    results = list(run_matrix(load_cells()))
    bad = [(r.cell, r.observed) for r in results if not r.ok]
    assert bad == []
    assert "36 cells, 36 as expected, 0 mismatched" in render(results)
    eat = [r for r in results if r.observed == "EAT"]
    assert {(r.cell.image, r.cell.guest) for r in eat} == {
        ("legacy", "hvm"),
        ("libxc-legacy", "pv"),
        ("libxc-legacy", "hvm"),
    }
    assert all(r.cell.receiver == "xen-4.3.1" and r.cell.handoff == "in-place" for r in eat)
    legacy_hvm = next(r for r in eat if r.cell.image == "legacy")
    assert any("Max batch size exceeded (1970103633)" in m for m in legacy_hvm.messages)
    assert any("next header" in m and "qemu.signature" in m for m in legacy_hvm.messages)
    # the same images handed over by xlpy: the next header survives everywhere
    assert all(r.observed in ("OK", "REFUSED") for r in results if r.cell.handoff == "xlpy")


def test_a_wrong_expectation_is_reported(tmp_path: Path) -> None:
    cell = next(c for c in load_cells() if c.expected == "EAT" and c.image == "libxc-legacy")
    wrong = dataclasses.replace(cell, expected="OK")
    res = run_cell(wrong, tmp_path)
    assert not res.ok and res.observed == "EAT"
    assert "1 mismatched" in render([res])


def test_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert xlpy_main(["repro", "--xenopsd", "--only", "image=legacy,guest=hvm", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc) == 6 and {d["image"] for d in doc} == {"legacy"}
    assert xlpy_main(["repro", "--xenopsd", "--only", "colour=blue"]) == 2
