"""Domain set-up for a Python toolstack, done the way xend did it.

xend built and restored domains with Xen's own Python bindings, ``xen.lowlevel.xc``
(hypercalls) and ``xen.lowlevel.xs`` (xenstore), and left the image to libxc.  This
module does the same on a current Xen (Debian ships the bindings under
``/usr/lib/xen-4.17/lib/python``): it creates the empty domain, allocates its store and
console event channels, lets :func:`xlpy.restore` (``backend="libxc"``, the real
``xc_domain_restore``) fill it, writes the xenstore entries xenstored and xenconsoled
need (so ``xl console``, ``xl list`` and the console log see the guest), introduces the
domain to xenstored and unpauses it.  xlpy's cffi binding does only the restore.

What it writes follows libxl 4.17 (``libxl__domain_make``, ``libxl__build_post``):
``/local/domain/N`` readable by the guest with guest-writable ``control``, ``data``,
``device``, ``memory``... under it, ``name``/``vm``/``domid``, the ``console`` and
``store`` ring references and ports (``console/type = xenconsoled``), and ``/vm/UUID``.
libxc itself seeds the console and store grant entries at the end of a restore
(``stream_complete``), with the ``console_domid``/``store_domid`` given here (dom0).

Only PV guests: an HVM restore also needs qemu started with the saved device model
state, which this module does not do (:class:`UnsupportedImage` says so).

Typical use in dom0::

    from xlpy import xend
    done = xend.restore_xl_image("/srv/guest.save")      # like `xl restore`
    print(done.domain.domid, done.domain.console_mfn)
    xend.Toolstack.open().destroy(done.domain.domid)
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from xlpy.api import restore as xlpy_restore
from xlpy.backends import RestoreResult
from xlpy.binding.callbacks import Callback
from xlpy.errors import (
    StreamMalformed,
    StreamTruncated,
    UsageError,
    XenError,
    XenUnavailable,
    XlpyError,
)
from xlpy.stream import xlheader
from xlpy.stream.legacy.format import (
    XL_MANDATORY_FLAG_JSON,
)
from xlpy.stream.legacy.records import XlHeader
from xlpy.stream.source import ByteSource
from xlpy.stream.v2 import format as F
from xlpy.stream.v2.reader import V2Reader
from xlpy.stream.v2.records import LIBXL, LibxlHeader, V2Record

log = logging.getLogger("xlpy.xend")

#: Where distributions install Xen's Python package (Debian: xen-4.17).
XEN_PYTHON_GLOB = "/usr/lib/xen-*/lib/python"
DOM0 = 0
#: libxl's LIBXL_MAXMEM_CONSTANT: head-room above the guest's memory (KiB) for
#: ballooning drivers and the pages Xen itself charges to the domain.
MAXMEM_SLACK_KB = 1024
#: libxl's default console ring limit (bytes buffered by xenconsoled).
CONSOLE_LIMIT = 1048576
#: Sub-directories of /local/domain/N the guest may write (libxl__domain_make).
GUEST_WRITABLE = ("cpu", "memory", "device", "control", "data", "drivers", "feature", "attr")


class UnsupportedImage(XlpyError):
    """The image needs toolstack work this module does not do (an HVM device model)."""


def xen_python_dirs() -> list[str]:
    """Candidate directories holding Xen's ``xen`` package, newest Xen first."""
    override = os.environ.get("XLPY_XEN_PYTHON")
    found = sorted(glob.glob(XEN_PYTHON_GLOB), reverse=True)
    return ([override] if override else []) + found


def lowlevel(python_dir: str | os.PathLike[str] | None = None) -> tuple[Any, Any]:
    """Xen's binding modules ``(xen.lowlevel.xc, xen.lowlevel.xs)``.

    They live outside ``sys.path`` on Debian; ``python_dir`` (default:
    ``$XLPY_XEN_PYTHON`` or ``/usr/lib/xen-*/lib/python``) is added when needed.

    Raises:
        XenUnavailable: the package is not installed.
    """
    dirs = [os.fspath(python_dir)] if python_dir is not None else xen_python_dirs()
    for d in dirs:
        if (Path(d) / "xen" / "lowlevel").is_dir() and d not in sys.path:
            sys.path.append(d)
    try:
        from xen.lowlevel import xc, xs  # type: ignore[import-not-found]
    except ImportError as e:
        raise XenUnavailable(
            f"Xen's Python bindings (xen.lowlevel.xc/xs) not importable ({e}); "
            "install xen-utils (Debian: /usr/lib/xen-4.17/lib/python) or set XLPY_XEN_PYTHON"
        ) from None
    return xc, xs


def _xc_error(what: str, e: Exception) -> XenError:
    """``xen.lowlevel.xc.Error`` (``(code, desc, message)`` or ``(errno, strerror)``)."""
    args = e.args
    if len(args) >= 2 and isinstance(args[0], int):
        code = args[0]
        text = ": ".join(str(a) for a in args[1:])
        err = XenError(code, code if len(args) == 2 else 0, f"{what}: {text}")
    else:
        err = XenError(0, 0, f"{what}: {e}")
    return err


@dataclass(frozen=True, slots=True, kw_only=True)
class DomainConfig:
    """What the toolstack needs to create the empty domain a PV image restores into.

    ``memory_kb`` is the guest's maximum memory (libxl ``max_memkb``); ``target_kb``
    its balloon target (default: the maximum).
    """

    name: str
    memory_kb: int
    vcpus: int = 1
    uuid: uuid.UUID = field(default_factory=uuid.uuid4)
    target_kb: int | None = None

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise UsageError(f"bad domain name {self.name!r}")
        if self.memory_kb <= 0 or self.vcpus <= 0:
            raise UsageError(f"bad domain size: {self.memory_kb} KiB, {self.vcpus} vCPUs")

    @classmethod
    def from_xl_header(cls, xl: XlHeader, *, name: str | None = None) -> DomainConfig:
        """The configuration ``xl save`` wrote into its header's optional data.

        xl writes a u32 length then the NUL-terminated config; with the JSON mandatory
        flag (always, since 4.5) it is libxl_domain_config JSON.

        Raises:
            StreamMalformed: no JSON configuration (an old xl's config-file text).
        """
        data = xl.optional_data
        if not xl.mandatory_flags & XL_MANDATORY_FLAG_JSON or len(data) < 4:
            raise StreamMalformed(
                "xl header: the saved configuration is not libxl JSON",
                offset=xl.offset,
                field="xl_header.mandatory_flags",
                value=xl.mandatory_flags,
            )
        size = int.from_bytes(data[:4], "little")
        return cls.from_libxl_json(data[4 : 4 + size], name=name)

    @classmethod
    def from_libxl_json(cls, data: bytes, *, name: str | None = None) -> DomainConfig:
        """The configuration ``xl save`` stores in its header (libxl_domain_config JSON).

        Raises:
            StreamMalformed: not JSON, or no ``c_info``/``b_info`` sizes.
            UnsupportedImage: an HVM guest.
        """
        try:
            cfg = json.loads(data.rstrip(b"\0").decode())
            c_info, b_info = cfg["c_info"], cfg["b_info"]
            gtype = str(c_info.get("type", "pv")).lower()
            memory_kb = int(b_info["max_memkb"])
            target_kb = int(b_info.get("target_memkb", memory_kb))
            vcpus = int(b_info.get("max_vcpus", 1))
            dom_uuid = uuid.UUID(c_info["uuid"]) if c_info.get("uuid") else uuid.uuid4()
            cfg_name = str(c_info.get("name") or "")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise StreamMalformed(
                f"xl header: no usable libxl domain configuration ({e})",
                field="xl_header.optional_data",
            ) from None
        if gtype != "pv":
            raise UnsupportedImage(
                f"a {gtype.upper()} guest: its device model (qemu) is not started by xlpy.xend"
            )
        return cls(
            name=name or cfg_name or "xlpy-restored",
            memory_kb=memory_kb,
            vcpus=vcpus,
            uuid=dom_uuid,
            target_kb=target_kb,
        )


@dataclass(slots=True)
class Domain:
    """A domain built by :class:`Toolstack`; the ring frames are set by the restore."""

    domid: int
    config: DomainConfig
    store_evtchn: int
    console_evtchn: int
    store_mfn: int | None = None
    console_mfn: int | None = None

    @property
    def vm_path(self) -> str:
        return f"/vm/{self.config.uuid}"


class Toolstack:
    """xend's domain plumbing over ``xen.lowlevel.xc`` and ``xen.lowlevel.xs``.

    ``xc``/``xs`` are the binding modules (or fakes with the same calls); the handles
    are opened once.  Every call that fails raises :class:`~xlpy.errors.XenError`
    naming the call.
    """

    def __init__(self, xc_module: Any, xs_module: Any) -> None:
        self._xc_mod = xc_module
        self._xs_mod = xs_module
        self.xc = xc_module.xc()
        self.xs = xs_module.xs()

    @classmethod
    def open(cls, python_dir: str | os.PathLike[str] | None = None) -> Toolstack:
        """The toolstack on this dom0's Xen bindings (see :func:`lowlevel`)."""
        return cls(*lowlevel(python_dir))

    def _xc(self, what: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except self._xc_mod.Error as e:
            raise _xc_error(what, e) from None

    @contextmanager
    def _transaction(self) -> Iterator[str]:
        t = self.xs.transaction_start()
        try:
            yield t
        except BaseException:
            self.xs.transaction_end(t, True)
            raise
        if not self.xs.transaction_end(t, False):
            # xenstored's EAGAIN: a concurrent writer; the caller retries the whole set.
            raise _Retry

    # -- the domain ------------------------------------------------------------

    def create(self, config: DomainConfig) -> Domain:
        """An empty, paused PV domain sized by ``config``, with its two event channels.

        As xend: ``domain_create``, ``domain_max_vcpus``, ``domain_setmaxmem``,
        ``domain_set_memmap_limit`` (PV e820 limit) and one unbound port each for
        xenstored and xenconsoled, both in dom0.  The domain is destroyed again if a
        later step fails.
        """
        xc = self.xc
        domid = self._xc(
            "domain_create",
            xc.domain_create,
            domid=0,
            ssidref=0,
            handle=list(config.uuid.bytes),
            flags=0,
            max_vcpus=config.vcpus,
        )
        try:
            self._xc("domain_max_vcpus", xc.domain_max_vcpus, domid, config.vcpus)
            maxmem = config.memory_kb + MAXMEM_SLACK_KB
            self._xc("domain_setmaxmem", xc.domain_setmaxmem, domid, maxmem)
            self._xc("domain_set_memmap_limit", xc.domain_set_memmap_limit, domid, maxmem)
            store = self._xc(
                "evtchn_alloc_unbound", xc.evtchn_alloc_unbound, domid=domid, remote_dom=DOM0
            )
            console = self._xc(
                "evtchn_alloc_unbound", xc.evtchn_alloc_unbound, domid=domid, remote_dom=DOM0
            )
        except XenError:
            self._xc("domain_destroy", xc.domain_destroy, domid)
            raise
        log.info("created domain %d (%s): store port %d, console port %d",
                 domid, config.name, store, console)  # fmt: skip
        return Domain(domid=domid, config=config, store_evtchn=store, console_evtchn=console)

    def restore(
        self,
        domain: Domain,
        source: int | BinaryIO,
        *,
        operation: str = "restore",
        callbacks: Mapping[str, Callback] | None = None,
        timeout: float | None = None,
    ) -> RestoreResult:
        """Run the real ``xc_domain_restore`` into ``domain`` through :func:`xlpy.restore`.

        ``source`` is positioned at the libxc image (an ``xl save`` file after its libxl
        LIBXC_CONTEXT record, or a bare libxc stream).  On success the ring frames are
        stored in ``domain``; on failure the :class:`~xlpy.backends.RestoreResult` says why and
        the domain is left for the caller to destroy.
        """
        done = xlpy_restore(
            source,
            operation=operation,
            backend="libxc",
            domid=domain.domid,
            guest="pv",
            store_evtchn=domain.store_evtchn,
            console_evtchn=domain.console_evtchn,
            store_domid=DOM0,
            console_domid=DOM0,
            callbacks=callbacks,
            timeout=timeout,
        )
        if done.ok:
            domain.store_mfn, domain.console_mfn = done.store_mfn, done.console_mfn
        return done

    def introduce(self, domain: Domain) -> None:
        """Write the domain's xenstore entries, then introduce it to xenstored.

        After this xenconsoled (watching ``@introduceDomain``) maps the console ring and
        logs the guest under its name, and ``xl list`` shows it.
        """
        if domain.store_mfn is None or domain.console_mfn is None:
            raise UsageError(f"domain {domain.domid} has no ring frames: restore it first")
        for _attempt in range(10):
            try:
                self._write_entries(domain)
                break
            except _Retry:
                continue
        else:
            raise XenError(0, 0, f"xenstore: transaction for domain {domain.domid} kept failing")
        try:
            self.xs.introduce_domain(domain.domid, domain.store_mfn, domain.store_evtchn)
        except self._xs_mod.Error as e:
            raise _xc_error("xs introduce_domain", e) from None

    def _write_entries(self, domain: Domain) -> None:
        xs, domid, cfg = self.xs, domain.domid, domain.config
        dom_path = xs.get_domain_path(domid)
        guest_reads = [{"dom": DOM0}, {"dom": domid, "read": True}]
        guest_owns = [{"dom": domid}]
        target = cfg.target_kb if cfg.target_kb is not None else cfg.memory_kb
        entries = {
            "name": cfg.name,
            "domid": str(domid),
            "vm": domain.vm_path,
            "memory/static-max": str(cfg.memory_kb),
            "memory/target": str(target),
            "store/ring-ref": str(domain.store_mfn),
            "store/port": str(domain.store_evtchn),
            "console/ring-ref": str(domain.console_mfn),
            "console/port": str(domain.console_evtchn),
            "console/limit": str(CONSOLE_LIMIT),
            "console/type": "xenconsoled",
            "console/output": "pty",
        }
        entries.update({f"cpu/{n}/availability": "online" for n in range(cfg.vcpus)})
        try:
            with self._transaction() as t:
                for path in (dom_path, domain.vm_path):
                    xs.rm(t, path)
                    xs.mkdir(t, path)
                    xs.set_permissions(t, path, guest_reads)
                for sub in GUEST_WRITABLE:
                    xs.mkdir(t, f"{dom_path}/{sub}")
                    xs.set_permissions(t, f"{dom_path}/{sub}", guest_owns)
                for key, value in entries.items():
                    xs.write(t, f"{dom_path}/{key}", value)
                xs.write(t, f"{domain.vm_path}/name", cfg.name)
                xs.write(t, f"{domain.vm_path}/uuid", str(cfg.uuid))
        except self._xs_mod.Error as e:
            raise _xc_error(f"xenstore entries of domain {domid}", e) from None

    def unpause(self, domid: int) -> None:
        """Let the domain run (``domain_unpause``)."""
        self._xc("domain_unpause", self.xc.domain_unpause, domid)

    def destroy(self, domid: int) -> None:
        """Destroy the domain and remove its xenstore entries (missing ones are fine)."""
        dom_path = self.xs.get_domain_path(domid)
        vm_path = None
        try:
            vm = self.xs.read("", f"{dom_path}/vm")
            vm_path = vm.decode() if isinstance(vm, bytes) else vm
        except self._xs_mod.Error:
            pass
        self._xc("domain_destroy", self.xc.domain_destroy, domid)
        for path in (dom_path, vm_path):
            if path:
                try:
                    self.xs.rm("", path)
                except self._xs_mod.Error:
                    log.debug("xenstore %s already gone", path)


class _Retry(Exception):
    """A xenstore transaction ended with EAGAIN."""


@dataclass(frozen=True, slots=True)
class XlImagePrefix:
    """What precedes the libxc image in an ``xl save`` file."""

    xl: XlHeader
    libxl: LibxlHeader


def _read_exactly(fd: int, n: int, what: str, offset: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = os.read(fd, n - len(out))
        if not chunk:
            break
        out += chunk
    if len(out) < n:
        raise StreamTruncated(
            f"end of stream in {what}: {n} bytes needed, {len(out)} there",
            offset=offset + len(out),
            field=what,
        )
    return bytes(out)


def read_xl_prefix(fd: int) -> XlImagePrefix:
    """Read an ``xl save`` file up to its libxc image, byte-exactly (libxc reads on).

    The bytes are read with exact-size ``read()`` calls so ``fd`` is left at the libxc
    image header, then parsed by :class:`~xlpy.stream.v2.reader.V2Reader`.

    Raises:
        StreamMalformed: not an xl file of a libxl v2 stream, or a record other than
            LIBXC_CONTEXT before the libxc image.
    """
    raw = _read_exactly(fd, xlheader.XL_HEADER_SIZE, "xl_header", 0)
    if raw[: len(xlheader.XL_MAGIC)] != xlheader.XL_MAGIC:
        raise StreamMalformed("not an xl save file: wrong magic", offset=0, field="xl_header")
    fixed = xlheader.parse(raw)
    mflags, optlen = fixed.mandatory_flags, fixed.optional_length
    if not fixed.streamv2:
        raise StreamMalformed(
            "xl file without the STREAMv2 flag (a legacy image): convert it first",
            offset=len(xlheader.XL_MAGIC) + 4,
            field="xl_header.mandatory_flags",
            value=mflags,
        )
    raw += _read_exactly(fd, optlen + F.LIBXL_HDR_SIZE + F.RHDR_SIZE, "libxl_header", len(raw))
    reader = V2Reader(ByteSource(io.BytesIO(raw)), xl=True)
    xl = reader.read_xl_header()
    libxl = reader.read_libxl_header()
    rec = reader.read_record(LIBXL)
    if rec.type != F.REC_TYPE_LIBXC_CONTEXT:
        raise StreamMalformed(
            f"libxl record {F.LIBXL_REC_NAMES.get(rec.type, hex(rec.type))} before the libxc "
            "image: only a plain save (LIBXC_CONTEXT first) is restored here",
            offset=rec.offset,
            record=rec.index,
            field="record.type",
            value=rec.type,
        )
    return XlImagePrefix(xl=xl, libxl=libxl)


def read_libxl_tail(fd: int) -> list[V2Record]:
    """The libxl records after the libxc image, up to and including libxl's END.

    A PV save has only END; EMULATOR records mean an HVM device model state.
    """
    reader = V2Reader(ByteSource(fd))
    records = []
    while True:
        rec = reader.read_record(LIBXL)
        records.append(rec)
        if rec.type == F.REC_TYPE_LIBXL_END:
            return records
        if rec.type in (F.REC_TYPE_EMULATOR_CONTEXT, F.REC_TYPE_EMULATOR_XENSTORE_DATA):
            raise UnsupportedImage("the image carries device model state: an HVM guest")


@dataclass(frozen=True, slots=True)
class RestoredDomain:
    """The outcome of :func:`restore_xl_image`."""

    domain: Domain
    restored: RestoreResult
    prefix: XlImagePrefix
    libxl_tail: tuple[V2Record, ...]


def restore_xl_image(
    image: str | os.PathLike[str],
    *,
    toolstack: Toolstack | None = None,
    name: str | None = None,
    paused: bool = False,
    timeout: float | None = None,
) -> RestoredDomain:
    """``xl restore`` of a PV ``xl save`` file, done by a Python toolstack.

    Creates the domain from the configuration in the file's xl header (``name``
    overrides the saved name), restores it with the installed libxc through
    :func:`xlpy.restore` (operation RESTORE: stream type PLAIN), reads libxl's END,
    writes xenstore and introduces the domain, and unpauses it unless ``paused``.
    Any failure destroys the half-made domain and raises.

    Raises:
        XenError: a hypercall, xenstore or ``xc_domain_restore`` failed (libxc's message).
        StreamError: the file is not a PV ``xl save`` image (or is damaged).
        UnsupportedImage: an HVM image.
    """
    ts = toolstack if toolstack is not None else Toolstack.open()
    with open(image, "rb", buffering=0) as f:
        fd = f.fileno()
        prefix = read_xl_prefix(fd)
        config = DomainConfig.from_xl_header(prefix.xl, name=name)
        domain = ts.create(config)
        try:
            done = ts.restore(domain, fd, timeout=timeout)
            if not done.ok:
                assert done.error is not None
                raise done.error
            tail = read_libxl_tail(fd)
            ts.introduce(domain)
            if not paused:
                ts.unpause(domain.domid)
        except BaseException:
            ts.destroy(domain.domid)
            raise
    return RestoredDomain(domain=domain, restored=done, prefix=prefix, libxl_tail=tuple(tail))
