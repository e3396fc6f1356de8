"""Helpers for the integration tests that run in a real Xen dom0.

The same code runs in the harness's VM (``make integration``) and on a real
dom0 (``pytest integration/ -m dom0``).  Everything a test needs from the host
is found here, with an environment variable to override each guess:

``XLPY_XEN_PYTHON``      directory holding Xen's ``xen`` Python package
``XLPY_GUEST_KERNEL``    PV-capable kernel for the tiny guest (default: dom0's)
``XLPY_GUEST_BUSYBOX``   statically linked busybox for the guest's initramfs
``XLPY_CONSOLE_LOG_DIR`` where xenconsoled writes guest-NAME.log
"""

from __future__ import annotations

import glob
import gzip
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from xlpy.stream import xlheader

HERE = Path(__file__).resolve().parent
GUEST_INIT = HERE / "guest" / "init"
HVM_TICK_SOURCE = HERE / "guest" / "hvm-tick.S"
#: Where run-vm.sh puts the assembled HVM guest in the payload.
HVM_TICK_KERNEL = HERE / "guest" / "hvm-tick.elf"
XEN_PRIVCMD = Path("/dev/xen/privcmd")


class Dom0Error(AssertionError):
    """A dom0 command failed; the message carries its output."""


#: Seconds :func:`_calibrate`'s workload took in an idle harness dom0 (TCG, 2 vCPUs), the
#: machine every timeout below was set on.
CALIBRATION_REFERENCE_S = 4.0
_scale: tuple[float, float] | None = None


def _calibrate() -> float:
    """Seconds this dom0 takes for a fixed CPU-bound workload (Python loop + sha256)."""
    import hashlib

    t0 = time.perf_counter()
    x = 0
    for i in range(3_000_000):
        x += i
    hashlib.sha256(bytes(1 << 24)).digest()
    return time.perf_counter() - t0


def time_scale() -> float:
    """How many times slower than the reference dom0 this one runs (never below 1).

    Measured once per session; every wait and command bound is multiplied by it, so a
    loaded or slower host stretches the deadlines instead of failing them.
    ``XLPY_DOM0_TIME_SCALE`` overrides the measurement.
    """
    global _scale
    if _scale is None:
        override = os.environ.get("XLPY_DOM0_TIME_SCALE")
        took = _calibrate()
        factor = float(override) if override else took / CALIBRATION_REFERENCE_S
        _scale = (max(1.0, factor), took)
    return _scale[0]


def bound(seconds: float) -> float:
    """``seconds`` (a bound set on the reference dom0) stretched to this one."""
    return seconds * time_scale()


def time_scale_report() -> str:
    """The scale and the calibration it came from, for the session summary."""
    scale = time_scale()
    assert _scale is not None
    took = _scale[1]
    return f"time scale {scale:.2f} (calibration {took:.2f}s, reference {CALIBRATION_REFERENCE_S}s)"


def resources() -> str:
    """dom0's free /tmp (a tmpfs: it holds the images), available memory and load, in one line.

    Logged after every test and in every failure report: a test that fails because an
    earlier one filled /tmp or dom0's memory must say so, not look like a libxc bug.
    """
    parts = []
    try:
        st = os.statvfs("/tmp")
        parts.append(
            f"/tmp {(st.f_blocks - st.f_bfree) * st.f_frsize >> 20}M used, "
            f"{st.f_bavail * st.f_frsize >> 20}M free"
        )
    except OSError as e:
        parts.append(f"/tmp: {e}")
    try:
        meminfo = dict(
            line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines()
        )
        parts.append(f"MemAvailable {int(meminfo['MemAvailable'].split()[0]) >> 10}M")
        parts.append(f"Shmem {int(meminfo['Shmem'].split()[0]) >> 10}M")
    except (OSError, KeyError, ValueError) as e:
        parts.append(f"meminfo: {e}")
    try:
        parts.append("load " + " ".join(Path("/proc/loadavg").read_text().split()[:3]))
    except OSError as e:
        parts.append(f"loadavg: {e}")
    return "; ".join(parts)


def run(
    cmd: list[str], *, timeout: float = 120, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` with a bound; on failure (if ``check``) raise with its full output."""
    t0 = time.monotonic()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout * time_scale(), env=env, check=False
    )
    dt = time.monotonic() - t0
    print(f"$ {' '.join(cmd)}  -> rc {proc.returncode} in {dt:.2f}s")
    if check and proc.returncode != 0:
        raise Dom0Error(
            f"{' '.join(cmd)} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc


def xl(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run Xen's ``xl``."""
    return run(["xl", *args], timeout=timeout, check=check)


def xen_unavailable_reason() -> str | None:
    """Why this machine is not a usable Xen dom0, or None if it is."""
    if not XEN_PRIVCMD.exists():
        return f"not a Xen dom0: no {XEN_PRIVCMD}"
    if shutil.which("xl") is None:
        return "no `xl` on PATH (install xen-utils)"
    try:
        proc = subprocess.run(["xl", "info"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "`xl info` hung for 60 s"
    if proc.returncode != 0:
        return f"`xl info` failed (rc {proc.returncode}): {proc.stderr.strip()[-300:]}"
    return None


def xl_info() -> dict[str, str]:
    """``xl info`` as a dict (the values stay strings)."""
    info: dict[str, str] = {}
    for line in xl("info").stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    return info


def xen_python_dir() -> Path:
    """Directory with Xen's ``xen.lowlevel.xc``/``xs`` (Debian: /usr/lib/xen-4.17/lib/python)."""
    override = os.environ.get("XLPY_XEN_PYTHON")
    candidates = [override] if override else sorted(glob.glob("/usr/lib/xen-*/lib/python"))
    candidates += [p for p in sys.path if p]
    for cand in candidates:
        if cand and (Path(cand) / "xen" / "lowlevel").is_dir():
            return Path(cand)
    raise Dom0Error("Xen's Python package (xen/lowlevel) not found; set XLPY_XEN_PYTHON")


def xlpy(*args: str, timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the installed ``xlpy`` CLI with this Python."""
    return run([sys.executable, "-m", "xlpy", *args], timeout=timeout, check=check)


def xlpy_command_missing(name: str) -> str | None:
    """Why ``xlpy NAME`` cannot run in this build, or None if it can."""
    proc = xlpy(name, "--help", timeout=120)
    if proc.returncode == 0:
        return None
    last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    return f"`xlpy {name}` is not available in this build: {last}"


def write_newc_cpio(dest: Path, files: dict[str, tuple[int, bytes]]) -> None:
    """Write a gzipped initramfs (cpio "newc"); ``files`` maps path -> (mode, data).

    Directories have ``stat.S_IFDIR`` modes and empty data.  Written in Python so
    a dom0 needs neither cpio nor a pre-built guest image.
    """

    def entry(ino: int, name: str, mode: int, data: bytes) -> bytes:
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
        head = b"070701" + b"".join(b"%08X" % f for f in fields)
        name_part = head + name.encode() + b"\0"
        name_part += b"\0" * (-len(name_part) % 4)
        return name_part + data + b"\0" * (-len(data) % 4)

    out = bytearray()
    for ino, (name, (mode, data)) in enumerate(sorted(files.items()), start=1):
        out += entry(ino, name, mode, data)
    out += entry(0, "TRAILER!!!", 0, b"")
    dest.write_bytes(gzip.compress(bytes(out), compresslevel=6))


def guest_kernel() -> Path:
    """A PV-capable kernel for the tiny guest: dom0's own unless overridden."""
    override = os.environ.get("XLPY_GUEST_KERNEL")
    path = Path(override) if override else Path(f"/boot/vmlinuz-{platform.release()}")
    if not path.is_file():
        raise Dom0Error(f"guest kernel {path} not found; set XLPY_GUEST_KERNEL")
    return path


def static_busybox() -> Path:
    """A statically linked busybox (Debian: busybox-static) for the guest's userland."""
    path = Path(os.environ.get("XLPY_GUEST_BUSYBOX", "/bin/busybox"))
    if not path.is_file():
        raise Dom0Error(f"{path} not found: install busybox-static or set XLPY_GUEST_BUSYBOX")
    # A dynamic busybox would need dom0's libc inside the guest: refuse it clearly.
    if b"ld-linux" in path.read_bytes()[:8192]:
        raise Dom0Error(f"{path} is dynamically linked: install busybox-static")
    return path


def build_guest_initramfs(dest: Path) -> Path:
    """The tiny guest's initramfs: static busybox plus ``integration/guest/init``."""
    write_newc_cpio(
        dest,
        {
            "bin": (0o040755, b""),
            "dev": (0o040755, b""),
            "proc": (0o040755, b""),
            "sys": (0o040755, b""),
            "bin/busybox": (0o100755, static_busybox().read_bytes()),
            "init": (0o100755, GUEST_INIT.read_bytes()),
        },
    )
    return dest


def console_log_dir() -> Path:
    return Path(os.environ.get("XLPY_CONSOLE_LOG_DIR", "/var/log/xen/console"))


_TICK = re.compile(r"GUEST-TICK (\d+)")


@dataclass
class PVGuest:
    """A tiny PV guest (no disk, no network) whose init prints ``GUEST-TICK n`` every second.

    Liveness is read from xenconsoled's log of the guest console, so the dom0
    must run ``xenconsoled --log=guest`` (Debian: XENCONSOLED_TRACE=guest).
    """

    name: str
    workdir: Path
    # Not less: Debian's kernel unpacks to 58 MiB (64 fails in xc_dom_chk_alloc_pages,
    # 'segment kernel too large'), and the initramfs and the guest's own use come on top.
    memory_mb: int = 128
    config: Path = field(init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        ramdisk = build_guest_initramfs(self.workdir / "guest-initrd.gz")
        self.config = self.workdir / f"{self.name}.cfg"
        self.config.write_text(
            f'name = "{self.name}"\ntype = "pv"\nkernel = "{guest_kernel()}"\n'
            f'ramdisk = "{ramdisk}"\nextra = "console=hvc0 rdinit=/init loglevel=4"\n'
            f"memory = {self.memory_mb}\nmaxmem = {self.memory_mb}\nvcpus = 1\n"
            'on_crash = "preserve"\n'
        )

    @property
    def console_log(self) -> Path:
        return console_log_dir() / f"guest-{self.name}.log"

    def console(self) -> str:
        try:
            return self.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def console_log_appears(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout * time_scale()
        while not self.console_log.exists():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def ticks(self) -> list[int]:
        """Every tick number the guest has printed, in order, across save/restore."""
        return [int(n) for n in _TICK.findall(self.console())]

    def boots(self) -> int:
        """How many times the guest's init started (a restore must not reboot it)."""
        return self.console().count("GUEST-UP")

    def wait_tick_after(self, tick: int, timeout: float = 120) -> int:
        """Wait until the guest prints a tick numbered above ``tick``; return the newest."""
        timeout *= time_scale()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ticks = self.ticks()
            if ticks and ticks[-1] > tick:
                return ticks[-1]
            time.sleep(0.2)
        raise Dom0Error(
            f"guest {self.name} printed no tick after {tick} within {timeout:.0f}s; "
            f"console tail:\n{self.console()[-800:]}\n--- xl list\n{xl('list').stdout}"
        )

    def exists(self) -> bool:
        return xl("domid", self.name, check=False).returncode == 0

    def create(self) -> None:
        # A console log left by an earlier run would fake ticks.
        if not self.exists():
            self.console_log.unlink(missing_ok=True)
        xl("create", str(self.config), timeout=300)

    def destroy(self) -> None:
        if self.exists():
            xl("destroy", self.name, check=False)


# --- console marks: liveness of a guest restored again from the same image -------------


def console_mark(guest: PVGuest) -> int:
    """The current length of the guest's console log: later output is read from here."""
    return len(guest.console())


def ticks_since(guest: PVGuest, mark: int) -> list[int]:
    """The tick numbers printed after ``mark`` (see :func:`console_mark`)."""
    return [int(n) for n in _TICK.findall(guest.console()[mark:])]


def assert_resumed_since(guest: PVGuest, mark: int, last_tick: int, timeout: float = 120) -> None:
    """The guest, restored from an image saved after ``last_tick``, runs on from there.

    New ticks appear after ``mark``, count on from the saved one without a gap (the one
    or two printed into the ring around the save may be re-read or lost), and init is
    not started again (no new ``GUEST-UP``).
    """
    timeout *= time_scale()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = ticks_since(guest, mark)
        if len(new) >= 3:
            break
        time.sleep(0.3)
    else:
        raise Dom0Error(
            f"guest {guest.name}: fewer than 3 ticks within {timeout:.0f}s of the restore; "
            f"console since the restore:\n{guest.console()[mark:][-800:]}\n"
            f"--- xl list\n{xl('list', check=False).stdout}"
        )
    assert last_tick - 1 <= new[0] <= last_tick + 2, (last_tick, new)
    assert new == list(range(new[0], new[0] + len(new))), new
    assert "GUEST-UP" not in guest.console()[mark:], guest.console()[mark:][-800:]


# --- the xl header of a save image ------------------------------------------------------

#: Bytes to read to know the size of an xl header (:func:`xl_header_size`).
XL_HEADER_PEEK = xlheader.XL_HEADER_SIZE


def xl_header_size(head: bytes) -> int:
    """Bytes of the xl header (magic, fixed fields, xl's config) that ``head`` starts with:
    0 for a bare libxc stream.  ``head`` holds at least :data:`XL_HEADER_PEEK` bytes."""
    if not head.startswith(xlheader.XL_MAGIC):
        return 0
    return xlheader.XL_HEADER_SIZE + xlheader.parse(head).optional_length


# --- v2 stream surgery on a real save image ----------------------------------------------


@dataclass(frozen=True)
class Span:
    """A byte range of a file: one v2 record (``type``) or a header (``type`` None)."""

    offset: int
    size: int
    type: int | None = None


@dataclass(frozen=True)
class LibxcLayout:
    """Where the libxc image of an ``xl save`` file lies: its two headers and records."""

    headers: Span
    records: list[Span]


def libxc_layout(image: Path) -> LibxcLayout:
    """Locate the libxc image header and every libxc record of a v2 ``xl save`` file."""
    from xlpy.stream.source import ByteSource
    from xlpy.stream.v2.reader import V2Reader
    from xlpy.stream.v2.records import LIBXC, ImageHeader, V2Record

    start = None
    records: list[Span] = []
    with image.open("rb", buffering=0) as f:
        for el in V2Reader(ByteSource(f.fileno())).elements():
            if isinstance(el, ImageHeader):
                start = el.offset
            elif isinstance(el, V2Record) and el.layer == LIBXC:
                records.append(Span(el.offset, 8 + len(el.body) + len(el.padding), el.type))
    assert start is not None and records, f"{image}: no libxc image"
    return LibxcLayout(Span(start, records[0].offset - start), records)


def write_pieces(image: Path, dest: Path, pieces: list[Span | bytes]) -> Path:
    """Write ``dest`` from byte ranges of ``image`` and literal bytes, in order."""
    with image.open("rb", buffering=0) as src, dest.open("wb") as out:
        for piece in pieces:
            if isinstance(piece, bytes):
                out.write(piece)
                continue
            out.flush()
            left, off = piece.size, piece.offset
            while left:
                n = os.copy_file_range(src.fileno(), out.fileno(), left, off)
                assert n > 0, f"{image}: short copy at {off}"
                left, off = left - n, off + n
    return dest


# --- xl dump-core: the Xen ELF core format -----------------------------------------------


@dataclass(frozen=True)
class XenCore:
    """What ``xl dump-core`` wrote: the guest pfn of each page, in ``.xen_pages`` order."""

    path: Path
    pfns: list[int]
    pages_offset: int


def read_xen_core(path: Path) -> XenCore:
    """Parse the section table of a Xen ELF core (xc_domain_dumpcore, ELF64 little-endian).

    PV cores carry ``.xen_p2m`` ({pfn, gmfn} u64 pairs), auto-translated (HVM) ones
    ``.xen_pfn`` (u64 pfns); either lists the pages of ``.xen_pages`` in order.
    """
    import struct

    with path.open("rb") as f:
        ehdr = f.read(64)
        assert ehdr[:4] == b"\x7fELF" and ehdr[4] == 2 and ehdr[5] == 1, f"{path}: not ELF64 LE"
        shoff, = struct.unpack_from("<Q", ehdr, 0x28)  # fmt: skip
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ehdr, 0x3A)
        f.seek(shoff)
        table = f.read(shentsize * shnum)
        sections = [struct.unpack_from("<IIQQQQIIQQ", table, i * shentsize) for i in range(shnum)]
        str_off, str_size = sections[shstrndx][4], sections[shstrndx][5]
        f.seek(str_off)
        strtab = f.read(str_size)

        def name(sec: tuple[int, ...]) -> str:
            return strtab[sec[0] : strtab.index(b"\0", sec[0])].decode()

        by_name = {name(s): (s[4], s[5]) for s in sections}
        if ".xen_p2m" in by_name:
            off, size = by_name[".xen_p2m"]
            f.seek(off)
            raw = f.read(size)
            pfns = [struct.unpack_from("<Q", raw, i)[0] for i in range(0, size, 16)]
        else:
            off, size = by_name[".xen_pfn"]
            f.seek(off)
            raw = f.read(size)
            pfns = list(struct.unpack(f"<{size // 8}Q", raw))
    pages_off, pages_size = by_name[".xen_pages"]
    assert pages_size == len(pfns) * 4096, (pages_size, len(pfns))
    return XenCore(path, pfns, pages_off)


def hvm_guest_kernel() -> Path:
    """The tiny HVM guest's multiboot kernel (``guest/hvm-tick.S``), built by run-vm.sh."""
    override = os.environ.get("XLPY_HVM_GUEST_KERNEL")
    path = Path(override) if override else HVM_TICK_KERNEL
    if not path.is_file():
        raise Dom0Error(
            f"HVM guest kernel {path} not found: integration/vm/run-vm.sh builds it from "
            f"{HVM_TICK_SOURCE.name}; set XLPY_HVM_GUEST_KERNEL to use another"
        )
    return path


@dataclass
class HVMGuest(PVGuest):
    """A tiny HVM guest: ``guest/hvm-tick.S``, a multiboot kernel that prints ``GUEST-UP``
    and a ``GUEST-TICK n`` a second on COM1, loaded by qemu-xen and SeaBIOS (no disk, no
    network, no display; 32 MiB, the smallest size that leaves room for hvmloader's and
    SeaBIOS's tables with margin).

    Its serial port goes to an append-mode file in the console log directory: a restored
    qemu appends there too, so ticks run on in one log.  It prints its first tick within
    seconds of ``xl create`` even under TCG, where a Linux HVM guest took minutes.
    """

    memory_mb: int = 32

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = self.workdir / f"{self.name}.cfg"
        serial = f"file,id=xlpyser,path={self.console_log},append=on"
        self.config.write_text(
            f'name = "{self.name}"\ntype = "hvm"\ndevice_model_version = "qemu-xen"\n'
            f'kernel = "{hvm_guest_kernel()}"\n'
            f"memory = {self.memory_mb}\nmaxmem = {self.memory_mb}\nvcpus = 1\n"
            'vnc = 0\nsdl = 0\nnographic = 1\nvga = "none"\nusb = 0\nboot = "c"\n'
            'on_crash = "preserve"\n'
            f'device_model_args_hvm = [ "-chardev", "{serial}", "-serial", "chardev:xlpyser" ]\n'
        )

    @property
    def console_log(self) -> Path:
        # Beside xenconsoled's logs, so that the harness brings it back with them.
        return console_log_dir() / f"hvm-{self.name}-serial.log"


def pages_differing(core: Path, sim_memory: Path) -> tuple[int, list[int]]:
    """(pages in the dump, pfns whose page differs from the simulated domain's ``memory``).

    ``sim_memory`` is xlpy's simulated domain memory file (pfn ``p`` at ``p * 4096``).
    """
    import numpy as np

    dump = read_xen_core(core)
    all_pfns = np.array(dump.pfns, dtype=np.uint64)
    # xc_domain_dumpcore pads with INVALID_PFN (~0) entries for pages it could not map.
    rows = np.flatnonzero(all_pfns != np.uint64(2**64 - 1))
    pfns = all_pfns[rows].astype(np.int64)
    shape = (len(all_pfns), 4096)
    real = np.memmap(core, dtype=np.uint8, mode="r", offset=dump.pages_offset, shape=shape)
    simulated = np.memmap(sim_memory, dtype=np.uint8, mode="r").reshape(-1, 4096)
    differ: list[int] = []
    try:
        for i in range(0, len(pfns), 4096):
            chunk = pfns[i : i + 4096]
            inside = chunk < len(simulated)
            # A pfn beyond the simulated domain's memory was never sent: it reads as zeros.
            sim_rows = np.zeros((len(chunk), 4096), dtype=np.uint8)
            sim_rows[inside] = simulated[chunk[inside]]
            bad = (real[rows[i : i + 4096]] != sim_rows).any(axis=1)
            differ += chunk[bad].tolist()
    finally:
        # Unmap now: a failing test's traceback would keep both files' tmpfs space.
        del real, simulated
    return len(pfns), differ


# --- a paused domain's pages, read in place (libxenforeignmemory) ---------------------------


def stream_data_pfns(image: Path) -> list[int]:
    """Every pfn whose page data a v2 image carries (its libxc PAGE_DATA records), sorted."""
    import numpy as np

    from xlpy.stream.source import ByteSource
    from xlpy.stream.v2.reader import V2Reader
    from xlpy.stream.v2.records import LIBXC, PageData, V2Record, carries_data

    pfns: set[int] = set()
    with image.open("rb", buffering=0) as f:
        for el in V2Reader(ByteSource(f.fileno())).elements():
            if isinstance(el, V2Record) and el.layer == LIBXC:
                body = el.decode()
                if isinstance(body, PageData):
                    with_data = body.pfns[carries_data(body.type_nibbles)]
                    pfns.update(with_data.astype(np.int64).tolist())
    return sorted(pfns)


def pages_differing_in_domain(
    domid: int, pfns: list[int], sim_memory: Path, batch: int = 1024
) -> tuple[int, list[int]]:
    """(pages compared, pfns whose page in domain ``domid`` differs from ``sim_memory``).

    The pages are mapped read-only from the (paused, auto-translated: HVM) domain with
    libxenforeignmemory, ``batch`` at a time.  ``xl dump-core`` would give the same bytes
    but walks every gfn below the domain's max_gpfn (0xfefff for any HVM guest): about
    four and a half minutes under TCG against seconds for the stream's own pfns.
    """
    import ctypes

    import numpy as np

    lib = ctypes.CDLL("libxenforeignmemory.so.1", use_errno=True)
    lib.xenforeignmemory_open.restype = ctypes.c_void_p
    lib.xenforeignmemory_open.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    lib.xenforeignmemory_map.restype = ctypes.c_void_p
    lib.xenforeignmemory_map.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_size_t,
        ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_int),
    ]  # fmt: skip
    lib.xenforeignmemory_unmap.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    lib.xenforeignmemory_close.argtypes = [ctypes.c_void_p]
    fmem = lib.xenforeignmemory_open(None, 0)
    if not fmem:
        raise Dom0Error(f"xenforeignmemory_open: {os.strerror(ctypes.get_errno())}")
    simulated = np.memmap(sim_memory, dtype=np.uint8, mode="r").reshape(-1, 4096)
    differ: list[int] = []
    try:
        for i in range(0, len(pfns), batch):
            chunk = pfns[i : i + batch]
            arr = (ctypes.c_uint64 * len(chunk))(*chunk)
            errs = (ctypes.c_int * len(chunk))()
            addr = lib.xenforeignmemory_map(fmem, domid, 1, len(chunk), arr, errs)  # PROT_READ
            if not addr:
                raise Dom0Error(
                    f"xenforeignmemory_map of d{domid} pfns {chunk[0]:#x}..{chunk[-1]:#x}: "
                    f"{os.strerror(ctypes.get_errno())}"
                )
            try:
                failed = [(p, e) for p, e in zip(chunk, errs, strict=True) if e]
                if failed:
                    raise Dom0Error(f"d{domid}: pages not mappable (pfn, -errno): {failed[:10]}")
                real = np.frombuffer(ctypes.string_at(addr, len(chunk) * 4096), dtype=np.uint8)
                idx = np.array(chunk, dtype=np.int64)
                inside = idx < len(simulated)
                sim_rows = np.zeros((len(chunk), 4096), dtype=np.uint8)
                sim_rows[inside] = simulated[idx[inside]]
                bad = (real.reshape(-1, 4096) != sim_rows).any(axis=1)
                differ += idx[bad].tolist()
            finally:
                lib.xenforeignmemory_unmap(fmem, addr, len(chunk))
    finally:
        del simulated
        lib.xenforeignmemory_close(fmem)
    return len(pfns), differ
