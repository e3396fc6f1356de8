"""The outcome matrix of legacy-stream.md §12, runnable.

Every cell — sender {S-pre ``xen-4.0``, S-post ``xen-4.1``+} x mode {plain, remus} x
guest {pv, hvm} x trailer {eof, quiet, foreign} x receiver {4.0, 4.1-4.3.1, 4.3.2 cs=0,
4.3.2/4.5 cs=1, 4.4 cs=1} — is played by generating the sender's stream, pushing it
through a real socketpair into the reference receiver and classifying what happened
with the spec's codes.  The expected codes are data (``xlpy/data/outcomes.json``, each
citing its §12 cell), never derived from the receiver.

How a cell's stream is made (the sender profiles of :mod:`xlpy.stream.legacy.senders`,
bare libxc framing, plus the toolstack's QEMU record and trailer):

* S-post is generated as ``xen-4.3`` (it emits -9 like every 4.1+ sender; Remus
  checkpoints use compression, as ``xl remus`` does by default, so the first id a 4.0
  receiver does not know is -13 for PV);
* HVM QEMU records read by libxc inside the tail: S-pre plain + eof:
  ``QemuDeviceModelRecord`` to EOF (xend); other S-pre: ``RemusDeviceModelState``;
  S-post: ``DeviceModelRecord0002`` (libxl).  Plain HVM + foreign is the
  XenServer-classic case: no QEMU record in libxc's tail, xenopsd's own
  ``QemuDeviceModelRecord\\n`` + big-endian length record after the image, received by
  the ``xenserver-classic`` toolstack.  Other foreign trailers are xl's
  ``"domain is yours…"`` handshake bytes;
* eof: the sender closes after the last byte; quiet: it keeps the socket open until
  the receiver is done (so quiet cells cost one heartbeat each).

v2 rows (sender ``xen-4.6``, receiver ``xen-4.17`` with stream type PLAIN or REMUS) carry
the S-post stream converted to a libxl v2 stream (:func:`v2_cell_stream`), whole (eof)
or cut where a dying sender would leave it (cut).

For CI the guest is tiny and the heartbeat short (:data:`DEFAULT_HEARTBEAT`); libxc's
real value (1 s) is the default of ``xlpy restore``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import socket
import tempfile
import textwrap
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from io import BytesIO
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import numpy as np

from xlpy.errors import UsageError
from xlpy.guest import Guest, GuestSpec
from xlpy.receiver import restore
from xlpy.receiver.domains import Outcome
from xlpy.stream.legacy import format as F
from xlpy.stream.legacy.records import HvmTail, QemuRecord, Record, Trailer
from xlpy.stream.legacy.senders import FOREIGN_TRAILER, SenderProfile, stream_records
from xlpy.stream.legacy.writer import LegacyWriter
from xlpy.stream.source import ByteSource
from xlpy.stream.v2 import format as V2F
from xlpy.stream.v2.reader import V2Reader
from xlpy.stream.v2.records import V2Record

#: Heartbeat for quiet cells: short so the matrix runs in seconds.
DEFAULT_HEARTBEAT = 0.1
#: Remus streams carry this many checkpoints.
REMUS_CHECKPOINTS = 3
#: Tiny guests: enough for several batches of the VCPU/HVM machinery, not more.
GUEST_PAGES = 48
#: The profile that stands for "every sender that emits -9".
S_POST_PROFILE = "xen-4.3"

#: The migration-v2 rows: every 4.6+ sender, into the v2 receiver generation.
V2_SENDER = "xen-4.6"
V2_RECEIVER = "xen-4.17"

CODES = ("OK0", "OK1", "EAT", "DIE", "DIE44", "R-OK", "R-EARLY", "R-DIE44")
#: The legend's lines are wrapped to this width.
LEGEND_COLUMNS = 88
#: What the classifier says when a cell does none of the spec's things (only ever seen
#: on a mismatch); ``BADMEM`` follows a code after ``/``.
CLASSIFIER_CODES = {
    "R-ATn": "the backup committed checkpoint n: neither the first nor the last complete one",
    "FAILED": "the receiver returned 0 without completing the restore",
    "BADMEM": "(after /) the restored memory is not the sender's guest",
}


@dataclass(frozen=True, slots=True)
class Cell:
    """One cell of the matrix, with its expected code and the spec text it cites."""

    sender: str
    mode: str
    guest: str
    trailer: str
    receiver: str
    checkpointed: int | None
    expected: str
    cite: str = ""

    @property
    def column(self) -> str:
        """The matrix column: receiver and, for R-fix releases, ``cs=N``."""
        cs = "" if self.checkpointed is None else f" cs={self.checkpointed}"
        return f"{self.receiver}{cs}"

    @property
    def row(self) -> tuple[str, str, str, str]:
        """The matrix row: what the sender puts on the wire (sender, mode, guest, trailer)."""
        return (self.sender, self.mode, self.guest, self.trailer)

    def coordinates(self) -> dict[str, str]:
        """The cell's coordinates by ``--only`` key (``checkpointed`` "" when not passed)."""
        cs = "" if self.checkpointed is None else str(self.checkpointed)
        return {
            "sender": self.sender,
            "mode": self.mode,
            "guest": self.guest,
            "trailer": self.trailer,
            "receiver": self.receiver,
            "checkpointed": cs,
        }

    def matches(self, terms: Iterable[str]) -> bool:
        """``--only``: every term holds for the cell.

        ``key=value`` pins one coordinate (``sender=xen-4.0``, ``receiver=xen-4.0``,
        ``checkpointed=1`` or ``cs=1``); a bare word matches any coordinate, ``cs0`` /
        ``cs1`` the checkpointed argument.  An unknown key is a :class:`UsageError`.
        """
        coords = self.coordinates()
        words = set(coords.values())
        if self.checkpointed is not None:
            words.update((f"cs={self.checkpointed}", f"cs{self.checkpointed}"))
        return terms_match(coords, words, terms, bare_keys=("cs",))


def terms_match(
    coords: dict[str, str], words: set[str], terms: Iterable[str], *, bare_keys: Iterable[str] = ()
) -> bool:
    """``--only``: each term is ``key=value`` pinning a coordinate (an unknown key is a
    :class:`UsageError`) or a word the cell has (``bare_keys``: ``key=value`` terms
    that are words, e.g. ``cs=1``)."""
    for term in terms:
        key, eq, value = term.partition("=")
        if eq and key not in bare_keys:
            if key not in coords:
                known = ", ".join(coords)
                raise UsageError(f"--only: unknown key {key!r} in {term!r} (keys: {known})")
            if coords[key] != value:
                return False
        elif term not in words:
            return False
    return True


class MatrixCell(Protocol):
    """What :class:`CellResult` needs of a cell: a dataclass with an expected code."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    @property
    def expected(self) -> str: ...


CellT = TypeVar("CellT", bound=MatrixCell)


@dataclass(slots=True)
class CellResult(Generic[CellT]):
    """What one cell of a matrix (§12 here, the xenopsd rows in ``repro_xenopsd``) did:
    the observed outcome code and libxc's messages."""

    cell: CellT
    observed: str
    messages: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """The observed code is the expected one."""
        return self.observed == self.cell.expected

    def to_json(self) -> dict[str, Any]:
        """The ``xlpy repro [--xenopsd] --json`` object of this cell: its coordinates and
        expected code in field order (not the spec text it cites), then what happened."""
        cell = {k: v for k, v in dataclasses.asdict(self.cell).items() if k != "cite"}
        return {**cell, "observed": self.observed, "messages": self.messages}


def outcome_doc(name: str) -> dict[str, Any]:
    """An expected table, ``xlpy/data/<name>``: its cells and what their codes mean."""
    doc: dict[str, Any] = json.loads(resources.files("xlpy").joinpath(f"data/{name}").read_text())
    return doc


def code_meanings() -> dict[str, str]:
    """What each code of the matrix means: the spec's (``outcomes.json``), the classifier's."""
    return {**outcome_doc("outcomes.json")["codes"], **CLASSIFIER_CODES}


def load_cells() -> list[Cell]:
    """The expected table (``xlpy/data/outcomes.json``)."""
    doc = outcome_doc("outcomes.json")
    return [
        Cell(
            sender=c["sender"],
            mode=c["mode"],
            guest=c["guest"],
            trailer=c["trailer"],
            receiver=c["receiver"],
            checkpointed=c["checkpointed"],
            expected=c["expected"],
            cite=c["cite"],
        )
        for c in doc["cells"]
    ]


# --- streams --------------------------------------------------------------------------


def _profile(sender: str, mode: str) -> SenderProfile:
    remus = mode == "remus"
    spre = sender == "xen-4.0"
    return SenderProfile(
        sender=sender if spre else S_POST_PROFILE,
        toolstack="bare",
        mode=mode,
        checkpoints=REMUS_CHECKPOINTS if remus else 1,
        compress=remus and not spre,
    )


def _spec(guest: str) -> GuestSpec:
    return GuestSpec(kind=guest, pages=GUEST_PAGES, seed=7, vcpus=2)  # type: ignore[arg-type]


def _qemu_signature(sender: str, mode: str, trailer: str) -> bytes | None:
    if mode == "plain" and trailer == "foreign":
        return None  # XenServer-classic: the record lives outside libxc's image
    if sender != "xen-4.0":
        return F.QEMU_SIG_0002
    if mode == "plain" and trailer == "eof":
        return F.QEMU_SIG_TO_EOF
    return F.QEMU_SIG_REMUS


def _records(sender: str, mode: str, guest: str, trailer: str) -> Iterator[Record]:
    g = Guest(_spec(guest))
    sig = _qemu_signature(sender, mode, trailer) if guest == "hvm" else None
    k = 0
    for rec in stream_records(_profile(sender, mode), _spec(guest)):
        yield rec
        if isinstance(rec, HvmTail) and sig is not None:
            yield QemuRecord(signature=sig, data=g.qemu_data(k))
            k += 1
    if trailer == "foreign":
        if guest == "hvm" and mode == "plain":
            yield QemuRecord(signature=F.XENSERVER_QEMU_SIG, data=g.qemu_data(0))
        else:
            yield Trailer(data=FOREIGN_TRAILER)


@lru_cache(maxsize=32)
def cell_stream(sender: str, mode: str, guest: str, trailer: str) -> bytes:
    """The bytes the sender of a row puts on the wire (cached per row)."""
    out = BytesIO()
    LegacyWriter(out, width=8).write_all(_records(sender, mode, guest, trailer))
    return out.getvalue()


@lru_cache(maxsize=16)
def v2_cell_stream(mode: str, guest: str, trailer: str) -> bytes:
    """A v2 row's bytes: the S-post stream as a libxl v2 stream, whole or cut.

    ``cut`` ends the stream half way through (plain) or half way through the last
    checkpoint (Remus: after the CHECKPOINT_END of the one before), as a sender that dies.
    """
    from xlpy.stream.convert import legacy_to_v2

    legacy = cell_stream("xen-4.1", mode, guest, "eof")
    out = BytesIO()
    legacy_to_v2(ByteSource(BytesIO(legacy)), out, fmt="libxl")
    data = out.getvalue()
    if trailer != "cut":
        return data
    if mode != "remus":
        return data[: len(data) // 2]
    marks = [
        el.offset + V2F.RHDR_SIZE + el.length + V2F.padding_for(el.length)
        for el in V2Reader(ByteSource(BytesIO(data))).elements()
        if isinstance(el, V2Record)
        and el.layer == "libxl"
        and el.type == V2F.REC_TYPE_CHECKPOINT_END
    ]
    return data[: (marks[-2] + marks[-1]) // 2]


def _complete_checkpoints(cell: Cell) -> int:
    """Checkpoints the cell's sender completes before its stream ends."""
    return REMUS_CHECKPOINTS - (cell.trailer == "cut")


def receiving_toolstack(cell: Cell) -> str:
    """XenServer-classic for its own HVM record; libxc's xc_restore otherwise."""
    if cell.guest == "hvm" and cell.mode == "plain" and cell.trailer == "foreign":
        return "xenserver-classic"
    return "xc_restore"


# --- running and classifying ------------------------------------------------------------


def _send(sock: socket.socket, data: bytes, quiet: bool, done: threading.Event) -> None:
    try:
        sock.sendall(data)
        if quiet:
            done.wait(60)
    except OSError:
        pass  # the receiver stopped reading (R-EARLY, DIE) and closed its end
    finally:
        sock.close()


def classify(cell: Cell, r: Outcome) -> str:
    """The spec's code for what the receiver did (§12 "Outcome codes")."""
    if r.rc != 0:
        if r.checkpoints_complete == 0:
            return "DIE"
        return "R-DIE44" if cell.mode == "remus" else "DIE44"
    if cell.mode == "remus":
        if r.committed_checkpoint == _complete_checkpoints(cell) - 1:
            return "R-OK"
        if r.committed_checkpoint == 0:
            return "R-EARLY"
        return f"R-AT{r.committed_checkpoint}"
    ate = any("Max batch size exceeded" in m for m in r.messages)
    if ate and r.bytes_past_image > 0:
        return "EAT"
    if not r.ok:
        return "FAILED"
    if not r.messages and r.bytes_past_image == 0:
        return "OK0"
    return "OK1"


def _memory_ok(cell: Cell, out: Path, committed: int) -> bool:
    """The restored memory equals the sender's guest at the committed checkpoint.

    Pages never sent stay zero; HVM finish clears the three magic pages and the
    console page (-8, sent by 4.1+ senders) as libxc does (§7.2).
    """
    g = Guest(_spec(cell.guest))
    epoch = committed + 1 if cell.mode == "remus" else 0
    mem = np.fromfile(out / "memory", dtype=np.uint8).reshape(-1, F.PAGE_SIZE)
    pop = np.flatnonzero(g.populated)
    want = g.pages(pop.astype(np.uint64), epoch)
    if cell.guest == "hvm":
        cleared = list(g.hvm_magic_pfns)
        if cell.sender != "xen-4.0":
            cleared.append(g.hvm_params()[F.XC_SAVE_ID_HVM_CONSOLE_PFN])
        want[np.isin(pop, cleared)] = 0
    holes = np.flatnonzero(~g.populated)
    return bool(np.array_equal(mem[pop], want) and not mem[holes].any())


def run_cell(cell: Cell, workdir: Path, heartbeat: float = DEFAULT_HEARTBEAT) -> CellResult[Cell]:
    """Stream the cell's row through a socketpair into its receiver and classify."""
    if cell.sender == V2_SENDER:
        data = v2_cell_stream(cell.mode, cell.guest, cell.trailer)
    else:
        data = cell_stream(cell.sender, cell.mode, cell.guest, cell.trailer)
    tx, rx = socket.socketpair()
    done = threading.Event()
    t = threading.Thread(target=_send, args=(tx, data, cell.trailer == "quiet", done))
    t.daemon = True
    t.start()
    out = workdir / "domain"
    try:
        r = restore(
            ByteSource(rx),
            generation=cell.receiver,
            out=out,
            checkpointed=cell.checkpointed,
            toolstack=receiving_toolstack(cell),
            heartbeat=heartbeat,
        )
    finally:
        done.set()
        rx.close()
        t.join(10)
    observed = classify(cell, r)
    if (
        r.ok
        and r.committed_checkpoint is not None
        and not _memory_ok(cell, out, r.committed_checkpoint)
    ):
        observed += "/BADMEM"
    shutil.rmtree(out, ignore_errors=True)
    return CellResult(cell, observed, list(r.messages))


#: The seed's story (``make run``): an old-sender HVM stream with XenServer-classic's
#: QEMU record into 4.3.1 (EAT, the 1970103633 line) and into a fixed receiver told
#: ``checkpointed_stream=0`` (OK0); then a Remus stream into a fixed receiver told 1 (R-OK).
STORY = (
    ("xen-4.0", "plain", "hvm", "foreign", "xen-4.3.1", None),
    ("xen-4.0", "plain", "hvm", "foreign", "xen-4.3.2", 0),
    ("xen-4.1", "remus", "hvm", "eof", "xen-4.3.2", 1),
)


def story_cells() -> list[Cell]:
    """The cells of :data:`STORY`, with their expected codes, in story order."""
    by_key = {(*c.row, c.receiver, c.checkpointed): c for c in load_cells()}
    return [by_key[key] for key in STORY]


def run_matrix(
    cells: Iterable[Cell], *, heartbeat: float = DEFAULT_HEARTBEAT
) -> Iterator[CellResult[Cell]]:
    """Run ``cells`` one after another (each gets a fresh domain directory)."""
    with tempfile.TemporaryDirectory(prefix="xlpy-repro-") as tmp:
        for cell in cells:
            yield run_cell(cell, Path(tmp), heartbeat)


def legend(results: Iterable[CellResult[Any]], meanings: dict[str, str]) -> str:
    """The codes a table of ``results`` shows, expected or observed, each with its meaning
    (in ``meanings``' order)."""
    shown: set[str] = set()
    for r in results:
        shown.add(r.cell.expected)
        shown.update(re.sub(r"^R-AT\d+$", "R-ATn", code) for code in r.observed.split("/"))
    width = max(map(len, meanings))
    rows = [
        textwrap.fill(
            text,
            LEGEND_COLUMNS,
            initial_indent=f"  {code:<{width}}  ",
            subsequent_indent=" " * (width + 4),
        )
        for code, text in meanings.items()
        if code in shown
    ]
    return "\n".join(["codes:", *rows])


def render(results: list[CellResult[Cell]]) -> str:
    """The matrix as text: rows sender/mode/guest/trailer, one column per receiver."""
    columns: list[str] = []
    rows: list[tuple[str, str, str, str]] = []
    grid: dict[tuple[tuple[str, str, str, str], str], CellResult[Cell]] = {}
    for res in results:
        c = res.cell
        if c.column not in columns:
            columns.append(c.column)
        if c.row not in rows:
            rows.append(c.row)
        grid[(c.row, c.column)] = res
    label = "sender   mode   guest trailer"
    width = max(13, *(len(col) for col in columns))
    lines = [label + "  " + "".join(col.ljust(width + 2) for col in columns)]
    for row in rows:
        sender, mode, guest, trailer = row
        text = f"{sender:<8} {mode:<6} {guest:<5} {trailer:<7}"
        for col in columns:
            got = grid.get((row, col))
            if got is None:
                cell_text = ""
            elif got.ok:
                cell_text = got.observed
            else:
                cell_text = f"{got.observed}!={got.cell.expected}"
            text += "  " + cell_text.ljust(width)
        lines.append(text.rstrip())
    bad = sum(not r.ok for r in results)
    lines.append("")
    lines.append(
        f"{len(results)} cells, {len(results) - bad} as expected, {bad} mismatched"
        + ("" if not bad else "  (X!=Y: observed X, the spec says Y)")
    )
    return "\n".join(lines)
