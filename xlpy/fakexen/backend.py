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
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xlpy import binding
from xlpy.binding.callbacks import Callback
from xlpy.binding.generations import by_name
from xlpy.errors import LibxcCrashed, StreamError, UsageError, XenError, XlpyError
from xlpy.fakexen import builder
from xlpy.stream.legacy.format import PAGE_SIZE
from xlpy.stream.v2 import format as v2f

if TYPE_CHECKING:
    from xlpy.api import Restored

#: The domain the fake hypervisor holds (any free domid would do).
DOMID = 7
#: vcpus of the fake domain unless told: as many as a toolstack's default config allows.
DEFAULT_VCPUS = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class FakeXenRequest:
    """A restore on the user-space Xen."""

    #: ``"4.3.1"`` or ``"xen-4.3.1"``; ``"4.17"`` is Debian's binary 4.17.
    release: str
    out: Path
    #: ``"pv"``/``"hvm"``; None: read from the stream file's header.
    guest: str | None = None
    #: ``Operation`` value (``"restore"``, ``"migrate-receive"``, ...); None: raw libxc.
    operation: str | None = None
    #: Raw mode: ``checkpointed_stream`` (releases without it ignore it).
    checkpointed: int = 0
    force: bool = False
    #: Accept what real Xen refuses (the extended vcpu context's ``vcpu`` field).
    lenient: bool = False
    #: PV: mfn = pfn + offset (0: identity).
    p2m_offset: int = 0
    vcpus: int = DEFAULT_VCPUS
    #: Write every hypercall to this file.
    hypercall_log: Path | None = None
    callbacks: Mapping[str, Callback] = field(default_factory=dict)
    toolstack: str | None = None
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class FakeXenResult:
    """What the real library did; ``out`` exists only when ``ok``."""

    ok: bool
    release: str
    out: Path | None
    error: XlpyError | None
    messages: tuple[str, ...]
    restored: Any  # xlpy.api.Restored with an operation, binding.RestoreResult raw
    domain: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """``xlpy restore --backend fakexen --json``."""
        return {
            "ok": self.ok,
            "backend": "fakexen",
            "release": self.release,
            "out": str(self.out) if self.out is not None else None,
            "error": str(self.error) if self.error is not None else None,
            "error_type": type(self.error).__name__ if self.error is not None else None,
            "messages": list(self.messages),
        }


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
    from xlpy.inspect import inspect_stream
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
    built: builder.Built, req: FakeXenRequest, guest: str, work: Path
) -> dict[str, str]:
    env = {
        "LD_PRELOAD": str(built.shim),
        "FAKEXEN_DOMID": str(DOMID),
        "FAKEXEN_HVM": "1" if guest == "hvm" else "0",
        "FAKEXEN_VCPUS": str(req.vcpus),
        "FAKEXEN_P2M_OFFSET": str(req.p2m_offset),
        "FAKEXEN_LENIENT": "1" if req.lenient else "0",
        "FAKEXEN_DUMP": str(work / "domain"),
        "FAKEXEN_VARDIR": str(work / "var"),
    }
    if req.hypercall_log is not None:
        env["FAKEXEN_LOG"] = str(Path(req.hypercall_log).resolve())
    (work / "var").mkdir()
    return env


def run(source_fd: int, req: FakeXenRequest, *, source_path: Path | None = None) -> FakeXenResult:
    """Restore the stream on ``source_fd`` with the real library of ``req.release``.

    Builds the release first if it is not cached.  ``source_path`` (the same stream as
    a file) lets the guest type and p2m size be read from it when not given.
    """
    out = Path(req.out)
    if out.exists():
        raise UsageError(f"{out} already exists; choose a new out directory")
    if req.vcpus < 1 or req.vcpus > 64:
        raise UsageError(f"vcpus {req.vcpus}: the fake domain has 1 to 64")
    built = builder.build(req.release)
    guest, p2m_size, header = req.guest, None, 0
    if source_path is not None:
        peeked, p2m_size, header = peek(source_path)
        guest = guest or peeked
    if header and req.operation is None:
        if source_path is None:
            raise UsageError("raw fakexen restores of an xl/xend-framed stream need it as a file")
        # The toolstack reads its own header before it hands libxc the descriptor: so
        # here, on a descriptor of our own, reading forward (never seeking).
        own = os.open(source_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if len(os.read(own, header)) != header:
                raise UsageError(f"{source_path}: shorter than its toolstack header")
            return run(own, dataclasses.replace(req, guest=guest))
        finally:
            os.close(own)
    if guest not in ("pv", "hvm"):
        raise UsageError(
            "the fakexen backend needs guest='pv' or 'hvm' for a stream it cannot peek"
        )
    abi = abi_for(built)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        env = _environment(built, req, guest, work)
        restored, error, messages = _call(source_fd, req, abi, guest, env)
        dump = work / "domain"
        if error is not None or not dump.is_dir():
            return FakeXenResult(False, built.release, None, error, messages, restored, {})
        # libxc's dump_qemu: /var/lib/xen/qemu-save.<domid> in 4.0,
        # XC_DEVICE_MODEL_RESTORE_FILE (qemu-resume.<domid>) in 4.1-4.5
        for name in (f"qemu-resume.{DOMID}", f"qemu-save.{DOMID}"):
            if (work / "var" / name).exists():
                os.rename(work / "var" / name, dump / "qemu")
        domain = _finish(dump, built, req, guest, p2m_size, messages)
        os.chmod(dump, 0o755)
        os.rename(dump, out)
        return FakeXenResult(True, built.release, out, None, messages, restored, domain)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _call(
    fd: int, req: FakeXenRequest, abi: binding.Abi, guest: str, env: Mapping[str, str]
) -> tuple[Any, XlpyError | None, tuple[str, ...]]:
    if req.operation is not None:
        from xlpy import api
        from xlpy.receiver.toolstacks import DEFAULT_TOOLSTACK
        from xlpy.receiver.toolstacks import toolstack as toolstack_model

        ts = toolstack_model(req.toolstack or DEFAULT_TOOLSTACK)
        request = binding.RestoreRequest(io_fd=fd, dom=DOMID, hvm=guest == "hvm")
        # xlpy.restore's libxc path, with this release's library and the shim
        done = api._restore_libxc(
            request,
            req.operation,
            callbacks=req.callbacks,
            force=req.force,
            libxc_reads_qemu=ts.libxc_reads_qemu,
            guest=guest,
            out_of_process=True,
            timeout=req.timeout,
            abi=abi,
            env=env,
        )
        done = dataclasses.replace(done, backend="fakexen")
        return done, done.error, _messages(done.error)
    stream_type = req.checkpointed if abi.generation.stream_param is not None else 0
    request = binding.RestoreRequest(
        io_fd=fd, dom=DOMID, stream_type=stream_type, hvm=guest == "hvm"
    )
    try:
        result = binding.restore_libxc(
            request, req.callbacks, abi=abi, timeout=req.timeout, env=env
        )
    except (XenError, StreamError) as e:
        return None, e, _messages(e)
    except XlpyError as e:
        if isinstance(e, UsageError):
            raise
        return None, e, _messages(e)
    return result, None, ()


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
    req: FakeXenRequest,
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
        "operation": req.operation,
        "checkpointed_stream": req.checkpointed if req.operation is None else None,
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


def restore_for_api(
    fd: int,
    operation: Any,
    *,
    out: str | os.PathLike[str] | None,
    release: str | None,
    guest: str | None,
    force: bool,
    callbacks: Mapping[str, Callback] | None,
    toolstack: str | None,
    timeout: float | None,
    source_path: Path | None,
) -> Restored:
    """``xlpy.restore(..., backend="fakexen", release=...)``: a :class:`xlpy.api.Restored`
    whose ``out`` is the domain directory (None when the restore failed)."""
    from xlpy.toolstack import Operation, secondary_callbacks, stream_type_for

    if out is None or release is None:
        raise UsageError("the fakexen backend restores into out=DIR with release=REL")
    op = Operation(operation)
    if callbacks is None and stream_type_for(op) != 0:
        callbacks = secondary_callbacks(op, abi_for(builder.build(release)))
    req = FakeXenRequest(
        release=release,
        out=Path(out),
        guest=guest,
        operation=op.value,
        force=force,
        callbacks=callbacks or {},
        toolstack=toolstack,
        timeout=timeout,
    )
    result = run(fd, req, source_path=source_path)
    restored: Restored = result.restored
    return dataclasses.replace(
        restored, ok=result.ok, out=result.out, messages=result.messages or restored.messages
    )
