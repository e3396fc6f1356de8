"""Every generation's argument assembly, end to end, against stand-ins built from its cdefs.

For each ABI generation a stand-in libxenguest is compiled from that generation's own
declaration files (so it has exactly the declared prototype and struct) with an
``xc_domain_restore`` that reads ``io_fd`` to EOF and reports every argument by name.
The test then checks that each named value reached its named slot, through the
in-process call and through the helper.  (Whether the declarations match the real
headers is test_cdef_*'s job.)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.libxc_stand_in import OUT_PARAMS, build_stand_in, read_report
from xlpy.binding import RestoreArgs, restore_libxc
from xlpy.binding.detect import ENV_GENERATION, ENV_LIBRARY, detect
from xlpy.binding.generations import GENERATIONS, PLAIN, REMUS
from xlpy.errors import UsageError


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {g.name: build_stand_in(g, tmp_path_factory.mktemp(g.name)) for g in GENERATIONS}


@pytest.mark.parametrize("out_of_process", [True, False], ids=["helper", "in-process"])
@pytest.mark.parametrize("name", [g.name for g in GENERATIONS])
def test_arguments_reach_their_slots(
    name: str,
    out_of_process: bool,
    stand_ins: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV_LIBRARY, str(stand_ins[name]))
    monkeypatch.setenv(ENV_GENERATION, name)  # 4.0/4.1 share a soname; no feature here
    monkeypatch.setenv("FAKE_REPORT", str(tmp_path / "report"))
    abi = detect()
    gen = abi.generation
    assert gen.name == name
    calls: list[tuple[object, ...]] = []
    callbacks = {}
    stream_type = PLAIN
    if "toolstack_restore" in gen.callbacks_for(abi.release):
        callbacks["toolstack_restore"] = lambda domid, buf: calls.append((domid, buf)) or 0
    if gen.stream_param is not None:
        stream_type = REMUS
        if "checkpoint" in gen.callbacks_for(abi.release):
            callbacks["checkpoint"] = lambda: calls.append(("cp",)) or 1
    r, w = os.pipe()
    os.write(w, b"x" * 1000)
    os.close(w)
    values = dict(dom=70000, store_evtchn=5, store_domid=3, console_evtchn=6, console_domid=4,
                  hvm=True, pae=False, superpages=True, no_incr_generationid=True)  # fmt: skip
    try:
        req = RestoreArgs(io_fd=r, stream_type=stream_type, send_back_fd=-1, **values)  # type: ignore[arg-type]
        result = restore_libxc(req, callbacks, out_of_process=out_of_process, timeout=20)
    finally:
        os.close(r)
    report = read_report(tmp_path / "report")
    expected = {"bytes": 1000}
    for p in gen.params[1:]:
        if p in ("callbacks", *OUT_PARAMS):
            continue
        if p in ("stream_type", "checkpointed_stream"):
            expected[p] = stream_type
        elif p == "send_back_fd":
            expected[p] = -1
        elif p == "io_fd":
            expected[p] = r  # the helper inherits it under the same number
        elif p == "memflags":
            expected[p] = 0
        else:
            expected[p] = int(values[p])  # type: ignore[call-overload]
    assert {k: report[k] for k in expected} == expected
    assert (result.store_mfn, result.console_mfn) == (0x10000 + 1000, 0x20000 + 1000)
    genid = 0x30000 + 1000 if "vm_generationid_addr" in gen.params else None
    assert result.vm_generationid_addr == genid
    if "toolstack_restore" in callbacks:
        assert calls == [(70000, b"hi\0x")] and report["toolstack_restore"] == 0
    if "checkpoint" in callbacks:
        assert calls == [("cp",)] and report["checkpoint"] == 1


def test_4_6_fills_slot_0_as_checkpoint(
    stand_ins: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 4.5 and 4.6 share prototype and struct size; slot 0 is toolstack_restore in 4.5,
    # checkpoint in 4.6 (abi.md §6.4).  The binding lets each release set only its own.
    monkeypatch.setenv(ENV_LIBRARY, str(stand_ins["4.5-4.6"]))
    monkeypatch.setenv(ENV_GENERATION, "4.6")
    monkeypatch.setenv("FAKE_REPORT", str(tmp_path / "report"))
    monkeypatch.setenv("FAKE_CHECKPOINT", "1")
    abi = detect()
    assert (abi.generation.name, abi.release) == ("4.5-4.6", "4.6")
    r, w = os.pipe()
    os.close(w)
    try:
        req = RestoreArgs(io_fd=r, dom=1, stream_type=REMUS)
        restore_libxc(req, {"checkpoint": lambda: 2}, out_of_process=False)
        with pytest.raises(UsageError, match="no restore callback toolstack_restore"):
            restore_libxc(req, {"toolstack_restore": lambda d, b: 0, "checkpoint": lambda: 1})
    finally:
        os.close(r)
    assert read_report(tmp_path / "report")["checkpoint"] == 2
