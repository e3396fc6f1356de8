"""Receiving toolstacks: what sits around ``xc_domain_restore`` (legacy-stream.md §8, §12, §13).

A toolstack decides the ``checkpointed_stream`` argument, whether libxc reads the HVM
QEMU record as part of its tail, and what the toolstack itself reads after libxc returns.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from xlpy.errors import UsageError


@dataclass(frozen=True, slots=True)
class Toolstack:
    """One receiving toolstack."""

    name: str
    #: ``checkpointed_stream`` values it can pass, the first is its default (§13).
    checkpointed: tuple[int, ...]
    #: Upstream libxc reads the QEMU record inside the HVM tail; XenServer-classic's
    #: ``revert_qemu_tail.patch`` removed that (§8.1).
    libxc_reads_qemu: bool = True
    #: After libxc returns, the toolstack reads its own ``QemuDeviceModelRecord\\n`` +
    #: big-endian length record (HVM), and fails if it does not find one (§8.1, §12 EAT).
    reads_foreign_qemu: bool = False
    #: Installs libxc's ``toolstack_restore`` callback (libxl): without one an HVM stream
    #: carrying chunk -18 fails at finish (§5, -18).
    toolstack_callback: bool = False
    summary: str = ""


TOOLSTACKS: dict[str, Toolstack] = {
    t.name: t
    for t in (
        Toolstack(
            "xc_restore",
            (0, 1),
            summary="libxc's own xc_restore helper; 9th argument defaults to 0 (§13)",
        ),
        Toolstack("xend", (1,), summary="xend passes a literal 1 (XendCheckpoint.py, §13)"),
        Toolstack(
            "libxl-4.3.2",
            (0,),
            toolstack_callback=True,
            summary="4.3 backport: libxl-save-helper hard-wires 0 (§13)",
        ),
        Toolstack(
            "xl-4.4",
            (0, 1),
            toolstack_callback=True,
            summary="xl migrate-receive passes 0, or 1 with -r (Remus) (§13)",
        ),
        Toolstack(
            "xenserver-classic",
            # xenguest passes 0; 1 models the cs=1 column of the outcome matrix (§12).
            (0, 1),
            libxc_reads_qemu=False,
            reads_foreign_qemu=True,
            summary="xenguest passes 0; xenopsd reads its own QEMU record after libxc (§8.1)",
        ),
        Toolstack(
            "xenopsd",
            (0,),
            libxc_reads_qemu=False,
            summary="xenopsd's xenguest/emu-manager on the libxc part of a XenSavedDomain "
            "image (no QEMU record in libxc's tail); xenopsd reads the QEMU record itself, "
            "as a record of its own (xenopsd-image.md)",
        ),
    )
}
DEFAULT_TOOLSTACK = "xc_restore"


#: Suffix naming a toolstack's libxc call alone: what the toolstack reads after libxc
#: returns (XenServer-classic's QEMU record) is left to the caller.  ``xlpy.restore``'s
#: framing uses it: libxc gets a pipe holding only the image, and the bytes after it go
#: back to the caller instead of being read from that pipe.
CALLER_READS_AFTER = "+caller-reads-after"


def toolstack(name: str) -> Toolstack:
    """The toolstack called ``name`` (optionally with :data:`CALLER_READS_AFTER`), or
    :class:`UsageError`."""
    base = name.removesuffix(CALLER_READS_AFTER)
    try:
        ts = TOOLSTACKS[base]
    except KeyError:
        known = ", ".join(TOOLSTACKS)
        raise UsageError(f"unknown toolstack {name!r} (known: {known})") from None
    return ts if base == name else replace(ts, name=name, reads_foreign_qemu=False)


def checkpointed_for(ts: Toolstack, requested: int | None) -> int:
    """The ``checkpointed_stream`` value ``ts`` passes when asked for ``requested``."""
    if requested is None:
        return ts.checkpointed[0]
    if requested not in ts.checkpointed:
        can = " or ".join(str(c) for c in ts.checkpointed)
        raise UsageError(
            f"toolstack {ts.name} cannot pass checkpointed_stream={requested} (it passes {can})"
        )
    return requested
