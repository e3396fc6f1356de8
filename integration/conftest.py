"""pytest set-up for the dom0 integration suite.

Every test marked ``dom0`` needs a running Xen dom0 with root.  Without one it
is skipped with the reason, unless ``XLPY_REQUIRE_XEN_VM=1`` (set by the
harness's VM and by CI), which turns the skip into a failure so a broken VM
can never pass by skipping.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Generator, Iterator
from pathlib import Path

import dom0lib
import pytest

#: (nodeid, seconds for setup+call+teardown, outcome, dom0 resources after teardown)
_TIMINGS: list[tuple[str, float, str, str]] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "dom0: needs a real Xen dom0 (root, /dev/xen/privcmd, xl)")


def pytest_report_header() -> str:
    # Calibrated once, before the first test, so that no test pays for it.
    return f"dom0: {dom0lib.time_scale_report()}; {dom0lib.resources()}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, None, None]:
    t0 = time.monotonic()
    yield
    outcome = "passed"
    for report in getattr(item, "_xlpy_reports", []):
        if report.failed:
            outcome = f"{report.when} failed"
            break
        if report.skipped:
            outcome = "xfailed" if hasattr(report, "wasxfail") else "skipped"
    _TIMINGS.append((item.nodeid, time.monotonic() - t0, outcome, dom0lib.resources()))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, object, None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    item.__dict__.setdefault("_xlpy_reports", []).append(report)
    if report.failed:
        # A failure under memory or /tmp pressure says so in its own report.
        report.sections.append(("dom0 resources at the failure", dom0lib.resources()))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _TIMINGS:
        return
    tr = terminalreporter
    tr.section("dom0 per-test timings (setup+call+teardown) and resources after each")
    for nodeid, seconds, outcome, res in _TIMINGS:
        tr.write_line(f"{seconds:7.1f}s  {outcome:16} {nodeid}  [{res}]")
    tr.write_line(f"{sum(t[1] for t in _TIMINGS):7.1f}s  total; {dom0lib.time_scale_report()}")


@pytest.fixture(scope="session")
def _xen_reason() -> str | None:
    reason = dom0lib.xen_unavailable_reason()
    if reason is None and os.geteuid() != 0:
        reason = "dom0 tests need root"
    return reason


def _unusable(reason: str) -> None:
    if os.environ.get("XLPY_REQUIRE_XEN_VM") == "1":
        pytest.fail(f"XLPY_REQUIRE_XEN_VM=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _require_dom0(request: pytest.FixtureRequest, _xen_reason: str | None) -> None:
    if request.node.get_closest_marker("dom0") is not None and _xen_reason is not None:
        _unusable(_xen_reason)


@pytest.fixture(scope="module")
def dom0_workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A scratch directory in dom0 (save images, guest configs) for one test module.

    dom0's /tmp is a tmpfs in dom0's own memory: whatever a failing test left here (a
    half-written image, a simulated domain) is removed with the module, and named, so
    that it can neither fill /tmp for the next module nor go unnoticed.
    """
    path = tmp_path_factory.mktemp("dom0")
    yield path
    left = [p for p in path.rglob("*") if p.is_file() and p.stat().st_size > 1 << 20]
    if left:
        sizes = ", ".join(f"{p.relative_to(path)} ({p.stat().st_size >> 20}M)" for p in left)
        print(f"removing what the module left in {path}: {sizes}")
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def pv_guest(dom0_workdir: Path, _xen_reason: str | None) -> Iterator[dom0lib.PVGuest]:
    """A tiny PV guest, created and ticking; destroyed after the module."""
    # Module fixtures run before the autouse check above: check here too.
    if _xen_reason is not None:
        _unusable(_xen_reason)
    guest = dom0lib.PVGuest(name="xlpy-tiny", workdir=dom0_workdir / "guest")
    guest.destroy()
    guest.create()
    try:
        if not guest.console_log_appears(timeout=60):
            _unusable(
                f"xenconsoled writes no {guest.console_log}: run it with --log=guest "
                "(Debian: XENCONSOLED_TRACE=guest in /etc/default/xencommons)"
            )
        guest.wait_tick_after(1, timeout=180)
        yield guest
    finally:
        guest.destroy()
