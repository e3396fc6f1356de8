"""xlpy.xend against stand-ins for Xen's ``xen.lowlevel.xc``/``xs`` (no hypervisor).

The stand-ins keep the bindings' call shapes (keyword names, the ``Error`` classes,
xenstore transactions) and record every call, so the tests check what a real dom0
would be asked to do and in which order.  The real thing runs in
``integration/test_dom0_restore_paths.py``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
import types
import uuid
from pathlib import Path
from typing import Any

import pytest

from xlpy import xend
from xlpy.backends import RestoreResult
from xlpy.errors import StreamMalformed, StreamTruncated, UsageError, XenError, XenUnavailable
from xlpy.operation import decide
from xlpy.stream import xlheader
from xlpy.stream.legacy.format import XL_MAGIC, XL_MANDATORY_FLAG_JSON, XL_MANDATORY_FLAG_STREAMv2
from xlpy.stream.v2 import format as F

DOMID = 7
UUID = uuid.UUID("12345678-9abc-def0-1234-56789abcdef0")


class FakeXcError(RuntimeError):
    pass


class FakeXsError(RuntimeError):
    pass


class FakeXc:
    def __init__(self, fail: str | None = None) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.fail = fail
        self.ports = iter(range(3, 100))

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kw: Any) -> Any:
            self.calls.append((name, args, kw))
            if name == self.fail:
                raise FakeXcError(22, "Invalid argument", f"{name} refused")
            if name == "domain_create":
                return DOMID
            if name == "evtchn_alloc_unbound":
                return next(self.ports)
            return 0

        return call

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


class FakeXs:
    def __init__(self, eagain: int = 0) -> None:
        self.store: dict[str, str] = {}
        self.perms: dict[str, list[dict[str, Any]]] = {}
        self.log: list[str] = []
        self.eagain = eagain
        self.pending: dict[str, str] = {}

    def get_domain_path(self, domid: int) -> str:
        return f"/local/domain/{domid}"

    def transaction_start(self) -> str:
        self.pending = {}
        return "1"

    def transaction_end(self, t: str, abort: bool = False) -> bool:
        if abort:
            return True
        if self.eagain:
            self.eagain -= 1
            self.log.append("EAGAIN")
            return False
        self.store.update(self.pending)
        self.log.append("commit")
        return True

    def rm(self, t: str, path: str) -> None:
        self.log.append(f"rm {path}")
        for k in [k for k in self.store if k == path or k.startswith(path + "/")]:
            del self.store[k]

    def mkdir(self, t: str, path: str) -> None:
        self.pending.setdefault(path, "")

    def set_permissions(self, t: str, path: str, perms: list[dict[str, Any]]) -> None:
        self.perms[path] = perms

    def write(self, t: str, path: str, value: str) -> None:
        assert isinstance(value, str)
        (self.pending if t else self.store)[path] = value

    def read(self, t: str, path: str) -> bytes | None:
        v = self.store.get(path)
        return None if v is None else v.encode()

    def introduce_domain(self, dom: int, page: int, port: int) -> None:
        self.log.append(f"introduce {dom} {page} {port}")


def modules(xc: FakeXc, xs: FakeXs) -> tuple[Any, Any]:
    xc_mod = types.SimpleNamespace(xc=lambda: xc, Error=FakeXcError)
    xs_mod = types.SimpleNamespace(xs=lambda: xs, Error=FakeXsError)
    return xc_mod, xs_mod


def config(**kw: Any) -> xend.DomainConfig:
    return xend.DomainConfig(**{"name": "tiny", "memory_kb": 131072, "uuid": UUID, **kw})


def test_create_sets_the_domain_up_as_xend_did() -> None:
    xc, xs = FakeXc(), FakeXs()
    ts = xend.Toolstack(*modules(xc, xs))
    dom = ts.create(config(vcpus=2))
    assert xc.names() == [
        "domain_create",
        "domain_max_vcpus",
        "domain_setmaxmem",
        "domain_set_memmap_limit",
        "evtchn_alloc_unbound",
        "evtchn_alloc_unbound",
    ]
    create = xc.calls[0][2]
    assert create["handle"] == list(UUID.bytes) and create["max_vcpus"] == 2
    assert create["flags"] == 0, "a PV domain: no XEN_DOMCTL_CDF_hvm"
    assert xc.calls[1][1] == (DOMID, 2)
    assert xc.calls[2][1] == (DOMID, 131072 + xend.MAXMEM_SLACK_KB)
    assert [c[2] for c in xc.calls[4:]] == [{"domid": DOMID, "remote_dom": 0}] * 2
    assert (dom.domid, dom.store_evtchn, dom.console_evtchn) == (DOMID, 3, 4)
    assert dom.store_mfn is None


def test_a_failed_set_up_step_destroys_the_domain_and_names_the_call() -> None:
    xc, xs = FakeXc(fail="domain_setmaxmem"), FakeXs()
    ts = xend.Toolstack(*modules(xc, xs))
    with pytest.raises(XenError, match=r"domain_setmaxmem.*Invalid argument") as e:
        ts.create(config())
    assert e.value.code == 22
    assert xc.names()[-1] == "domain_destroy" and xc.calls[-1][1] == (DOMID,)


def _restored_domain(ts: xend.Toolstack) -> xend.Domain:
    dom = ts.create(config(target_kb=65536))
    dom.store_mfn, dom.console_mfn = 0x1234, 0x1235
    return dom


def test_introduce_writes_what_xenstored_and_xenconsoled_read_then_introduces() -> None:
    xc, xs = FakeXc(), FakeXs()
    ts = xend.Toolstack(*modules(xc, xs))
    dom = _restored_domain(ts)
    ts.introduce(dom)
    base = f"/local/domain/{DOMID}"
    s = xs.store
    assert s[f"{base}/name"] == "tiny" and s[f"{base}/vm"] == f"/vm/{UUID}"
    assert (s[f"{base}/console/ring-ref"], s[f"{base}/console/port"]) == (str(0x1235), "4")
    assert (s[f"{base}/store/ring-ref"], s[f"{base}/store/port"]) == (str(0x1234), "3")
    assert s[f"{base}/console/type"] == "xenconsoled"
    assert (s[f"{base}/memory/static-max"], s[f"{base}/memory/target"]) == ("131072", "65536")
    assert s[f"/vm/{UUID}/uuid"] == str(UUID)
    # The guest reads its directory and owns control/, data/, ...; dom0 owns the rest.
    assert xs.perms[base] == [{"dom": 0}, {"dom": DOMID, "read": True}]
    assert xs.perms[f"{base}/control"] == [{"dom": DOMID}]
    # Introduced only once the entries are committed.
    assert xs.log[-2:] == ["commit", f"introduce {DOMID} {0x1234} 3"]


def test_introduce_retries_a_transaction_that_xenstored_asks_to_redo() -> None:
    xc, xs = FakeXc(), FakeXs(eagain=2)
    ts = xend.Toolstack(*modules(xc, xs))
    ts.introduce(_restored_domain(ts))
    assert xs.log.count("EAGAIN") == 2 and "commit" in xs.log


def test_introduce_needs_the_ring_frames_of_a_restore() -> None:
    ts = xend.Toolstack(*modules(FakeXc(), FakeXs()))
    with pytest.raises(UsageError, match="restore it first"):
        ts.introduce(ts.create(config()))


def test_destroy_removes_the_xenstore_entries() -> None:
    xc, xs = FakeXc(), FakeXs()
    ts = xend.Toolstack(*modules(xc, xs))
    dom = _restored_domain(ts)
    ts.introduce(dom)
    ts.destroy(DOMID)
    assert xc.names()[-1] == "domain_destroy"
    assert not [k for k in xs.store if k.startswith(f"/local/domain/{DOMID}")]
    assert not [k for k in xs.store if k.startswith("/vm/")]


def libxl_config(gtype: str = "pv") -> bytes:
    return json.dumps(
        {
            "c_info": {"type": gtype, "name": "saved", "uuid": str(UUID)},
            "b_info": {"max_vcpus": 1, "max_memkb": 131072, "target_memkb": 131072},
        }
    ).encode()


def test_config_comes_from_the_xl_header() -> None:
    cfg = xend.DomainConfig.from_libxl_json(libxl_config() + b"\0")
    assert (cfg.name, cfg.memory_kb, cfg.vcpus, cfg.uuid) == ("saved", 131072, 1, UUID)
    assert xend.DomainConfig.from_libxl_json(libxl_config(), name="other").name == "other"
    with pytest.raises(xend.UnsupportedImage, match="HVM"):
        xend.DomainConfig.from_libxl_json(libxl_config("hvm"))
    with pytest.raises(StreamMalformed, match="libxl domain configuration"):
        xend.DomainConfig.from_libxl_json(b"{not json")
    with pytest.raises(UsageError):
        config(memory_kb=0)


LIBXC_IMAGE = b"\xff" * 8 + b"libxc image and the rest"


def xl_optional_data() -> bytes:
    """As xl writes it: u32 length, then the NUL-terminated JSON."""
    config = libxl_config() + b"\0"
    return len(config).to_bytes(4, "little") + config


def xl_file(
    *, mflags: int = XL_MANDATORY_FLAG_STREAMv2 | XL_MANDATORY_FLAG_JSON, first_record: int = 1
) -> bytes:
    opt = xl_optional_data()
    head = (
        XL_MAGIC
        + xlheader.XL_HEADER_FORMAT.pack(xlheader.XL_BYTEORDER_LE, mflags, 0, len(opt))
        + opt
    )
    libxl = F.LIBXL_HDR_FORMAT.pack(F.LIBXL_HDR_IDENT, F.LIBXL_HDR_VERSION, 0)
    return head + libxl + F.RHDR_FORMAT.pack(first_record, 0) + LIBXC_IMAGE


def pipe_with(data: bytes) -> int:
    r, w = os.pipe()

    def feed() -> None:
        os.write(w, data)
        os.close(w)

    threading.Thread(target=feed, daemon=True).start()
    return r


def read_rest(fd: int) -> bytes:
    out = b""
    while chunk := os.read(fd, 65536):
        out += chunk
    return out


def test_config_needs_the_json_xl_writes() -> None:
    fd = pipe_with(xl_file())
    try:
        xl = xend.read_xl_prefix(fd).xl
    finally:
        os.close(fd)
    old_xl = dataclasses.replace(xl, mandatory_flags=XL_MANDATORY_FLAG_STREAMv2)
    with pytest.raises(StreamMalformed, match="not libxl JSON"):
        xend.DomainConfig.from_xl_header(old_xl)


def test_read_xl_prefix_stops_exactly_at_the_libxc_image() -> None:
    fd = pipe_with(xl_file())
    try:
        prefix = xend.read_xl_prefix(fd)
        assert prefix.xl.optional_data == xl_optional_data()
        assert xend.DomainConfig.from_xl_header(prefix.xl).name == "saved"
        assert prefix.libxl.version == F.LIBXL_HDR_VERSION
        assert read_rest(fd) == LIBXC_IMAGE
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        (xl_file(mflags=XL_MANDATORY_FLAG_JSON), StreamMalformed, "legacy image"),
        (xl_file(first_record=2), StreamMalformed, "Emulator xenstore data"),
        (xl_file()[:60], StreamTruncated, "end of stream"),
        (b"not an xl file at all, long enough for the header....", StreamMalformed, "magic"),
    ],
)
def test_read_xl_prefix_refuses_what_it_cannot_restore(
    data: bytes, error: type[Exception], match: str
) -> None:
    fd = pipe_with(data)
    try:
        with pytest.raises(error, match=match):
            xend.read_xl_prefix(fd)
    finally:
        os.close(fd)


def _fake_restore(ok: bool, seen: dict[str, Any]) -> Any:
    def restore(source: int, **kw: Any) -> RestoreResult:
        seen.update(kw, data=os.read(source, len(LIBXC_IMAGE)))
        decision = decide(kw["operation"], "4.17")
        if not ok:
            err = XenError(1, 0, "Found checkpoint in non-checkpointed stream")
            return RestoreResult(
                ok=False, backend="libxc", release="4.17", decision=decision, error=err
            )
        return RestoreResult(
            ok=True,
            backend="libxc",
            release="4.17",
            decision=decision,
            store_mfn=0x99,
            console_mfn=0x98,
        )

    return restore


def _image(tmp_path: Path) -> Path:
    path = tmp_path / "guest.save"
    # After the libxc image: libxl's END record.
    path.write_bytes(xl_file() + F.RHDR_FORMAT.pack(F.REC_TYPE_LIBXL_END, 0))
    return path


def test_restore_xl_image_runs_the_whole_xend_sequence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(xend, "xlpy_restore", _fake_restore(True, seen))
    xc, xs = FakeXc(), FakeXs()
    done = xend.restore_xl_image(_image(tmp_path), toolstack=xend.Toolstack(*modules(xc, xs)))
    # libxc got the stream from the libxc image on, as a restore into the new domain.
    assert seen["data"] == LIBXC_IMAGE
    assert (seen["operation"], seen["backend"], seen["domid"]) == ("restore", "libxc", DOMID)
    assert (seen["store_evtchn"], seen["console_evtchn"], seen["guest"]) == (3, 4, "pv")
    assert (done.domain.store_mfn, done.domain.console_mfn) == (0x99, 0x98)
    assert [r.type for r in done.libxl_tail] == [F.REC_TYPE_LIBXL_END]
    assert xs.log[-1] == f"introduce {DOMID} {0x99} 3"
    assert xc.names()[-1] == "domain_unpause"


def test_restore_xl_image_destroys_the_domain_when_libxc_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(xend, "xlpy_restore", _fake_restore(False, {}))
    xc, xs = FakeXc(), FakeXs()
    with pytest.raises(XenError, match="non-checkpointed"):
        xend.restore_xl_image(_image(tmp_path), toolstack=xend.Toolstack(*modules(xc, xs)))
    assert xc.names()[-1] == "domain_destroy"
    assert not any(line.startswith("introduce") for line in xs.log)


XEN_MODULES = ("xen", "xen.lowlevel", "xen.lowlevel.xc", "xen.lowlevel.xs")


def test_lowlevel_finds_the_bindings_outside_sys_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = tmp_path / "xen" / "lowlevel"
    pkg.mkdir(parents=True)
    for d in (tmp_path / "xen", pkg):
        (d / "__init__.py").write_text("")
    (pkg / "xc.py").write_text("class Error(RuntimeError):\n    pass\n")
    (pkg / "xs.py").write_text("class Error(RuntimeError):\n    pass\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in XEN_MODULES:
        # set, then delete: monkeypatch's undo then removes what the import adds.
        monkeypatch.setitem(sys.modules, name, None)
        monkeypatch.delitem(sys.modules, name)
    xc_mod, xs_mod = xend.lowlevel(tmp_path)
    assert Path(xc_mod.__file__).parent == pkg and Path(xs_mod.__file__).parent == pkg


def test_lowlevel_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in XEN_MODULES:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(XenUnavailable, match="xen-utils"):
        xend.lowlevel(tmp_path)


def test_xc_errors_keep_libxc_code_and_message() -> None:
    err = xend._xc_error("domain_create", FakeXcError(1, "Internal error", "no memory"))
    assert err.code == 1 and "domain_create: Internal error: no memory" in str(err)
