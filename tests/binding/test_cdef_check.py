"""The cdef-check (tox -e cdef-check) run from pytest, with negative controls.

Needs gcc and Debian's libxen-dev 4.17 headers (the xen_tools cache); every test here
is one compile of a few seconds.  Each check runs in a fresh interpreter: the compiled
module NEEDS ``libxenguest.so.4.17``, and other tests load stand-ins of that soname.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.paths import REPO
from xlpy.binding.cdefcheck import CdefDrift, Report, function_declarations
from xlpy.binding.generations import BY_NAME, by_name

pytestmark = pytest.mark.xen_tools


@pytest.fixture(scope="module")
def xen_dev(xen_tools: object) -> tuple[Path, Path]:
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.skip("NO C COMPILER: the cdef-check compiles in cffi API mode")
    root = Path(xen_tools.root).resolve()  # type: ignore[attr-defined]
    include_dir, lib_dir = root / "usr/include", root / "usr/lib/x86_64-linux-gnu"
    if not (include_dir / "xenguest.h").is_file():
        pytest.fail(f"libxen-dev headers missing from {include_dir}")
    return include_dir, lib_dir


_RUN = """
import json, sys
from dataclasses import asdict
from pathlib import Path
from xlpy.binding.cdefcheck import CdefDrift, check_texts
texts, include_dir, lib_dir, tmp = json.loads(sys.stdin.read())
try:
    report = check_texts("check", texts, Path(include_dir), Path(lib_dir), Path(tmp))
except CdefDrift as e:
    print(json.dumps({"drift": str(e)}))
else:
    print(json.dumps(asdict(report)))
"""


def check_texts(texts: list[str], include_dir: Path, lib_dir: Path, tmp: Path) -> Report:
    """:func:`xlpy.binding.cdefcheck.check_texts` in a subprocess."""
    proc = subprocess.run(
        [sys.executable, "-c", _RUN],
        input=json.dumps([texts, str(include_dir), str(lib_dir), str(tmp)]),
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    if "drift" in doc:
        raise CdefDrift(doc["drift"])
    return Report(**doc)


def check(generation: str, include_dir: Path, lib_dir: Path, tmp: Path) -> Report:
    return check_texts(by_name(generation).cdef_text(), include_dir, lib_dir, tmp)


def test_4_14_declarations_match_debian_4_17_headers(
    xen_dev: tuple[Path, Path], tmp_path: Path
) -> None:
    report = check("4.14-4.21", *xen_dev, tmp_path)
    assert "xc_domain_restore" in report.functions
    assert report.layouts["struct restore_callbacks"]["sizeof"] == 56
    assert report.layouts["struct restore_callbacks"]["static_data_done"] == 0
    assert report.constants["XC_STREAM_COLO"] == 2


def test_4_10_prototype_is_rejected_by_4_17_headers(
    xen_dev: tuple[Path, Path], tmp_path: Path
) -> None:
    with pytest.raises(CdefDrift, match="do not compile"):
        check("4.10-4.13", *xen_dev, tmp_path)


def _mutated(old: str, new: str) -> list[str]:
    texts = by_name("4.14-4.21").cdef_text()
    assert old in texts[-1]
    return [*texts[:-1], texts[-1].replace(old, new)]


def test_domid_width_drift_is_a_compile_error(xen_dev: tuple[Path, Path], tmp_path: Path) -> None:
    # cffi's wrapper alone would convert silently; the strict redeclaration does not.
    texts = _mutated("uint32_t store_domid", "uint16_t store_domid")
    with pytest.raises(CdefDrift, match="do not compile"):
        check_texts(texts, *xen_dev, tmp_path)


def test_callback_layout_drift_is_caught(xen_dev: tuple[Path, Path], tmp_path: Path) -> None:
    texts = _mutated(
        "    int (*static_data_done)(unsigned int missing, void *data);\n"
        "    int (*suspend)(void *data);\n",
        "    int (*suspend)(void *data);\n"
        "    int (*static_data_done)(unsigned int missing, void *data);\n",
    )
    with pytest.raises(CdefDrift, match="restore_callbacks"):
        check_texts(texts, *xen_dev, tmp_path)


def test_function_declarations_are_extracted_verbatim() -> None:
    for gen in BY_NAME.values():
        decls = [d for t in gen.cdef_text() for d in function_declarations(t)]
        restore = [d for d in decls if "xc_domain_restore(" in d]
        assert len(restore) == 1, gen.name
        assert restore[0].count(",") + 1 == len(gen.params), gen.name


def test_make_cdef_check_runs_the_check() -> None:
    make = shutil.which("make")
    if make is None:
        pytest.skip("NO make")
    repo = REPO
    dry = subprocess.run(
        [make, "-n", "-C", str(repo), "cdef-check"], capture_output=True, text=True, check=True
    )
    assert "-m xlpy.binding.cdefcheck --generation 4.14-4.21 --xen-root" in dry.stdout
