"""Our declarations line up with Debian's real libxenguest.so.4.17 (abi.md §5b).

Without a hypervisor, libxenguest's own ``assert()``s still run before the first
hypercall, so each probe calls ``xc_domain_restore`` on an ``XC_OPENFLAG_DUMMY`` handle
in a child process and reads how the child died: an abort names the failed assertion,
a segfault means every assert passed (and the dummy handle's first hypercall crashed).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.helpers.paths import REPO
from xlpy.binding.generations import COLO, REQUIRED_CALLBACKS

# Raw binding on purpose: the safe API refuses exactly these calls before C.
PROBE = r"""
import os, sys
from xlpy.binding.detect import detect
from xlpy.binding.loader import build_ffi
layout, stream_type, fill = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
abi = detect()
assert abi.generation.name == "4.14-4.21", abi
ffi = build_ffi(abi.generation.name)
lib = ffi.dlopen(abi.library)
xch = lib.xc_interface_open(ffi.NULL, ffi.NULL, lib.XC_OPENFLAG_DUMMY)
assert xch != ffi.NULL
lffi = build_ffi(layout)
cbs = lffi.new("struct restore_callbacks *")
keep = []
for name in filter(None, fill):
    cb = lffi.callback(lffi.typeof(getattr(cbs, name)), lambda *a: 1)
    keep.append(cb)
    setattr(cbs, name, cb)
r, w = os.pipe()
out = ffi.new("unsigned long[2]")
as_declared = ffi.cast("struct restore_callbacks *", lffi.cast("uintptr_t", cbs))
rc = lib.xc_domain_restore(xch, r, 1, 0, out, 0, 0, out + 1, 0, stream_type, as_declared, -1)
print("returned", rc)
"""


def _probe(env: dict[str, str], layout: str, stream_type: int, *fill: str) -> tuple[int, str]:
    env = dict(env, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, layout, str(stream_type), ",".join(fill)],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    return proc.returncode, proc.stderr.decode(errors="replace")


pytestmark = pytest.mark.xen_tools


def test_bad_stream_type_aborts_in_libxenguest(xen_tools: object) -> None:
    rc, err = _probe(xen_tools.env, "4.14-4.21", 3)  # type: ignore[attr-defined]
    assert rc == -signal.SIGABRT, err
    assert "Bad stream_type" in err


def test_remus_checkpoint_passes_assert_with_4_14_layout(xen_tools: object) -> None:
    rc, err = _probe(xen_tools.env, "4.14-4.21", 1, "checkpoint")  # type: ignore[attr-defined]
    assert "Assertion" not in err
    assert rc == -signal.SIGSEGV, err  # past the asserts: the dummy handle's hypercall


def test_remus_checkpoint_fails_assert_with_4_7_layout(xen_tools: object) -> None:
    # In the 4.7-4.13 layout .checkpoint sits where 4.14 has .postcopy.
    rc, err = _probe(xen_tools.env, "4.10-4.13", 1, "checkpoint")  # type: ignore[attr-defined]
    assert rc == -signal.SIGABRT, err
    assert "checkpoint" in err and "Assertion" in err


def test_colo_without_callbacks_aborts(xen_tools: object) -> None:
    rc, err = _probe(xen_tools.env, "4.14-4.21", 2)  # type: ignore[attr-defined]
    assert rc == -signal.SIGABRT, err
    assert "Assertion" in err


def test_colo_needs_checkpoint_too(xen_tools: object) -> None:
    # The COLO case falls through to REMUS's: four callbacks are not enough.
    colo = ("suspend", "postcopy", "wait_checkpoint", "restore_results")
    rc, err = _probe(xen_tools.env, "4.14-4.21", 2, *colo)  # type: ignore[attr-defined]
    assert rc == -signal.SIGABRT, err
    assert "callbacks->checkpoint" in err


def test_colo_with_the_required_callbacks_passes_asserts(xen_tools: object) -> None:
    names = sorted(REQUIRED_CALLBACKS[COLO])
    rc, err = _probe(xen_tools.env, "4.14-4.21", 2, *names)  # type: ignore[attr-defined]
    assert "Assertion" not in err
    assert rc == -signal.SIGSEGV, err


@pytest.mark.parametrize("out_of_process", [True, False], ids=["helper", "in-process"])
def test_restore_libxc_without_hypervisor_is_xen_unavailable(
    xen_tools: object, monkeypatch: pytest.MonkeyPatch, out_of_process: bool
) -> None:
    from xlpy.binding import RestoreArgs, restore_libxc
    from xlpy.binding.detect import ENV_GENERATION, ENV_LIBRARY
    from xlpy.errors import XenUnavailable

    lib_dir = xen_tools.lib_dirs[0]  # type: ignore[attr-defined]
    monkeypatch.setenv(ENV_LIBRARY, str(lib_dir / "libxenguest.so.4.17"))
    monkeypatch.delenv(ENV_GENERATION, raising=False)
    r, w = os.pipe()
    try:
        with pytest.raises(XenUnavailable, match="/dev/xen/privcmd") as info:
            restore_libxc(RestoreArgs(io_fd=r, dom=1), out_of_process=out_of_process)
    finally:
        os.close(r)
        os.close(w)
    assert "xc_interface_open failed (ENOENT" in str(info.value)


@pytest.mark.parametrize("stream_type", [3, 1, 2])
def test_real_library_never_sees_what_it_would_assert_on(
    xen_tools: object, monkeypatch: pytest.MonkeyPatch, stream_type: int
) -> None:
    # In-process on purpose: an abort here would kill pytest itself.
    from xlpy.binding import RestoreArgs, restore_libxc
    from xlpy.binding.detect import ENV_LIBRARY
    from xlpy.errors import UsageError

    lib_dir = xen_tools.lib_dirs[0]  # type: ignore[attr-defined]
    monkeypatch.setenv(ENV_LIBRARY, str(lib_dir / "libxenguest.so.4.17"))
    with pytest.raises(UsageError):
        restore_libxc(RestoreArgs(io_fd=0, dom=1, stream_type=stream_type), out_of_process=False)
