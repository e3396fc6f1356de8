"""The ABI generations of ``xc_domain_restore`` / ``struct restore_callbacks`` (abi.md §1-§2).

Pure data: which declaration files describe a generation, in which order they are
loaded, the C parameter order, what the stream-type slot can carry, and the callback
slots.  Nothing here needs cffi or a library, so detection and the toolstack rules can
use it on any machine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from xlpy.errors import UsageError
from xlpy.operation import StreamType

# libxc's stream-type values (``xc_stream_type_t``; ``XC_MIG_STREAM_*`` in 4.7-4.13).
PLAIN, REMUS, COLO = StreamType.PLAIN, StreamType.REMUS, StreamType.COLO

#: What libxc treats as failure for each callback; returned to C when the Python
#: callable raises (``restore_results`` returns void, so it has none).
CALLBACK_ERROR_RETURN: Mapping[str, int | None] = {
    "static_data_done": -1,
    "suspend": 0,
    "postcopy": 0,
    "checkpoint": 0,  # XGR_CHECKPOINT_ERROR
    "wait_checkpoint": 0,
    "restore_results": None,
    "toolstack_restore": -1,
}

#: The callbacks libxenguest asserts on for each stream type (xg_sr_restore.c:883-901).
#: COLO falls through to the REMUS case, so it needs ``checkpoint`` too (shown by
#: tests/binding/test_binding_asserts.py against Debian's 4.17 binary).
REQUIRED_CALLBACKS: Mapping[StreamType, frozenset[str]] = {
    PLAIN: frozenset(),
    REMUS: frozenset({"checkpoint"}),
    COLO: frozenset({"suspend", "postcopy", "checkpoint", "wait_checkpoint", "restore_results"}),
}

_COMMON = "common.h"
_DOMIDS_16 = ("store_domid", "console_domid")

# Parameter lists, named as in the headers, without the handle (always first).
_P_4_0 = (
    "io_fd", "dom", "store_evtchn", "store_mfn", "console_evtchn", "console_mfn",
    "hvm", "pae", "superpages",
)  # fmt: skip
_P_4_2 = (
    "io_fd", "dom", "store_evtchn", "store_mfn", "store_domid", "console_evtchn",
    "console_mfn", "console_domid", "hvm", "pae", "superpages",
)  # fmt: skip
_P_4_10 = (
    "io_fd", "dom", "store_evtchn", "store_mfn", "store_domid", "console_evtchn",
    "console_mfn", "console_domid",
)  # fmt: skip
_P_4_4_TAIL = ("checkpointed_stream", "vm_generationid_addr", "callbacks")
_CB_4_7 = ("suspend", "postcopy", "checkpoint", "wait_checkpoint", "restore_results")


@dataclass(frozen=True, slots=True)
class Generation:
    """One ABI generation: every library in it takes the same C declarations."""

    name: str
    #: Xen releases in this generation, as ``major.minor`` (``major.minor.patch`` where a
    #: stable series is split, 4.3.1 vs 4.3.2).
    releases: tuple[str, ...]
    #: Declaration files, in load order (relative to the ``cdefs`` directory).
    cdefs: tuple[str, ...]
    #: ``xc_domain_restore`` parameters in C order.
    params: tuple[str, ...]
    #: Name of the stream-type parameter, or None where libxc has no such argument.
    stream_param: str | None = None
    #: ``struct restore_callbacks`` function slots in order (``data`` follows); empty
    #: where the struct does not exist (4.0, 4.1).
    callback_slots: tuple[str, ...] = ()
    #: Slots a release may actually set, where it differs from ``callback_slots``
    #: (4.5 and 4.6 share one slot with two meanings).
    release_callbacks: Mapping[str, frozenset[str]] = field(default_factory=dict)
    #: Parameters declared ``domid_t`` (16-bit) in this generation.
    domid16: tuple[str, ...] = ()
    #: ``struct restore_callbacks`` LP64 size and slot offsets, from abi.md §2.
    callbacks_size: int | None = None

    @property
    def stream_types(self) -> frozenset[StreamType]:
        """Stream types this generation can receive: COLO needs 4.7's ``stream_type`` enum
        (``checkpointed_stream``, or no argument at all, says plain or Remus only)."""
        if self.stream_param == "stream_type":
            return frozenset({PLAIN, REMUS, COLO})
        return frozenset({PLAIN, REMUS})

    @property
    def handle_is_fd(self) -> bool:
        """4.0 libxc handles are ints from ``xc_interface_open(void)``."""
        return self.params[0] == "xc_handle"

    def callbacks_for(self, release: str | None) -> frozenset[str]:
        """The callback slots a caller may fill on ``release`` of this generation."""
        if release is not None and release in self.release_callbacks:
            return self.release_callbacks[release]
        return frozenset(self.callback_slots)

    def cdef_paths(self) -> list[Path]:
        """The declaration files of this generation, in load order."""
        base = resources.files("xlpy") / "cdefs"
        return [Path(str(base / name)) for name in self.cdefs]

    def cdef_text(self) -> list[str]:
        """The declaration texts, in load order."""
        return [p.read_text(encoding="utf-8") for p in self.cdef_paths()]


def _layout(slots: tuple[str, ...]) -> int:
    return 8 * (len(slots) + 1)


GENERATIONS: tuple[Generation, ...] = (
    Generation(
        name="4.0",
        releases=("4.0",),
        cdefs=("4.0.h",),
        params=("xc_handle", *_P_4_0),
    ),
    Generation(
        name="4.1",
        releases=("4.1",),
        cdefs=(_COMMON, "4.1.h"),
        params=("xch", *_P_4_0),
    ),
    Generation(
        name="4.2-4.3.1",
        releases=("4.2", "4.3.0", "4.3.1"),
        cdefs=(_COMMON, "4.2-4.3.1.h"),
        params=("xch", *_P_4_2, "no_incr_generationid", "vm_generationid_addr", "callbacks"),
        callback_slots=("toolstack_restore",),
        domid16=_DOMIDS_16,
        callbacks_size=16,
    ),
    Generation(
        name="4.3.2-4.4",
        releases=("4.3.2", "4.3.3", "4.3.4", "4.4"),
        cdefs=(_COMMON, "4.3.2-4.4.h"),
        params=("xch", *_P_4_2, "no_incr_generationid", *_P_4_4_TAIL),
        stream_param="checkpointed_stream",
        callback_slots=("toolstack_restore",),
        domid16=_DOMIDS_16,
        callbacks_size=16,
    ),
    Generation(
        name="4.5-4.6",
        releases=("4.5", "4.6"),
        cdefs=(_COMMON, "4.5-4.6.h"),
        params=("xch", *_P_4_2, "checkpointed_stream", "callbacks"),
        stream_param="checkpointed_stream",
        callback_slots=("toolstack_restore", "checkpoint"),
        release_callbacks={
            "4.5": frozenset({"toolstack_restore"}),
            "4.6": frozenset({"checkpoint"}),
        },
        domid16=_DOMIDS_16,
        callbacks_size=16,
    ),
    Generation(
        name="4.7-4.9",
        releases=("4.7", "4.8", "4.9"),
        cdefs=(_COMMON, "4.7-4.9.h"),
        params=("xch", *_P_4_2, "stream_type", "callbacks", "send_back_fd"),
        stream_param="stream_type",
        callback_slots=_CB_4_7,
        domid16=_DOMIDS_16,
        callbacks_size=_layout(_CB_4_7),
    ),
    Generation(
        name="4.10-4.13",
        releases=("4.10", "4.11", "4.12", "4.13"),
        cdefs=(_COMMON, "4.10-4.13.h"),
        params=("xch", *_P_4_10, "hvm", "pae", "stream_type", "callbacks", "send_back_fd"),
        stream_param="stream_type",
        callback_slots=_CB_4_7,
        callbacks_size=_layout(_CB_4_7),
    ),
    Generation(
        name="4.14-4.21",
        releases=tuple(f"4.{n}" for n in range(14, 22)),
        cdefs=(_COMMON, "4.14-4.21.h"),
        params=("xch", *_P_4_10, "stream_type", "callbacks", "send_back_fd"),
        stream_param="stream_type",
        callback_slots=("static_data_done", *_CB_4_7),
        callbacks_size=_layout(("static_data_done", *_CB_4_7)),
    ),
    Generation(
        name="4.22",
        releases=("4.22",),
        cdefs=(_COMMON, "4.22.h"),
        params=("xch", *_P_4_10, "stream_type", "callbacks", "send_back_fd", "memflags"),
        stream_param="stream_type",
        callback_slots=("static_data_done", *_CB_4_7),
        callbacks_size=_layout(("static_data_done", *_CB_4_7)),
    ),
)

BY_NAME: Mapping[str, Generation] = {g.name: g for g in GENERATIONS}


def by_name(name: str) -> Generation:
    """The generation called ``name`` (e.g. ``"4.14-4.21"``), or one holding release ``name``."""
    if name in BY_NAME:
        return BY_NAME[name]
    for gen in GENERATIONS:
        if name in gen.releases:
            return gen
    known = ", ".join(BY_NAME)
    raise UsageError(f"unknown libxenguest ABI generation {name!r} (known: {known})")
