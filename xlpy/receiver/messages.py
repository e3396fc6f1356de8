"""libxc's restore messages, rendered as the stdio logger prints them.

``ERROR(fmt, ...)`` becomes ``xc: error: <msg>: Internal error``; ``PERROR`` appends
``" (%d = %s)"`` with the Linux errno and its ``strerror`` before the suffix; a trailing
``\\n`` in a format is stripped by ``xc_reportv`` (legacy-stream.md §10.6, §11).  The 4.0.x
receiver logs its state-machine errors without errno suffix and prints the heartbeat
timeout straight to stderr (§10.7); having no xentoollog, it renders each error as
``ERROR Internal error: <msg>`` (``4.0.4:tools/libxc/xc_private.c`` L28-31,
``xc_default_error_handler``; the spec's §10.6 form is 4.1+ only).  Format strings are
verbatim from ``4.3.1:tools/libxc/xc_domain_restore.c`` (§11) so a test can grep for them.
"""

from __future__ import annotations

from xlpy.receiver.generations import Generation

# Linux errno values libxc's restore path can leave behind (asm-generic/errno*.h).
ESUCCESS = 0
EIO = 5
ENOMEM = 12
EINVAL = 22
EMSGSIZE = 90
ETIMEDOUT = 110

#: ``xc_error_code_to_desc(XC_INTERNAL_ERROR)``, the code every ERROR/PERROR sets.
INTERNAL_ERROR = "Internal error"

#: glibc's strerror() texts, fixed so the rendering does not depend on the host.
STRERROR = {
    ESUCCESS: "Success",
    EIO: "Input/output error",
    ENOMEM: "Cannot allocate memory",
    EINVAL: "Invalid argument",
    EMSGSIZE: "Message too long",
    ETIMEDOUT: "Connection timed out",
}

# --- the state machine (§11) ----------------------------------------------------------
SELECT_TIMEOUT = "{fn} failed (select returned {rc})"
ZERO_LENGTH_READ = "0-length read"
READ_FAILED = "{fn} failed (read rc: {rc}, errno: {errno})"
READING_BATCH_SIZE = "Error when reading batch size"
MAX_BATCH_SIZE = "Max batch size exceeded ({n}). Giving up."
READING_BATCH = "Error when reading batch"
BUFFERING_TAIL = "error buffering image tail"
BUFFERING_BATCH_FINISHING = "error when buffering batch, finishing"
BUFFERING_TAIL_FINISHING = "error buffering image tail, finishing"
READ_P2M_SIZE = "read: p2m_size"
MEMORY_ALLOC = "memory alloc failed"

# --- chunk payloads (§5, §11) ------------------------------------------------------------
READING_MAX_VCPU_ID = "Error when reading max_vcpu_id"
HVM_PARAM_READ = {
    -3: "error read the address of the EPT identity map",
    -4: "error read the address of the vm86 TSS",
    -8: "error read the address of the console pfn",
    -10: "error read the acpi ioport location",
    -11: "error read the viridian flag",
    -14: "error read the generation id buffer location",
    -15: "error read the paging ring pfn",
    -16: "error read the access ring pfn",
    -17: "error read the sharing ring pfn",
    # 4.5.0 (434ae6517a) wording.
    -19: "error read the ioreq server gmfn",
    -20: "error read the num ioreq server pages",
}
TMEM = "error reading/restoring tmem"
TMEM_EXTRA = "error reading/restoring tmem extra"
TSC_INFO = "error reading/restoring tsc info"
TOOLSTACK_SIZE = "error read toolstack id size"
TOOLSTACK_READ = "error read toolstack id"
COMPBUF_SIZE = "Error when reading compbuf_size"
COMPBUF_ALLOC = "Could not (re)allocate compression buffer"
COMPBUF_READ = "Error when reading compression buffer"
REGION_PFN_TYPES = "Error when reading region pfn types"
READING_PAGES = "Error when reading pages"

# --- header (§3, §11) -------------------------------------------------------------------
EXT_SIGNATURE = "read extended-info signature failed"
EXT_SIZE = "read extended-info size failed"
EXT_CHUNK_SIGNATURE = "read extended-info chunk signature failed"
EXT_CONTEXT_SIZE = "bad extended-info context size {n}"
EXT_VCPU_CONTEXT = "read extended-info vcpu context failed"
EXT_DISCARD = "read-and-discard extended-info chunk bytes failed"
P2M_FL_FIRST = "read first entry of p2m_frame_list failed"
P2M_FL = "read p2m_frame_list failed"

# --- tails (§7, §8.1, §11) ----------------------------------------------------------------
HVM_MAGIC_PFNS = "Error reading magic PFNs"
HVM_PARAMS_SIZE = "Error reading HVM params size"
HVM_PARAMS = "Error reading HVM params"
QEMU_SIGNATURE_READ = "Error reading QEMU signature"
QEMU_SIGNATURE_BAD = "Invalid QEMU signature: {sig}"
QEMU_DATA = "Error reading QEMU data"
QEMU_MAGIC = "Invalid QEMU magic: 0x{magic:08x}"
QEMU_LENGTH = "Error reading QEMU header length"
QEMU_STATE = "Error reading QEMU state"
PV_PFN_COUNT = "Error when reading pfn count"
PV_PFNTAB = "Error when reading pfntab"
PV_CTXT = "Error when reading ctxt"
PV_SHARED_INFO = "Error when reading shared info page"

# --- applying pages, end of body, finish (§4.3, §5, §11) -----------------------------------
PFN_OUT_OF_RANGE = "pfn out of range"
UNCOMPRESS = "Failed to uncompress page (pfn={pfn:x})\n"
BOGUS_PAGE_TYPE = "Bogus page type {type:x} page table is out of range: i={i} p2m_size={p2m_size}"
GENID_FRAME_BAD = "generation id buffer frame is bad"
ACPI_IOPORT = "Error, unknow acpi ioport location ({v})"
IOREQ_INCONSISTENT = "Inconsistent IOREQ Server settings (nr={nr:x}, pfn={pfn:x})"
P2M_FRAME_BAD = "PFN-to-MFN frame number {i} ({pfn:#x}) is bad"
# PV finish, per vcpu (L2021-2109), in libxc's order.
SUSPEND_RECORD_BAD = "Suspend record frame number is bad"
SUSPEND_XENSTORE_BAD = "Suspend record xenstore frame number is bad"
SUSPEND_CONSOLE_BAD = "Suspend record console frame number is bad"
GDT_COUNT = "GDT entry count out of range"
GDT_FRAME_BAD = "GDT frame number {j} ({pfn:#x}) is bad"
PT_BASE_RANGE = "{user}PT base is bad: pfn={pfn} p2m_size={p2m_size}"
PT_BASE_TYPE = "{user}PT base is bad. pfn={pfn} nr={p2m_size} type={type:08x} {want:08x}"
TOOLSTACK_NO_CALLBACK = "toolstack data available but no callback provided\n"

# --- migration v2 (4.17 ``xg_sr_restore.c``) ---------------------------------------------
CHECKPOINT_IN_PLAIN = "Found checkpoint in non-checkpointed stream"


class XcLog:
    """libxc's error log as one receiver generation's stdio logger renders it.

    ``errno`` models the C ``errno`` that ``PERROR`` reads: the state machine sets it
    where libxc's read or check would have set it.
    """

    def __init__(self, gen: Generation) -> None:
        self.gen = gen
        self.lines: list[str] = []
        self.errno = ESUCCESS

    def error(self, fmt: str, **args: object) -> None:
        """``ERROR(fmt, ...)``."""
        # 4.1+'s xc_reportv strips a trailing newline; 4.0's xc_set_error keeps it, so
        # its line ends there and an empty line (no error line) follows.
        msg = (fmt.format(**args) if args else fmt).rstrip("\n")
        if self.gen.xentoollog:
            self.lines.append(f"xc: error: {msg}: {INTERNAL_ERROR}")
        else:
            self.lines.append(f"ERROR {INTERNAL_ERROR}: {msg}")

    def perror(self, fmt: str, **args: object) -> None:
        """``PERROR(fmt, ...)``: the message plus ``" (errno = strerror)"``.

        The 4.0.x state machine used plain errors for these (§11), so no suffix there.
        """
        msg = (fmt.format(**args) if args else fmt).rstrip("\n")
        if not self.gen.legacy_logging:
            text = STRERROR.get(self.errno, f"Unknown error {self.errno}")
            msg = f"{msg} ({self.errno} = {text})"
        self.error(msg)

    def stderr(self, text: str) -> None:
        """A line libxc printed to stderr itself, outside the logger (4.0.x timeout)."""
        self.lines.append(text)

    # -- the two ways rdexact fails (§10.2) --------------------------------------------

    def read_timeout(self) -> None:
        """No byte within the heartbeat: select() returned 0, errno ETIMEDOUT."""
        line = SELECT_TIMEOUT.format(fn=self.gen.rdexact_name, rc=0)
        if self.gen.legacy_logging:
            self.stderr(line)
        else:
            self.error(line)
        self.errno = ETIMEDOUT

    def read_eof(self) -> None:
        """read() returned 0: two lines (silent on 4.0.x), errno 0."""
        if not self.gen.legacy_logging:
            self.error(ZERO_LENGTH_READ)
            self.error(READ_FAILED.format(fn=self.gen.rdexact_name, rc=0, errno=0))
        self.errno = ESUCCESS
