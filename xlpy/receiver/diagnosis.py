"""What a simulated restore's outcome means, in words: the cause and the flag that fixes it.

libxc's own lines stay exactly as libxc prints them (:mod:`xlpy.receiver.messages`);
they describe the symptom ("Max batch size exceeded (1970103633)", "Invalid QEMU
magic").  A diagnosis is xlpy's separate explanation, built only from what the receiver
recorded in its :class:`~xlpy.receiver.domains.Outcome` (where libxc's image ended, the
bytes it ate, the QEMU record signature and framing it met, what it was told):

* the EAT cell of legacy-stream.md §12: libxc read past its image and took the
  toolstack's bytes as a chunk header;
* a stream whose QEMU record is where the other kind of toolstack puts it (§8.1): the
  framing contradicts ``--toolstack``;
* chunk -18 (``XC_SAVE_ID_TOOLSTACK``) without a ``toolstack_restore`` callback;
* a v2 CHECKPOINT record in a PLAIN stream;
* a successful checkpointed restore whose last read failed, as it always does (§10.6).

:data:`RULES` is the table, in the order its explanations are given; each rule returns
its paragraph or ``None``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from xlpy.errors import StreamError, StreamTimeout, StreamTruncated
from xlpy.receiver import messages as M
from xlpy.receiver.domains import Outcome
from xlpy.receiver.generations import GENERATIONS, Generation, generation
from xlpy.receiver.toolstacks import TOOLSTACKS, Toolstack, toolstack
from xlpy.stream.legacy import format as F


@dataclass(frozen=True, slots=True)
class Facts:
    """What a rule looks at: the receiver's outcome and how the caller ran it."""

    outcome: Outcome
    #: xlpy framed the image: libxc read from a pipe holding only its first checkpoint.
    framed: bool = False

    @property
    def gen(self) -> Generation:
        """The receiving libxc release."""
        return generation(self.outcome.generation)

    @property
    def ts(self) -> Toolstack:
        """The receiving toolstack."""
        return toolstack(self.outcome.toolstack)

    def error_is(self, message: str) -> StreamError | None:
        """The outcome's error if libxc failed with ``message`` (a format in messages.py)."""
        e = self.outcome.error
        return e if e is not None and e.message == message.rstrip("\n") else None


Rule = Callable[[Facts], str | None]

#: Who puts each QEMU record signature in a stream, and the toolstack that receives it
#: (whether libxc reads it in its tail is that toolstack's ``libxc_reads_qemu``).
QEMU_WRITERS: dict[bytes, tuple[str, str]] = {
    F.XENSERVER_QEMU_SIG: ("xenserver-classic", "xenserver-classic"),
    F.QEMU_SIG_0002: ("libxl (xl)", "xl-4.4"),
    F.QEMU_SIG_TO_EOF: ("xend", "xend"),
    F.QEMU_SIG_REMUS: ("xend's Remus", "xend"),
}


def _first_fixed_release() -> str:
    """The oldest legacy receiver told ``checkpointed_stream`` (legacy-stream.md §10.9)."""
    return next(
        g.name for g in GENERATIONS.values() if g.takes_checkpointed and g.stream_format == "legacy"
    )


def _bytes_text(data: bytes) -> str:
    hexed = " ".join(f"{b:02x}" for b in data)
    if all(0x20 <= b < 0x7F for b in data):
        return f"'{data.decode('ascii')}' ({hexed})"
    return hexed


def framing_contradiction(f: Facts) -> str | None:
    """The QEMU record is where another kind of toolstack puts it than ``--toolstack``."""
    o = f.outcome
    sig = o.qemu_signature
    if o.ok or sig is None or sig not in QEMU_WRITERS:
        return None
    writer, fits = QEMU_WRITERS[sig]
    ts = f.ts
    if toolstack(fits).libxc_reads_qemu == ts.libxc_reads_qemu:
        return None
    record = repr(sig.decode("latin-1"))
    if ts.libxc_reads_qemu:
        return (
            f"the stream's framing is {o.framing} (as `xlpy inspect` says): its QEMU record "
            f"{record} follows libxc's image and is the toolstack's to read, but the "
            f"{ts.name} toolstack's libxc reads a QEMU record as part of its tail; "
            f"pass --toolstack {fits}"
        )
    framing = "" if o.framing in ("", "bare") else f", framing {o.framing}"
    return (
        f"the stream was written by {writer} (as `xlpy inspect` says: QEMU record "
        f"{record}{framing}): that record is part of libxc's image, read with the tail, but "
        f"the {ts.name} toolstack's libxc does not read it, and the toolstack then looks "
        f"for its own record after the image; pass --toolstack {fits}"
    )


def read_past_image(f: Facts) -> str | None:
    """The EAT cell (§12): libxc took the bytes after its only checkpoint as a chunk."""
    o = f.outcome
    e = o.error
    if not o.eaten or e is None or e.value is None or o.checkpoints_complete != 1:
        return None
    gen = f.gen
    if o.checkpointed is not None:
        told = f"told checkpointed_stream={o.checkpointed}"
    elif gen.label == "R-pre":
        told = "which always waits for another checkpoint"
    else:
        told = "which waits for another checkpoint unless the stream says LAST_CHECKPOINT"
    end = o.image_end or 0
    header = int.from_bytes(o.eaten, "little")
    text = (
        f"libxc ({gen.name}, {told}) kept reading after the end of its image at offset "
        f"{end} (0x{end:x}): it read the {len(o.eaten)} bytes {_bytes_text(o.eaten)} as "
        f"the next chunk header, 0x{header:08x} little-endian, a page count of {e.value}"
    )
    if o.toolstack_error is not None:
        text += (
            f"; they belong to what the {f.ts.name} toolstack reads after libxc (its QEMU "
            "record), which is why that read fails"
        )
    else:
        text += "; they belong to what follows the image, which has lost them"
    if gen.post_completion_fatal and not o.ok:
        text += f", and {gen.name} destroys the domain when that read fails"
    text += (
        ". The stream holds one checkpoint and no LAST_CHECKPOINT chunk (-9, "
        "XC_SAVE_ID_LAST_CHECKPOINT, which senders before Xen 4.1 never write): it is "
        "not checkpointed. "
    )
    if gen.takes_checkpointed:
        text += "Restore it with --checkpointed 0, or --operation restore / migrate-receive"
    else:
        text += (
            "Restore it with --operation restore / migrate-receive (xlpy then gives libxc "
            "exactly its image), or on a receiver with the fix "
            f"({_first_fixed_release()} or later, told checkpointed_stream=0)"
        )
    return text


def no_toolstack_callback(f: Facts) -> str | None:
    """Chunk -18 in an HVM stream and no ``toolstack_restore`` callback (§5, §11)."""
    if f.error_is(M.TOOLSTACK_NO_CALLBACK) is None:
        return None
    able = " or ".join(t.name for t in TOOLSTACKS.values() if t.toolstack_callback)
    return (
        "the stream carries libxl's toolstack data (chunk -18, XC_SAVE_ID_TOOLSTACK: it "
        "was written by xl/libxl), which libxc hands to the toolstack's toolstack_restore "
        f"callback, and the {f.ts.name} toolstack installs none; pass --toolstack {able}, "
        "which do"
    )


def checkpoint_in_plain(f: Facts) -> str | None:
    """A v2 CHECKPOINT record reached a receiver told PLAIN (``handle_checkpoint``)."""
    e = f.error_is(M.CHECKPOINT_IN_PLAIN)
    if e is None:
        return None
    return (
        f"the stream is checkpointed (a Remus or COLO stream: record {e.record} at offset "
        f"{e.offset} is a CHECKPOINT) but libxc was told it is PLAIN; receive it as a Remus "
        "secondary: --operation remus-receive (without --operation: --checkpointed 1)"
    )


def checkpointed_end(f: Facts) -> str | None:
    """A committed restore whose last read failed, as a checkpointed stream's always does."""
    o = f.outcome
    if not o.ok or o.ending_lines == 0:
        return None
    if isinstance(o.error, StreamTimeout):
        cause = "nothing arrived within its heartbeat"
    elif isinstance(o.error, StreamTruncated):
        cause = (
            "xlpy's pipe, which held only the image, ended"
            if f.framed
            else "the stream ended (the sender closed the connection)"
        )
    else:
        return None
    n = o.ending_lines
    k = o.committed_checkpoint
    lines = f"{n} error lines above are" if n != 1 else "error line above is"
    text = (
        f"the restore succeeded: the {lines} what libxc always logs when a stream it "
        f"reads as checkpointed ends: after checkpoint {k} it waited for another one and "
        f"{cause}, so it committed checkpoint {k}"
    )
    if o.bytes_past_image:
        text += f" (the {o.bytes_past_image} bytes of the unfinished one are dropped)"
    return text


#: The rules, in the order their paragraphs are given.
RULES: tuple[Rule, ...] = (
    framing_contradiction,
    read_past_image,
    no_toolstack_callback,
    checkpoint_in_plain,
    checkpointed_end,
)


def diagnose(outcome: Outcome, *, framed: bool = False) -> str | None:
    """The explanation of ``outcome``: one paragraph per matching rule, ``None`` if none."""
    facts = Facts(outcome, framed)
    found = [text for rule in RULES if (text := rule(facts)) is not None]
    return "\n".join(found) if found else None
