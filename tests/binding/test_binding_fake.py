"""The binding's plumbing, end to end, against a compiled stand-in libxenguest.so.4.17.

No hypervisor calls callbacks, so a tiny C library with the 4.14-4.21 prototype plays
libxc: it reads a script from ``io_fd`` (one byte per step) and calls back, fails,
asserts or hangs on command.  Every test runs in-process and out-of-process: results,
libxc errors and callback traffic (including a callback's exception) must come out the
same; an assert or hang must only kill the helper.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from xlpy.binding import RestoreArgs, detect, restore_libxc
from xlpy.binding.detect import ENV_LIBRARY
from xlpy.binding.generations import COLO, PLAIN, REMUS
from xlpy.errors import LibxcCrashed, UsageError, XenError, XenUnavailable

FAKE_C = r"""
/*
 * A stand-in libxenguest.so.4.17 for tests without a hypervisor: the 4.14-4.21
 * xc_domain_restore prototype, driven by a script read from io_fd, one byte per step:
 *   s static_data_done(3)   c checkpoint()   r restore_results(0x1234, 0x5678)
 *   e fail with a libxc error   a assert()   h hang
 * On success the out-params encode the arguments so tests see which slot got what.
 */
#include <assert.h>
#include <stdio.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct { int code; char message[1024]; } xc_error;
typedef struct xc_interface_core { xc_error err; } xc_interface;
struct restore_callbacks {
    int (*static_data_done)(unsigned int missing, void *data);
    int (*suspend)(void *data);
    int (*postcopy)(void *data);
    int (*checkpoint)(void *data);
    int (*wait_checkpoint)(void *data);
    void (*restore_results)(unsigned long store_gfn, unsigned long console_gfn, void *data);
    void *data;
};

xc_interface *xc_interface_open(void *logger, void *dombuild_logger, unsigned flags)
{
    if (getenv("FAKE_NO_XEN")) { errno = ENOENT; return NULL; }
    return calloc(1, sizeof(xc_interface));
}
int xc_interface_close(xc_interface *xch) { free(xch); return 0; }
const xc_error *xc_get_last_error(xc_interface *xch) { return &xch->err; }
void xc_clear_last_error(xc_interface *xch) { memset(&xch->err, 0, sizeof(xch->err)); }
void *xtl_createlogger_stdiostream(void *f, int level, unsigned flags) { return 0; }
void xtl_logger_destroy(void *logger) { }

static int fail(xc_interface *xch, int code, int err, const char *msg)
{
    xch->err.code = code;
    strcpy(xch->err.message, msg);
    errno = err;
    return -1;
}

int xc_domain_restore(xc_interface *xch, int io_fd, uint32_t dom, unsigned int store_evtchn,
                      unsigned long *store_mfn, uint32_t store_domid,
                      unsigned int console_evtchn, unsigned long *console_mfn,
                      uint32_t console_domid, unsigned int stream_type,
                      struct restore_callbacks *callbacks, int send_back_fd)
{
    char c;
    int rc;
    while (read(io_fd, &c, 1) == 1) {
        switch (c) {
        case 's':
            if (callbacks->static_data_done(3, callbacks->data))
                return fail(xch, 1, EIO, "static_data_done failed");
            break;
        case 'c':
            rc = callbacks->checkpoint(callbacks->data);
            if (rc == 0)
                return fail(xch, 1, EIO, "checkpoint failed");
            if (rc == 2)
                goto done;
            break;
        case 'r':
            callbacks->restore_results(0x1234, 0x5678, callbacks->data);
            break;
        case 'e':
            return fail(xch, 3, EINVAL, "fake: bad page");
        case 'E':  /* as 4.17 does: the cause is logged, the last error is a summary */
            fprintf(stderr, "xc: error: Found checkpoint in non-checkpointed stream: "
                            "Internal error\n");
            fprintf(stderr, "xc: info: unrelated\n");
            fprintf(stderr, "xc: error: Restore failed (0 = Success): Internal error\n");
            return fail(xch, 1, 0, "Restore failed (0 = Success)");
        case 'a':
            assert(!"fake assert");
            break;
        case 'h':
            pause();
            break;
        }
    }
done:
    *store_mfn = ((unsigned long)dom << 32) | (store_evtchn << 16) | store_domid;
    *console_mfn = ((unsigned long)stream_type << 48)
                   | ((unsigned long)(send_back_fd & 0xffff) << 32)
                   | (console_evtchn << 16) | console_domid;
    return 0;
}
"""


@pytest.fixture(scope="module")
def fake_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("NO C COMPILER: cannot build the stand-in libxenguest")
    d = tmp_path_factory.mktemp("fakexen")
    (d / "fake.c").write_text(FAKE_C)
    lib = d / "libxenguest.so.4.17"
    subprocess.run(
        [
            cc,
            "-shared",
            "-fPIC",
            "-Wl,-soname,libxenguest.so.4.17",
            "-o",
            str(lib),
            str(d / "fake.c"),
        ],
        check=True,
    )
    return lib


@pytest.fixture
def fake_env(fake_lib: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(ENV_LIBRARY, str(fake_lib))
    monkeypatch.delenv("XLPY_XENGUEST_GENERATION", raising=False)
    monkeypatch.delenv("FAKE_NO_XEN", raising=False)
    return fake_lib


@pytest.fixture(params=[True, False], ids=["helper", "in-process"])
def out_of_process(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def _script(data: bytes) -> int:
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    return r


def _restore(script: bytes, out_of_process: bool, callbacks=None, **kw):  # type: ignore[no-untyped-def]
    fd = _script(script)
    try:
        request = RestoreArgs(io_fd=fd, **{"dom": 7, **kw})
        return restore_libxc(request, callbacks, out_of_process=out_of_process, timeout=20)
    finally:
        os.close(fd)


def test_detects_the_stand_in_as_4_14_generation(fake_env: Path) -> None:
    abi = detect()
    assert abi.soname == "libxenguest.so.4.17"
    assert abi.generation.name == "4.14-4.21"
    assert abi.symbol_version is None  # the stand-in has no version script


def test_arguments_land_in_their_slots(fake_env: Path, out_of_process: bool) -> None:
    r, w = os.pipe()
    try:
        cbs = {"checkpoint": lambda: 2}
        result = _restore(b"c", out_of_process, cbs, store_evtchn=3, store_domid=1,
                          console_evtchn=4, console_domid=2, stream_type=REMUS,
                          send_back_fd=w)  # fmt: skip
    finally:
        os.close(r)
        os.close(w)
    assert result.store_mfn == (7 << 32) | (3 << 16) | 1
    assert result.console_mfn == (REMUS << 48) | (w << 32) | (4 << 16) | 2
    assert result.generation == "4.14-4.21"
    assert result.vm_generationid_addr is None


def test_callbacks_get_their_arguments(fake_env: Path, out_of_process: bool) -> None:
    calls: list[tuple[object, ...]] = []
    cbs = {
        "static_data_done": lambda missing: calls.append(("sdd", missing)) or 0,
        "checkpoint": lambda: calls.append(("checkpoint",)) or 1,
        "restore_results": lambda store, console: calls.append(("results", store, console)),
    }
    result = _restore(b"scrc", out_of_process, cbs, stream_type=REMUS)
    assert calls == [("sdd", 3), ("checkpoint",), ("results", 0x1234, 0x5678), ("checkpoint",)]
    assert result.store_mfn >> 32 == 7


class Boom(Exception):
    pass


def test_callback_exception_is_reraised_after_restore(fake_env: Path, out_of_process: bool) -> None:
    seen: list[str] = []

    def checkpoint() -> int:
        seen.append("checkpoint")
        raise Boom("from the toolstack")

    with pytest.raises(Boom, match="from the toolstack") as info:
        _restore(b"cc", out_of_process, {"checkpoint": checkpoint}, stream_type=REMUS)
    assert seen == ["checkpoint"]  # libxc got XGR_CHECKPOINT_ERROR and stopped
    cause = info.value.__cause__
    assert isinstance(cause, XenError) and cause.message == "checkpoint failed"


def test_exception_in_void_callback_is_reraised(fake_env: Path, out_of_process: bool) -> None:
    def results(store: int, console: int) -> None:
        raise Boom(f"{store:#x}")

    with pytest.raises(Boom, match="0x1234"):
        _restore(b"r", out_of_process, {"restore_results": results})


def test_non_int_return_is_a_type_error(fake_env: Path, out_of_process: bool) -> None:
    with pytest.raises(TypeError, match="static_data_done returned None"):
        _restore(b"s", out_of_process, {"static_data_done": lambda missing: None})


def test_libxc_error_is_copied(fake_env: Path, out_of_process: bool) -> None:
    with pytest.raises(XenError) as info:
        _restore(b"e", out_of_process)
    assert (info.value.code, info.value.xc_errno) == (3, errno.EINVAL)
    assert info.value.message == "fake: bad page"


def test_out_of_process_xen_error_carries_what_libxc_logged_before_it(fake_env: Path) -> None:
    with pytest.raises(XenError) as info:
        _restore(b"E", True)
    assert info.value.message == "Restore failed (0 = Success)"
    assert info.value.log == (
        "xc: error: Found checkpoint in non-checkpointed stream: Internal error",
        "xc: error: Restore failed (0 = Success): Internal error",
    )
    assert "Found checkpoint in non-checkpointed stream" in str(info.value)


def test_no_hypervisor_is_xen_unavailable(
    fake_env: Path, out_of_process: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_NO_XEN", "1")
    with pytest.raises(XenUnavailable, match="/dev/xen/privcmd") as info:
        _restore(b"", out_of_process)
    assert "ENOENT" in str(info.value)


def test_assert_kills_only_the_helper(fake_env: Path) -> None:
    with pytest.raises(LibxcCrashed) as info:
        _restore(b"a", True)
    assert info.value.signal == signal.SIGABRT
    assert "fake assert" in str(info.value)


def test_hang_is_killed_after_timeout(fake_env: Path) -> None:
    fd = _script(b"h")
    try:
        with pytest.raises(LibxcCrashed, match="hung"):
            restore_libxc(RestoreArgs(io_fd=fd, dom=1), timeout=1)
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("stream_type", "callbacks", "match"),
    [
        (3, {}, "bad stream type 3"),
        (REMUS, {}, "needs the callbacks checkpoint"),
        (COLO, {"checkpoint": lambda: 1}, "needs the callbacks postcopy"),
        (PLAIN, {"toolstack_restore": lambda d, b: 0}, "no restore callback toolstack_restore"),
    ],
)
def test_refused_before_entering_c(
    fake_env: Path, out_of_process: bool, stream_type: int, callbacks: dict, match: str
) -> None:
    # The stand-in would happily run these; libxenguest would abort.
    with pytest.raises(UsageError, match=match):
        _restore(b"", out_of_process, callbacks, stream_type=stream_type)
