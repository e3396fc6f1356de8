"""The xenopsd rows of ``xlpy repro``: does the next header survive the libxc record?

Each cell generates a xenopsd image (legacy ``XenSavedDomain``, structured with
Libxc_legacy, structured with a v2 Libxc record; a xen-4.0 libxc sender, which sends
no LAST_CHECKPOINT, and a Varstored record after the libxc record), sends it through a
real socketpair and restores it, plain restore, on a simulated receiver (4.1-4.3.1 as
``xen-4.3.1``, 4.3.2+ as ``xen-4.3.2`` told ``checkpointed_stream=0``, ``xen-4.17``)
two ways:

* ``in-place``: the receiver reads the image's own stream, as xenguest reads xenopsd's
  descriptor (:meth:`xlpy.xenopsd.Image.receive_in_place`);
* ``xlpy``: :meth:`xlpy.xenopsd.Image.restore` hands it exactly the record.

Then the rest of the image is read as xenopsd does.  The expected codes are data
(``xlpy/data/xenopsd_outcomes.json``, each citing why), never derived from the receiver.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from io import BytesIO
from pathlib import Path

from xlpy.errors import StreamError, UsageError
from xlpy.repro import CLASSIFIER_CODES, CellResult, _memory_ok, _spec, outcome_doc, terms_match
from xlpy.repro import Cell as MatrixCell
from xlpy.stream import xenopsd as X
from xlpy.stream.legacy.senders import SenderProfile
from xlpy.stream.xenopsd_gen import generate_image
from xlpy.xenopsd import Image

IMAGES = ("legacy", "libxc-legacy", "libxc")
HANDOFFS = ("in-place", "xlpy")
RECEIVERS = ("xen-4.3.1", "xen-4.3.2", "xen-4.17")
CODES = ("OK", "EAT", "DIE", "REFUSED")
#: What :func:`run_cell` says beyond the expected codes (only ever seen on a mismatch).
RUN_CODES = {
    "BROKEN": "the next header is broken although the receiver read nothing past its record",
    "BADMEM": CLASSIFIER_CODES["BADMEM"],
}
SENDER = "xen-4.0"
#: The record after the libxc one in structured images (its header is what gets eaten).
VARSTORED_SIZE = 64


@dataclass(frozen=True, slots=True)
class Cell:
    """One xenopsd cell and its expected code."""

    image: str
    guest: str
    receiver: str
    handoff: str
    expected: str
    cite: str = ""

    def matches(self, terms: Iterable[str]) -> bool:
        """``--only``: every term names one of the cell's coordinates (or ``key=value``)."""
        coords = {
            "image": self.image,
            "guest": self.guest,
            "receiver": self.receiver,
            "handoff": self.handoff,
        }
        return terms_match(coords, set(coords.values()), terms)


def code_meanings() -> dict[str, str]:
    """What each code of these rows means (``xenopsd_outcomes.json``, then :data:`RUN_CODES`)."""
    return {**outcome_doc("xenopsd_outcomes.json")["codes"], **RUN_CODES}


def load_cells() -> list[Cell]:
    """The expected table (``xlpy/data/xenopsd_outcomes.json``)."""
    return [Cell(**c) for c in outcome_doc("xenopsd_outcomes.json")["cells"]]


@lru_cache(maxsize=8)
def cell_image(image: str, guest: str) -> bytes:
    """The bytes of a row's image (the guest of the §12 matrix, cached)."""
    out = BytesIO()
    kind = "xenopsd-legacy" if image == "legacy" else "xenopsd"
    extras = {} if image == "legacy" else {X.VARSTORED: VARSTORED_SIZE}
    libxc = "v2" if image == "libxc" else "legacy"
    generate_image(
        SenderProfile(sender=SENDER), _spec(guest), out, kind=kind, libxc=libxc, extras=extras
    )
    return out.getvalue()


def _send(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass  # the reader stopped (a failed cell) and closed its end
    finally:
        sock.close()


def run_cell(cell: Cell, workdir: Path) -> CellResult[Cell]:
    """Send the cell's image through a socketpair and restore it the cell's way."""
    tx, rx = socket.socketpair()
    t = threading.Thread(target=_send, args=(tx, cell_image(cell.image, cell.guest)), daemon=True)
    t.start()
    out = workdir / "domain"
    messages: list[str] = []
    observed = "OK"
    ate = False
    restored = False
    try:
        image = Image(rx.fileno())
        for rec in image:
            if rec.type not in X.EMBEDDED:
                continue
            if cell.handoff == "in-place":
                checkpointed = None if cell.receiver == "xen-4.3.1" else 0
                r = image.receive_in_place(
                    rec, generation=cell.receiver, out=out, checkpointed=checkpointed
                )
                messages, ate, restored = list(r.messages), r.bytes_past_image > 0, r.ok
            else:
                try:
                    done = image.restore(rec, operation="restore", out=out, release=cell.receiver)
                except UsageError as e:  # xlpy's refusal: a v2 record for a legacy libxc
                    observed, messages = "REFUSED", [str(e)]
                    break
                messages, restored = list(done.messages), done.ok
            if not restored:
                observed = "DIE"
                break
    except StreamError as e:
        observed = "EAT" if ate else "BROKEN"
        messages.append(f"next header: {e}")
    finally:
        rx.close()
        t.join(10)
    if observed == "OK" and ate:
        observed = "EAT"  # eaten, though the header after happened to parse
    if observed == "OK" and not _memory_ok(_matrix_cell(cell), out, 0):
        observed += "/BADMEM"
    shutil.rmtree(out, ignore_errors=True)
    return CellResult(cell, observed, messages)


def _matrix_cell(cell: Cell) -> MatrixCell:
    """The §12 cell whose guest and sender this row's image carries (for the memory check)."""
    return MatrixCell(
        sender=SENDER,
        mode="plain",
        guest=cell.guest,
        trailer="eof",
        receiver=cell.receiver,
        checkpointed=None,
        expected="",
    )


def run_matrix(cells: Iterable[Cell]) -> Iterator[CellResult[Cell]]:
    """Run ``cells`` one after another (each gets a fresh domain directory)."""
    with tempfile.TemporaryDirectory(prefix="xlpy-repro-xenopsd-") as tmp:
        for cell in cells:
            yield run_cell(cell, Path(tmp))


def render(results: list[CellResult[Cell]]) -> str:
    """Rows image/guest/handoff, one column per receiver."""
    width = 14
    lines = ["image        guest handoff   " + "".join(r.ljust(width) for r in RECEIVERS)]
    rows: dict[tuple[str, str, str], dict[str, CellResult[Cell]]] = {}
    for res in results:
        c = res.cell
        rows.setdefault((c.image, c.guest, c.handoff), {})[c.receiver] = res
    for (image, guest, handoff), by_receiver in rows.items():
        text = f"{image:<12} {guest:<5} {handoff:<9} "
        for receiver in RECEIVERS:
            got = by_receiver.get(receiver)
            shown = "" if got is None else got.observed
            if got is not None and not got.ok:
                shown += f"!={got.cell.expected}"
            text += shown.ljust(width)
        lines.append(text.rstrip())
    bad = sum(not r.ok for r in results)
    lines += ["", f"{len(results)} cells, {len(results) - bad} as expected, {bad} mismatched"]
    return "\n".join(lines)
