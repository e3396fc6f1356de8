"""``make run``: the LAST_CHECKPOINT story, end to end, on the embedded default.

Every step is a real ``xlpy`` command (printed before it runs) streaming through a
pipe, so the transcript doubles as a tutorial:

1. an old (Xen 4.0, no ``-9``) HVM stream with XenServer-classic's own QEMU record
   appended after the libxc image is generated and inspected;
2. a 4.3.1 receiver (R-bug) reads past the image, eats ``"Qemu"`` as a batch count
   (``Max batch size exceeded (1970103633)``) and the toolstack's record is ruined;
3. a fixed receiver told ``checkpointed_stream=0`` stops at the image: restored;
4. a compressed Remus stream into a fixed receiver told ``1``: every checkpoint is
   applied and the last complete one is committed when the primary goes away;
5. the toolstack layer: the caller only says its *operation* (``--operation migrate-receive``);
   on the 4.3.1 receiver xlpy frames the stream itself, so libxc never sees the
   QEMU record and it comes back intact (``--rest-out``).

Each step says in one sentence what a Xen engineer should notice and shows the facts of
its run as ``name: value`` lines.  Output goes under ``out/demo/`` (replaced on every
run).  Exit 0 when every step ends the way the spec (xlpy/docs/legacy-stream.md §12) says
it must, each one "as expected" in the summary; 1 when one does not.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

from xlpy.stream.legacy import format as F
from xlpy.stream.legacy.reader import LegacyReader
from xlpy.stream.source import ByteSource

OUT = Path("out/demo")

#: libxc's message for a chunk header that is neither a page count nor a known id.
_MAX_BATCH = re.compile(r"Max batch size exceeded \((-?\d+)\)")


def _xlpy(
    *args: str, stdin_file: Path | None = None, show_stdout: bool = True
) -> subprocess.CompletedProcess[str]:
    shown = "xlpy " + shlex.join(args)
    if stdin_file is not None:
        shown = f"cat {shlex.quote(str(stdin_file))} | {shown}"
    print(f"\n$ {shown}", flush=True)
    cmd = [sys.executable, "-m", "xlpy", *args]
    if stdin_file is None:
        proc = subprocess.run(cmd, text=True, capture_output=True, check=False)
    else:
        cat = subprocess.Popen(["cat", str(stdin_file)], stdout=subprocess.PIPE)
        proc = subprocess.run(cmd, stdin=cat.stdout, text=True, capture_output=True, check=False)
        assert cat.stdout is not None
        cat.stdout.close()
        cat.wait()
    if show_stdout and proc.stdout:
        print(proc.stdout.rstrip())
    if proc.stderr:
        print(proc.stderr.rstrip())
    print(f"[exit {proc.returncode}]")
    return proc


def _restore(image: Path, name: str, *args: str) -> dict[str, Any]:
    """``xlpy restore --json``: its result, shown as :func:`_facts` rather than JSON."""
    proc = _xlpy(
        "restore", "-", *args, "--out", str(OUT / name), "--json",
        stdin_file=image, show_stdout=False,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def _step(number: int, title: str, notice: str) -> None:
    print(f"\n== {number}. {title} ==")
    print(f"Notice: {notice}")


def _facts(*pairs: tuple[str, object]) -> None:
    """``name: value`` lines, aligned; a list value is one line per item."""
    width = max(len(name) for name, _ in pairs) + 1
    print()
    for name, value in pairs:
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items or ["(none)"]):
            print(f"  {(name + ':') if i == 0 else '':<{width}} {item}")


def _as_number(n: int) -> str:
    """What libxc read as a batch count, spelled out: ``"Qemu"`` is 1970103633."""
    raw = struct.pack("<i", n)
    text = raw.decode("ascii", "replace")
    return f"{n} = 0x{n & 0xFFFFFFFF:08x} = bytes {raw.hex(' ')} = {text!r} (little-endian int32)"


def _yes_no(ok: bool) -> str:
    return "yes" if ok else "no"


def main() -> int:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    old = OUT / "xen-4.0-hvm-xenserver.img"
    remus = OUT / "xen-4.3-hvm-remus.img"
    checks: list[tuple[str, bool]] = []

    _step(
        1, "An old sender's HVM stream, as XenServer-classic wrote it",
        "Xen 4.0 never sends XC_SAVE_ID_LAST_CHECKPOINT (-9), and XenServer-classic's own "
        "QEMU record follows right after libxc's image.",
    )  # fmt: skip
    _xlpy(
        "gen", "--guest", "hvm", "--sender", "xen-4.0", "--toolstack", "xenserver-classic",
        "--memory", "16M", "--seed", "1", "-o", str(old),
    )  # fmt: skip
    _xlpy("inspect", str(old))

    _step(
        2, "Into a Xen 4.3.1 receiver (no checkpointed_stream argument)",
        "Without -9 the 4.3.1 receiver waits for another checkpoint, reads the first 4 bytes "
        "of the QEMU record as a batch count and fails it, yet returns 0: the toolstack then "
        "finds its record ruined (EAT).",
    )  # fmt: skip
    r = _restore(old, "dom-4.3.1", "--release", "xen-4.3.1", "--toolstack", "xenserver-classic")
    counts = [int(m.group(1)) for m in map(_MAX_BATCH.search, r["messages"]) if m]
    _facts(
        ("restored", _yes_no(r["ok"])),
        ("libxc rc", r["rc"]),
        ("bytes libxc read past the image", r["bytes_past_image"]),
        ("batch count libxc read", [_as_number(n) for n in counts]),
        ("libxc said", r["messages"]),
        ("then the toolstack", r["toolstack_error"]),
    )
    eaten = counts == [int.from_bytes(b"Qemu", "little")]
    checks.append(("4.3.1 eats 'Qemu' (EAT)", eaten and not r["ok"] and r["bytes_past_image"] > 0))

    _step(
        3, "Into a fixed receiver told checkpointed_stream=0 (a plain restore)",
        "Told the stream is not checkpointed, 4.3.2 stops at the end of the image: nothing "
        "is read past it and the toolstack finds its QEMU record.",
    )  # fmt: skip
    r = _restore(
        old, "dom-4.3.2", "--release", "xen-4.3.2", "--checkpointed", "0",
        "--toolstack", "xenserver-classic",
    )  # fmt: skip
    _facts(
        ("restored", _yes_no(r["ok"])),
        ("bytes libxc read past the image", r["bytes_past_image"]),
        ("committed checkpoint", r["committed_checkpoint"]),
        ("domain", r["out"]),
    )
    checks.append(("4.3.2 cs=0 restores (OK0)", r["ok"] and r["bytes_past_image"] == 0))

    _step(
        4, "A compressed Remus stream into a fixed receiver told checkpointed_stream=1",
        "Each checkpoint is buffered until it is complete; when the primary goes away (the "
        "EOF lines libxc logs are expected) the last complete one is committed.",
    )  # fmt: skip
    _xlpy(
        "gen", "--guest", "hvm", "--sender", "xen-4.3", "--toolstack", "xl", "--mode", "remus",
        "--checkpoints", "3", "--compress", "--memory", "16M", "--seed", "2", "-o", str(remus),
    )  # fmt: skip
    r = _restore(
        remus, "dom-remus", "--release", "xen-4.5", "--checkpointed", "1",
        "--toolstack", "xl-4.4",
    )  # fmt: skip
    _facts(
        ("restored", _yes_no(r["ok"])),
        ("complete checkpoints", r["checkpoints_complete"]),
        ("committed checkpoint", r["committed_checkpoint"]),
        ("libxc said", r["messages"]),
        ("domain", r["out"]),
    )
    committed_last = r["ok"] and r["committed_checkpoint"] == 2
    checks.append(("4.5 cs=1 commits the last checkpoint (R-OK)", committed_last))

    _step(
        5, "The same old stream, the toolstack saying only what it is doing",
        "On 4.3.1 a migrate is framed: xlpy gives libxc exactly the image through a pipe, so "
        "libxc's extra read hits EOF instead of the QEMU record, which comes back whole.",
    )  # fmt: skip
    rest = OUT / "rest-after-image.bin"
    r = _restore(
        old, "dom-framed", "--operation", "migrate-receive", "--release", "xen-4.3.1",
        "--toolstack", "xenserver-classic", "--rest-out", str(rest),
    )  # fmt: skip
    qemu = None
    if rest.exists():
        reader = LegacyReader(ByteSource(io.BytesIO(rest.read_bytes())), guest="hvm")
        qemu = reader.read_qemu_record()
    _facts(
        ("restored", _yes_no(r["ok"])),
        ("xlpy decided", f"{r['verdict']}: {r['reason']}"),
        ("image given to libxc", f"{r['image_bytes']} bytes"),
        ("bytes libxc read past the image", r["bytes_past_image"]),
        ("libxc said", r["messages"]),
        ("kept after the image", f"{r['rest_bytes']} bytes in {rest}"),
        ("QEMU record signature", "(none)" if qemu is None else repr(qemu.signature)),
        ("QEMU record length", "(none)" if qemu is None else f"{len(qemu.data)} bytes"),
    )
    intact = qemu is not None and qemu.signature == F.XENSERVER_QEMU_SIG
    intact = intact and r["bytes_past_image"] == 0
    checks.append(
        ("migrate on 4.3.1 is framed: nothing eaten, QEMU record intact", r["ok"] and intact)
    )

    print("\n== Summary ==")
    for what, ok in checks:
        print(f"  {'as expected    ' if ok else 'NOT as expected'}  {what}")
    print(f"Restored domains are under {OUT}/ (memory, domain.json, contexts).")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
