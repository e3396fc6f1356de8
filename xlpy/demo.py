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

Output goes under ``out/demo/`` (replaced on every run).  Exit 0 when every step
ends the way the spec (legacy-stream.md §12) says it must.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

OUT = Path("out/demo")


def _xlpy(*args: str, stdin_file: Path | None = None) -> subprocess.CompletedProcess[str]:
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
    if proc.stdout:
        print(proc.stdout.rstrip())
    if proc.stderr:
        print(proc.stderr.rstrip())
    print(f"[exit {proc.returncode}]")
    return proc


def _restore(image: Path, name: str, *args: str) -> dict[str, Any]:
    proc = _xlpy("restore", "-", *args, "--out", str(OUT / name), "--json", stdin_file=image)
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def main() -> int:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    old = OUT / "xen-4.0-hvm-xenserver.img"
    remus = OUT / "xen-4.3-hvm-remus.img"
    checks: list[tuple[str, bool]] = []

    print("== 1. An old sender's HVM stream, as XenServer-classic wrote it ==")
    _xlpy(
        "gen", "--guest", "hvm", "--sender", "xen-4.0", "--toolstack", "xenserver-classic",
        "--memory", "16M", "--seed", "1", "-o", str(old),
    )  # fmt: skip
    _xlpy("inspect", str(old))

    print("\n== 2. Into a Xen 4.3.1 receiver (no checkpointed_stream argument) ==")
    r = _restore(old, "dom-4.3.1", "--release", "xen-4.3.1", "--toolstack", "xenserver-classic")
    eaten = any("Max batch size exceeded (1970103633)" in m for m in r["messages"])
    checks.append(("4.3.1 eats 'Qemu' (EAT)", eaten and not r["ok"] and r["bytes_past_image"] > 0))

    print("\n== 3. Into a fixed receiver told checkpointed_stream=0 (a plain restore) ==")
    r = _restore(
        old, "dom-4.3.2", "--release", "xen-4.3.2", "--checkpointed", "0",
        "--toolstack", "xenserver-classic",
    )  # fmt: skip
    checks.append(("4.3.2 cs=0 restores (OK0)", r["ok"] and r["bytes_past_image"] == 0))

    print("\n== 4. A compressed Remus stream into a fixed receiver told checkpointed_stream=1 ==")
    _xlpy(
        "gen", "--guest", "hvm", "--sender", "xen-4.3", "--toolstack", "xl", "--mode", "remus",
        "--checkpoints", "3", "--compress", "--memory", "16M", "--seed", "2", "-o", str(remus),
    )  # fmt: skip
    r = _restore(
        remus, "dom-remus", "--release", "xen-4.5", "--checkpointed", "1",
        "--toolstack", "xl-4.4",
    )  # fmt: skip
    committed_last = r["ok"] and r["committed_checkpoint"] == 2
    checks.append(("4.5 cs=1 commits the last checkpoint (R-OK)", committed_last))

    print("\n== 5. The same old stream, the toolstack saying only what it is doing ==")
    rest = OUT / "rest-after-image.bin"
    r = _restore(
        old, "dom-framed", "--operation", "migrate-receive", "--release", "xen-4.3.1",
        "--toolstack", "xenserver-classic", "--rest-out", str(rest),
    )  # fmt: skip
    intact = rest.exists() and rest.read_bytes().startswith(b"QemuDeviceModelRecord\n")
    checks.append(
        ("migrate on 4.3.1 is framed: nothing eaten, QEMU record intact", r["ok"] and intact)
    )

    print("\n== Summary ==")
    for what, ok in checks:
        print(f"  {'ok  ' if ok else 'FAIL'} {what}")
    print(f"Restored domains are under {OUT}/ (memory, domain.json, contexts).")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
