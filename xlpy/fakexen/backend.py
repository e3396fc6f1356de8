"""The ``fakexen`` backend: a release's real ``xc_domain_restore`` into the user-space Xen.

The library of the named release (built by :mod:`xlpy.fakexen.builder`) runs through
xlpy's own cffi binding in its out-of-process helper, with the fakexen shim preloaded
there; at the helper's exit the shim dumps the domain, which becomes the domain
directory ``out`` in the simulated backend's layout (``memory``, ``vcpu<N>.ctx``/
``.ext``/``.xsave``, ``shared_info`` or ``hvm_context``, ``domain.json``), so the two
compare file by file.  A crash of the real library is a typed
:class:`~xlpy.errors.LibxcCrashed`, as on a real host.

Two ways in, as on the sim: with an ``operation`` the restore goes through
:func:`xlpy.restore`'s rules (stream type from the operation, framing on 4.0-4.3.1);
without one (:func:`run` with ``checkpointed``) libxc is driven raw, so the
regressions of the real code reproduce.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xlpy import binding
from xlpy.backends import RestoreRequest, RestoreResult
from xlpy.backends.libxc import secondary_callbacks
from xlpy.binding import RestoreArgs
from xlpy.binding.generations import by_name
from xlpy.errors import LibxcCrashed, UsageError, XenError, XlpyError
from xlpy.fakexen import builder
from xlpy.operation import Decision, Operation, StreamType
from xlpy.stream.legacy.format import PAGE_SIZE
from xlpy.stream.v2 import format as v2f

#: The domain the fake hypervisor holds (any free domid would do).
DOMID = 7
#: vcpus of the fake domain unless told: as many as a toolstack's default config allows.
DEFAULT_VCPUS = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class FakeXenOptions:
    """The ``fakexen`` backend's options."""

    #: The domain directory to create (must not exist), in the sim's layout.
    out: str | Path = field(metadata={"metavar": "DIR"})
    #: Accept what real Xen refuses (the extended vcpu context's ``vcpu`` field).
    lenient: bool = False
    #: PV: mfn = pfn + offset (0: identity).
    p2m_offset: int = 0
    vcpus: int = DEFAULT_VCPUS
    #: Write every hypercall to this file.
    hypercall_log: str | Path | None = None


def abi_for(built: builder.Built) -> binding.Abi:
    """The binding's view of a built release (its generation named, not detected)."""
    release = built.release
    gen = by_name(release if _known(release) else ".".join(release.split(".")[:2]))
    short = release if release in gen.releases else ".".join(release.split(".")[:2])
    return binding.Abi(
        library=str(built.libxenguest),
        soname=built.libxenguest.name,
        symbol_version=None,
        generation=gen,
        release=short,
        overridden=True,
    )


def _known(release: str) -> bool:
    try:
        by_name(release)
    except UsageError:
        return False
    return True


def peek(path: Path) -> tuple[str, int | None, int]:
    """Guest type, p2m size and toolstack-header length of a stream file (read through
    descriptors of its own)."""
    from xlpy.stream.legacy.inspect import inspect_stream
    from xlpy.stream.legacy.reader import LegacyReader
    from xlpy.stream.source import ByteSource

    with open(path, "rb", buffering=0) as f:
        head = f.read(v2f.IHDR_SIZE + v2f.DHDR_SIZE)
        if len(head) == v2f.IHDR_SIZE + v2f.DHDR_SIZE:
            marker, ident = struct.unpack_from(">QI", head)
            if marker == v2f.IHDR_MARKER and ident == v2f.IHDR_ID:
                dtype = struct.unpack_from("<I", head, v2f.IHDR_SIZE)[0]
                return ("hvm" if dtype == v2f.DHDR_TYPE_X86_HVM else "pv"), None, 0
    with open(path, "rb", buffering=0) as f:
        summary = inspect_stream(ByteSource(f.fileno()))
    if summary.guest is None:
        raise UsageError(f"{path}: cannot tell the guest type; pass guest='pv' or 'hvm'")
    with open(path, "rb", buffering=0) as f:
        src = ByteSource(f.fileno())
        LegacyReader(src).read_framing()
        header = src.offset
    return summary.guest, summary.p2m_size, header


def _environment(
    built: builder.Built, opts: FakeXenOptions, guest: str, work: Path
) -> dict[str, str]:
    env = {
        "LD_PRELOAD": str(built.shim),
        "FAKEXEN_DOMID": str(DOMID),
        "FAKEXEN_HVM": "1" if guest == "hvm" else "0",
        "FAKEXEN_VCPUS": str(opts.vcpus),
        "FAKEXEN_P2M_OFFSET": str(opts.p2m_offset),
        "FAKEXEN_LENIENT": "1" if opts.lenient else "0",
        "FAKEXEN_DUMP": str(work / "domain"),
        "FAKEXEN_VARDIR": str(work / "var"),
    }
    if opts.hypercall_log is not None:
        env["FAKEXEN_LOG"] = str(Path(opts.hypercall_log).resolve())
    (work / "var").mkdir()
    return env


def _regular_file(fd: int) -> Path | None:
    """A path reaching the same regular file as ``fd`` (to peek at it through a descriptor
    of its own), or ``None`` for a pipe or socket."""
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return Path(f"/proc/self/fd/{fd}")
    except OSError:
        pass
    return None


class FakeXenBackend:
    """A release's real libxc, built from source, on the user-space Xen."""

    name = "fakexen"
    Options = FakeXenOptions
    raw = True

    def release(self, requested: str | None) -> str:
        """``requested`` as a release the builder knows (``4.3.1``; ``4.17`` is Debian's)."""
        if requested is None:
            raise UsageError("the fakexen backend needs a release (e.g. xen-4.3.1, 4.17)")
        return builder.normalise(requested)

    def restore(
        self, request: RestoreRequest, fd: int, decision: Decision | None, *, framed: bool
    ) -> RestoreResult:
        """The real ``xc_domain_restore`` of ``request.release`` on ``fd``; the shim's dump
        becomes the domain directory ``out``.  Builds the release if it is not cached."""
        opts: FakeXenOptions = request.options
        out = Path(opts.out)
        if out.exists():
            raise UsageError(f"{out} already exists; choose a new out directory")
        if not 1 <= opts.vcpus <= 64:
            raise UsageError(f"vcpus {opts.vcpus}: the fake domain has 1 to 64")
        assert request.release is not None
        built = builder.build(request.release)
        abi = abi_for(built)
        guest, p2m_size, header = request.guest, None, 0
        path = _regular_file(request.fd)
        if path is not None:
            peeked, p2m_size, header = peek(path)
            guest = guest or peeked
        if guest not in ("pv", "hvm"):
            raise UsageError(
                "the fakexen backend needs guest='pv' or 'hvm' for a stream it cannot peek"
            )
        own: int | None = None
        if header and decision is None and path is not None:
            # The toolstack reads its own header before it hands libxc the descriptor: so
            # here, on a descriptor of our own, reading forward (never seeking).
            own = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            if len(os.read(own, header)) != header:
                os.close(own)
                raise UsageError(f"{path}: shorter than its toolstack header")
            fd = own
        if decision is not None:
            stream_type = decision.stream_type
        else:
            told = abi.generation.stream_param is not None
            stream_type = StreamType(request.checkpointed or 0) if told else StreamType.PLAIN
        callbacks = request.callbacks
        if callbacks is None and stream_type is not StreamType.PLAIN:
            callbacks = secondary_callbacks(
                decision.operation if decision is not None else Operation.REMUS_RECEIVE, abi
            )
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            env = _environment(built, opts, guest, work)
            args = RestoreArgs(
                io_fd=fd, dom=DOMID, stream_type=int(stream_type), hvm=guest == "hvm"
            )
            error: XlpyError | None = None
            try:
                binding.restore_libxc(args, callbacks, abi=abi, timeout=request.timeout, env=env)
            except XenError as e:
                error = e
            messages = _messages(error)
            base = RestoreResult(
                ok=False,
                backend=self.name,
                release=built.release,
                decision=decision,
                stream_type=stream_type,
                error=error,
                messages=messages,
                domid=DOMID,
            )
            dump = work / "domain"
            if error is not None or not dump.is_dir():
                return (
                    base
                    if error is not None
                    else dataclasses.replace(
                        base, error=XenError(1, 0, "the user-space Xen left no domain dump")
                    )
                )
            # libxc's dump_qemu: /var/lib/xen/qemu-save.<domid> in 4.0,
            # XC_DEVICE_MODEL_RESTORE_FILE (qemu-resume.<domid>) in 4.1-4.5
            for name in (f"qemu-resume.{DOMID}", f"qemu-save.{DOMID}"):
                if (work / "var" / name).exists():
                    os.rename(work / "var" / name, dump / "qemu")
            domain = _finish(dump, built, decision, request.checkpointed, guest, p2m_size, messages)
            os.chmod(dump, 0o755)
            os.rename(dump, out)
            return dataclasses.replace(base, ok=True, rc=0, out=str(out), detail=domain)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            if own is not None:
                os.close(own)


def _messages(error: XlpyError | None) -> tuple[str, ...]:
    if error is None:
        return ()
    if isinstance(error, LibxcCrashed):
        return tuple(error.stderr.splitlines()) or (str(error),)
    if isinstance(error, XenError) and error.log:
        return error.log
    return (str(error),)


def _finish(
    dump: Path,
    built: builder.Built,
    decision: Decision | None,
    checkpointed: int | None,
    guest: str,
    p2m_size: int | None,
    messages: tuple[str, ...],
) -> dict[str, Any]:
    fake = json.loads((dump / "fakexen.json").read_text())
    memory = dump / "memory"
    if p2m_size is not None and memory.stat().st_size < p2m_size * PAGE_SIZE:
        # the sim's memory file spans the stream's p2m; pages past the last populated
        # one are holes in both
        os.truncate(memory, p2m_size * PAGE_SIZE)
    pages = memory.stat().st_size // PAGE_SIZE
    domain = {
        "guest": guest,
        "p2m_size": p2m_size if p2m_size is not None else pages,
        "online_vcpus": fake["vcpus"] or [0],
        "hvm_params": {k: v for k, v in fake["hvm_params"].items()},
        "tsc_info": fake["tsc_info"],
        "receiver": f"xen-{built.release}",
        "backend": "fakexen",
        "operation": None if decision is None else decision.operation.value,
        "checkpointed_stream": (checkpointed or 0) if decision is None else None,
        "outcome": "restored",
        "messages": list(messages),
        "fakexen": {
            k: fake[k]
            for k in (
                "domid",
                "p2m_offset",
                "populated",
                "address_size",
                "page_types",
                "hypercalls",
                "failed_hypercalls",
                "warnings",
            )
        },
        "library": str(built.libxenguest),
    }
    (dump / "fakexen.json").unlink()
    (dump / "domain.json").write_text(json.dumps(domain, indent=2, sort_keys=True) + "\n")
    return domain


BACKEND = FakeXenBackend()
