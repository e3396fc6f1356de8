"""``xlpy repro`` explains its codes after the table (text only, never in ``--json``)."""

from __future__ import annotations

import json

import pytest

from xlpy import repro, repro_xenopsd
from xlpy.cli import main
from xlpy.repro import CellResult, code_meanings, legend, load_cells


def test_the_legend_follows_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["repro", "--only", "sender=xen-4.0,mode=plain,guest=hvm,receiver=xen-4.3.1"]) == 0
    out = capsys.readouterr().out
    table, _, tail = out.partition("\ncodes:\n")
    assert "as expected" in table
    meanings = code_meanings()
    assert f"  OK1      {meanings['OK1'].split()[0]}" in tail
    assert "  EAT      libxc logs Max batch size exceeded (N)" in tail
    assert "R-EARLY" not in tail  # only the codes the table shows


def test_json_has_no_legend(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["repro", "--json", "--only", "sender=xen-4.0,mode=plain,guest=pv,trailer=eof"]) == 0
    )
    cells = json.loads(capsys.readouterr().out)
    assert cells and all("observed" in c for c in cells)


def test_the_xenopsd_rows_have_their_own_legend(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["repro", "--xenopsd", "--only", "image=libxc,guest=pv"]) == 0
    tail = capsys.readouterr().out.partition("\ncodes:\n")[2]
    assert "  OK       restored" in tail and "REFUSED" in tail


def test_every_code_has_a_meaning() -> None:
    assert set(repro.CODES) <= set(code_meanings())
    assert set(repro_xenopsd.CODES) <= set(repro_xenopsd.code_meanings())


def test_codes_seen_only_on_a_mismatch_are_explained() -> None:
    cell = next(c for c in load_cells() if c.expected == "R-OK")
    odd = CellResult(cell, "R-AT1/BADMEM")
    text = legend([odd], code_meanings())
    assert text.splitlines()[0] == "codes:"
    assert "R-OK " in text and "R-ATn" in text and "BADMEM" in text
    assert all(len(line) <= repro.LEGEND_COLUMNS for line in text.splitlines())
