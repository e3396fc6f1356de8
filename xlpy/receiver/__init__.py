"""The reference receiver: libxc's restore for every receiver generation.

:func:`restore` is the entry point: a stream in, a restored (simulated) domain out, with
libxc's messages and the spec's outcome facts (§10-§13 of legacy-stream.md).  Legacy
generations run :mod:`xlpy.receiver.legacy`; the migration-v2 generation (``xen-4.17``)
runs :mod:`xlpy.receiver.v2`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from xlpy.receiver import generations
from xlpy.receiver.domains import Outcome, ProgressFn, ReceiveRequest
from xlpy.receiver.domains.sim import SimDomain
from xlpy.receiver.generations import GENERATIONS, Generation, generation
from xlpy.receiver.toolstacks import DEFAULT_TOOLSTACK, TOOLSTACKS, Toolstack, toolstack
from xlpy.stream.source import ByteSource

__all__ = [
    "GENERATIONS",
    "TOOLSTACKS",
    "Generation",
    "Outcome",
    "ReceiveRequest",
    "Toolstack",
    "generation",
    "restore",
    "toolstack",
]


def restore(
    source: ByteSource | int | BinaryIO,
    *,
    generation: str,
    out: str | os.PathLike[str],
    checkpointed: int | None = None,
    toolstack: str = DEFAULT_TOOLSTACK,
    heartbeat: float = 1.0,
    timeout: float | None = None,
    progress: ProgressFn | None = None,
    guest: str | None = None,
    width: int | None = None,
) -> Outcome:
    """Restore a stream as receiver ``generation`` would, into directory ``out``.

    ``source`` is a :class:`ByteSource`, a descriptor or a binary file (pipes and
    sockets work; nothing is seeked).  ``checkpointed`` is libxc's
    ``checkpointed_stream`` (``None``: the toolstack's default; only R-fix generations
    take it; for the v2 generation it is the stream type: 0 PLAIN, 1 REMUS, 2 COLO).
    ``heartbeat`` is libxc's 1 s select timeout after the first checkpoint (legacy only).
    ``timeout`` is the stall bound everywhere else (``None``: a :class:`ByteSource`'s own
    ``timeout``, else none): no byte for that long fails the restore with a
    :class:`~xlpy.errors.StreamTimeout`.
    A v2 generation reads bare libxc, libxl and ``xl save`` v2 streams and refuses a
    legacy one (convert it first).
    Stream problems are reported in the result (``ok``, ``rc``, ``messages``,
    ``error``), never raised; a bad argument raises :class:`~xlpy.errors.UsageError`.
    """
    src = source if isinstance(source, ByteSource) else ByteSource(source)
    if timeout is not None:
        src.timeout = timeout
    request = ReceiveRequest(
        generation=generation,
        out=Path(out),
        toolstack=toolstack,
        checkpointed=checkpointed,
        heartbeat=heartbeat,
        timeout=src.timeout,
        progress=progress,
        guest=guest,
        width=width,
    )
    domain = SimDomain(request.out)
    try:
        if generations.generation(request.generation).stream_format == "v2":
            from xlpy.receiver.v2 import V2Restore

            return V2Restore(src, request, domain).run()
        from xlpy.receiver.legacy import Restore

        return Restore(src, request, domain).run()
    except BaseException:
        # libxc's own failures destroy the domain in run(); this is for the rest
        # (a broken progress pipe, ENOSPC, Ctrl-C).
        domain.destroy()
        raise
