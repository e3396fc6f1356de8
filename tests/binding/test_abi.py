"""ABI detection and ``xlpy abi``: the real Debian 4.17 library and stand-ins built here.

Stand-ins are empty shared objects with a chosen soname, symbol version and exports,
so each detection rule (soname, symbol version, the 4.0/4.1 feature split, the
ambiguous 4.3, unknown releases, missing dependencies) is exercised without Xen.
Loader-dependent cases run in a subprocess: a library loaded once stays loaded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.paths import REPO
from xlpy.binding.detect import ENV_GENERATION, ENV_LIBRARY, debian_package, detect
from xlpy.errors import LibraryNotFound, UsageError, XenUnavailable
from xlpy.operation import Verdict, decide


def _xlpy_abi(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in env.items() if k not in (ENV_LIBRARY, ENV_GENERATION)} | env
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "xlpy", "abi", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("LD_LIBRARY_PATH", ENV_LIBRARY, ENV_GENERATION)
    }
    return env | extra


@pytest.mark.xen_tools
def test_xlpy_abi_detects_4_14_generation_from_debian_4_17(xen_tools: object) -> None:
    proc = _xlpy_abi(xen_tools.env, "--json")  # type: ignore[attr-defined]
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["soname"] == "libxenguest.so.4.17"
    assert doc["symbol_version"] == "VERS_4.17.0"
    assert doc["generation"] == "4.14-4.21"
    assert Path(doc["library"]).name.startswith("libxenguest.so.4.17")
    assert [Path(p).name for p in doc["cdefs"]] == ["common.h", "4.14-4.21.h"]
    assert all(Path(p).is_file() for p in doc["cdefs"])
    assert doc["operations"] == {
        "restore": "allow",
        "migrate-receive": "allow",
        "remus-receive": "allow",
        "colo-receive": "allow",
    }


@pytest.mark.xen_tools
def test_xlpy_abi_text_output(xen_tools: object) -> None:
    proc = _xlpy_abi(xen_tools.env)  # type: ignore[attr-defined]
    assert proc.returncode == 0, proc.stderr
    assert "generation:     4.14-4.21" in proc.stdout


def test_xlpy_abi_without_library_names_the_package() -> None:
    proc = _xlpy_abi(_clean_env(), "--json")
    if proc.returncode == 0:
        pytest.skip("a libxenguest is installed system-wide on this machine")
    assert proc.returncode == 2
    doc = json.loads(proc.stdout)
    assert "libxenmisc" in doc["package"]
    text = _xlpy_abi(_clean_env())
    assert text.returncode == 2 and "libxenmisc" in text.stderr and "Traceback" not in text.stderr


@pytest.mark.xen_tools
def test_missing_dependency_is_named(xen_tools: object, tmp_path: Path) -> None:
    lib_dir = xen_tools.lib_dirs[0]  # type: ignore[attr-defined]
    shutil.copy(lib_dir / "libxenguest.so.4.17.0", tmp_path / "libxenguest.so.4.17")
    proc = _xlpy_abi(_clean_env(**{ENV_LIBRARY: str(tmp_path / "libxenguest.so.4.17")}), "--json")
    assert proc.returncode == 2
    doc = json.loads(proc.stdout)
    assert doc["missing"].startswith("libxen")
    assert doc["package"] == debian_package(doc["missing"])


@pytest.fixture(scope="module")
def cc() -> str:
    found = shutil.which("gcc") or shutil.which("cc")
    if found is None:
        pytest.skip("NO C COMPILER: cannot build stand-in libraries")
    return found


def _stand_in(
    cc: str, d: Path, soname: str, *, version: str | None = None, exports: tuple[str, ...] = ()
) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    src = d / "lib.c"
    src.write_text(
        "".join(f"int {n}(void) {{ return 0; }}\n" for n in ("xc_domain_restore", *exports))
    )
    args = [cc, "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", str(d / soname), str(src)]
    if version:
        script = d / "vers.map"
        script.write_text(f"{version} {{ global: *; }};\n")
        args.append(f"-Wl,--version-script,{script}")
    subprocess.run(args, check=True)
    return d / soname


@pytest.mark.parametrize(
    ("soname", "version", "exports", "generation", "release"),
    [
        ("libxenguest.so.4.22", "libxenguest_4.22.0", (), "4.22", "4.22"),
        ("libxenguest.so.4.18", "libxenguest_4.18.0", (), "4.14-4.21", "4.18"),
        ("libxenguest.so.4.15", "VERS_4.15.0", (), "4.14-4.21", "4.15"),
        ("libxenguest.so.4.14", None, (), "4.14-4.21", "4.14"),
        ("libxenguest.so.4.11", None, (), "4.10-4.13", "4.11"),
        ("libxenguest.so.4.8", None, (), "4.7-4.9", "4.8"),
        ("libxenguest.so.4.6", None, (), "4.5-4.6", "4.6"),
        ("libxenguest.so.4.4", None, (), "4.3.2-4.4", "4.4"),
        ("libxenguest.so.4.2", None, (), "4.2-4.3.1", "4.2"),
        ("libxenguest.so.4.0", None, ("xtl_createlogger_stdiostream",), "4.1", "4.1"),
        ("libxenguest.so.4.0", None, (), "4.0", "4.0"),
    ],
)
def test_generation_from_soname_version_and_features(
    cc: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    soname: str,
    version: str | None,
    exports: tuple[str, ...],
    generation: str,
    release: str,
) -> None:
    lib = _stand_in(cc, tmp_path, soname, version=version, exports=exports)
    monkeypatch.delenv(ENV_GENERATION, raising=False)
    # Named through an unversioned link: the soname inside the file decides.
    (tmp_path / "libxenguest.so").symlink_to(lib.name)
    monkeypatch.setenv(ENV_LIBRARY, str(tmp_path / "libxenguest.so"))
    abi = detect()
    assert (abi.soname, abi.symbol_version) == (soname, version)
    assert (abi.generation.name, abi.release, abi.overridden) == (generation, release, False)


def test_found_by_soname_through_ld_library_path(cc: str, tmp_path: Path) -> None:
    _stand_in(cc, tmp_path, "libxenguest.so.4.22", version="libxenguest_4.22.0")
    proc = _xlpy_abi(_clean_env(LD_LIBRARY_PATH=str(tmp_path)), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["generation"] == "4.22"
    assert doc["library"] == str(tmp_path / "libxenguest.so.4.22")


def test_4_3_is_ambiguous_without_override(
    cc: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = _stand_in(cc, tmp_path, "libxenguest.so.4.3")
    monkeypatch.setenv(ENV_LIBRARY, str(lib))
    monkeypatch.delenv(ENV_GENERATION, raising=False)
    with pytest.raises(XenUnavailable) as e:
        detect()
    # The suggested values are releases, so the rules see a 4.3 release, not 4.4.
    suggested = re.findall(rf"{ENV_GENERATION}=(\S+)", str(e.value))
    assert suggested == ["4.3.1", "4.3.2"]
    for value, gen in zip(suggested, ("4.2-4.3.1", "4.3.2-4.4"), strict=True):
        monkeypatch.setenv(ENV_GENERATION, value)
        abi = detect()
        assert (abi.generation.name, abi.release, abi.overridden) == (gen, value, True)
    # A generation name stands for the 4.3 release it contains, not the generation's newest.
    for value, release in (("4.3.2-4.4", "4.3.2"), ("4.2-4.3.1", "4.3.0")):
        monkeypatch.setenv(ENV_GENERATION, value)
        assert detect().release == release, value
    # ...so Remus is not refused for 4.4's failover bug, which 4.3.2-4.3.4 do not have.
    assert decide("remus-receive", detect().release).verdict is Verdict.REFUSE  # 4.3.0
    monkeypatch.setenv(ENV_GENERATION, "4.3.2-4.4")
    assert decide("remus-receive", detect().release).verdict is Verdict.ALLOW


def test_override_must_name_a_generation(
    cc: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_LIBRARY, str(_stand_in(cc, tmp_path, "libxenguest.so.4.17")))
    monkeypatch.setenv(ENV_GENERATION, "4.99")
    with pytest.raises(UsageError, match=ENV_GENERATION):
        detect()


def test_unknown_newer_release_is_refused(
    cc: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_LIBRARY, str(_stand_in(cc, tmp_path, "libxenguest.so.4.23")))
    monkeypatch.delenv(ENV_GENERATION, raising=False)
    with pytest.raises(XenUnavailable, match="not an ABI xlpy knows"):
        detect()


def test_named_file_must_exist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_LIBRARY, str(tmp_path / "nope.so"))
    with pytest.raises(LibraryNotFound, match="no such file"):
        detect()


@pytest.mark.parametrize(
    ("soname", "package"),
    [
        ("libxenctrl.so.4.17", "libxenmisc4.17"),
        ("libxenguest.so.4.11", "libxenmisc4.11"),
        ("libxentoollog.so.1", "libxentoollog1"),
        ("libxenstore.so.4", "libxenstore4"),
        ("libxenevtchn.so.1", "libxenevtchn1"),
    ],
)
def test_debian_package_names(soname: str, package: str) -> None:
    assert debian_package(soname) == package


def test_symbol_version_contradicting_soname_is_refused(
    cc: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = _stand_in(cc, tmp_path, "libxenguest.so.4.17", version="VERS_4.16.0")
    monkeypatch.setenv(ENV_LIBRARY, str(lib))
    monkeypatch.delenv(ENV_GENERATION, raising=False)
    with pytest.raises(XenUnavailable, match=r"versioned VERS_4\.16\.0"):
        detect()
    monkeypatch.setenv(ENV_GENERATION, "4.16")
    abi = detect()
    assert (abi.generation.name, abi.symbol_version, abi.overridden) == (
        "4.14-4.21",
        "VERS_4.16.0",
        True,
    )
