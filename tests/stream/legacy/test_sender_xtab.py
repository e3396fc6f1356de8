"""Unmappable pfns in each sender's batches (fakexen finding 5).

Real 4.0.4 HVM save writes ``pfn | XTAB`` (xc_domain_save.c ``pfn_type[j] |=
XEN_DOMCTL_PFINFO_XTAB``); 4.1+ and every PV save a bare XTAB.  Both the generator and
``xlpy convert --to legacy`` must write what the named sender wrote.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

from xlpy.guest import GuestSpec
from xlpy.stream.legacy import format as F
from xlpy.stream.legacy.reader import LegacyReader
from xlpy.stream.legacy.records import PageBatch
from xlpy.stream.legacy.senders import SenderProfile, generate
from xlpy.stream.source import ByteSource


def _xtab_entries(sender: str) -> np.ndarray:
    out = io.BytesIO()
    generate(SenderProfile(sender=sender), GuestSpec(kind="hvm", pages=1024, seed=1), out)
    reader = LegacyReader(ByteSource(io.BytesIO(out.getvalue())))
    found = []
    for rec in reader.records():
        if isinstance(rec, PageBatch):
            e = np.frombuffer(rec.entries, dtype="<u8")
            found.append(
                e[(e & np.uint64(F.XEN_DOMCTL_PFINFO_LTAB_MASK)) == F.XEN_DOMCTL_PFINFO_XTAB]
            )
    return np.concatenate(found)


@pytest.mark.parametrize(
    ("sender", "ored"), [("xen-4.0", True), ("xen-4.1", False), ("xen-4.5", False)]
)
def test_hvm_holes_are_xtab_entries_as_the_sender_wrote_them(sender: str, ored: bool) -> None:
    entries = _xtab_entries(sender)
    assert entries.size  # the VGA hole
    pfns = entries & np.uint64(F.PFN_MASK)
    if ored:
        assert pfns.tolist() == list(range(int(pfns[0]), int(pfns[0]) + entries.size))
        assert int(pfns[0]) > 0
    else:
        assert set(entries.tolist()) == {F.BARE_XTAB_ENTRY}
