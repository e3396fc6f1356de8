"""``xlpy repro``: every §12 cell reproduced, and the classifier can tell cells apart."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers.paths import REPO
from xlpy.errors import UsageError
from xlpy.receiver.domains import Outcome
from xlpy.repro import CODES, V2_SENDER, Cell, classify, load_cells, render, run_matrix


def test_expected_table_covers_the_matrix_and_cites_the_spec() -> None:
    cells = load_cells()
    legacy = [c for c in cells if c.sender != V2_SENDER]
    assert len(legacy) == 2 * 2 * 2 * 3 * 5
    assert len(cells) - len(legacy) == 2 * 2 * 2 * 2  # v2: mode x guest x eof/cut x stream type
    assert len({(c.row, c.column) for c in cells}) == len(cells)
    for c in cells:
        assert c.expected in CODES
        if c.sender == V2_SENDER:
            assert "xg_sr_restore.c" in c.cite
        else:
            assert c.cite.startswith("§12 row") and ("[C]" in c.cite or "[C+M" in c.cite)


def test_every_cell_is_reproduced() -> None:
    results = list(run_matrix(load_cells()))
    bad = [(r.cell.row, r.cell.column, r.observed, r.cell.expected) for r in results if not r.ok]
    assert bad == []
    text = render(results)
    assert "136 cells, 136 as expected, 0 mismatched" in text
    eat = [r for r in results if r.cell.expected == "EAT" and r.cell.guest == "hvm"]
    mbs = "Max batch size exceeded (1970103633). Giving up."
    # 4.0 has no xentoollog: xc_default_error_handler prints its own form
    lines = {"xen-4.0": f"ERROR Internal error: {mbs}"}
    assert eat and all(
        lines.get(r.cell.receiver, f"xc: error: {mbs}: Internal error") in r.messages for r in eat
    )


def test_story_cells_tell_the_regression() -> None:
    from xlpy.repro import story_cells

    results = list(run_matrix(story_cells()))
    assert [r.observed for r in results] == ["EAT", "OK0", "R-OK"]


def _result(**kw: object) -> Outcome:
    base: dict[str, object] = dict(
        ok=True,
        rc=0,
        committed_checkpoint=0,
        bytes_past_image=0,
        domain_destroyed=False,
        messages=[],
        out=None,
        checkpoints_complete=1,
    )
    base.update(kw)
    return Outcome(**base)  # type: ignore[arg-type]


def test_classifier_separates_the_codes() -> None:
    plain = Cell("xen-4.0", "plain", "pv", "eof", "xen-4.3.1", None, "OK1")
    remus = Cell("xen-4.0", "remus", "pv", "eof", "xen-4.3.1", None, "R-OK")
    mbs = ["xc: error: Max batch size exceeded (1634561892). Giving up.: Internal error"]
    assert classify(plain, _result()) == "OK0"
    assert classify(plain, _result(messages=["x"])) == "OK1"
    assert classify(plain, _result(messages=mbs, bytes_past_image=4)) == "EAT"
    assert classify(plain, _result(ok=False, messages=mbs, bytes_past_image=4)) == "EAT"
    assert classify(plain, _result(ok=False, rc=1, checkpoints_complete=0)) == "DIE"
    assert classify(plain, _result(ok=False, rc=1)) == "DIE44"
    assert classify(remus, _result(ok=False, rc=1, checkpoints_complete=3)) == "R-DIE44"
    assert classify(remus, _result(committed_checkpoint=2)) == "R-OK"
    assert classify(remus, _result(committed_checkpoint=0)) == "R-EARLY"


def test_cli_only_and_json() -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.run(
        [sys.executable, "-m", "xlpy", "repro", "--json", "--only", "hvm,foreign,plain"],
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    cells = json.loads(p.stdout)
    assert len(cells) == 2 * 5
    assert {c["trailer"] for c in cells} == {"foreign"}
    for c in cells:
        assert set(c) == {
            "sender",
            "mode",
            "guest",
            "trailer",
            "receiver",
            "checkpointed",
            "expected",
            "observed",
            "messages",
        }
        assert c["observed"] == c["expected"]


def test_only_keys_tell_sender_from_receiver() -> None:
    cells = load_cells()

    def pick(only: str) -> list[Cell]:
        return [c for c in cells if c.matches(only.split(","))]

    both = pick("xen-4.0,plain,pv,quiet")  # bare xen-4.0: sender or receiver
    assert len({(c.sender, c.receiver) for c in both}) > 1
    (one,) = pick("sender=xen-4.0,plain,pv,quiet,receiver=xen-4.0")
    assert (one.sender, one.receiver) == ("xen-4.0", "xen-4.0")
    assert all(c.receiver == "xen-4.3.2" for c in pick("receiver=xen-4.3.2,cs=1"))
    assert {c.checkpointed for c in pick("checkpointed=0")} == {0}
    with pytest.raises(UsageError, match="unknown key"):
        pick("recv=xen-4.0")


@pytest.mark.parametrize("only", ["nothing-matches", "xen-4.0,hvm,remus,eof,cs7", "colour=red"])
def test_cli_only_selecting_nothing_is_usage_error(only: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.run(
        [sys.executable, "-m", "xlpy", "repro", "--only", only],
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert p.returncode == 2
