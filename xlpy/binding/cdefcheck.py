"""Check a generation's declarations against real Xen headers (``tox -e cdef-check``).

cffi API mode compiles the declarations against ``<xenctrl.h>``/``<xenguest.h>`` with
every declared function *redeclared after the headers*, so any type drift (argument
count, width, pointer-ness) is a compile error, not a silent conversion (abi.md §5c).
Then the compiled module is imported and every struct and enum compared with what the
ABI-mode declarations compute: field offsets, sizes, constant values.  Needs a C
compiler and the ``libxen-dev`` headers; the installed binding never needs either.

Usage: ``python -m xlpy.binding.cdefcheck [--generation 4.14-4.21] [--xen-root DIR]``
where DIR holds ``usr/include`` and ``usr/lib/x86_64-linux-gnu`` (default:
``$XLPY_XEN_CACHE``, else ``.cache/xen-4.17``).  Exit 0 when everything matches, 1 on
drift, 2 when the check cannot run.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xlpy.binding.detect import ENV_LIBRARY, load_library
from xlpy.binding.generations import by_name
from xlpy.errors import XlpyError

HEADERS = ("xenctrl.h", "xenguest.h")
STRUCTS = ("struct restore_callbacks", "xc_error")
ENUMS = ("xentoollog_level", "enum xc_error_code", "enum xc_open_flags")
STREAM_ENUMS = ("xc_stream_type_t", "xc_migration_stream_t")
STRICT_FLAGS = ["-Wall", "-Werror=incompatible-pointer-types", "-Werror=int-conversion"]


class CdefDrift(XlpyError):
    """The declarations disagree with the real headers."""


@dataclass
class Report:
    """What was compared, for the log of a passing check."""

    generation: str
    functions: list[str] = field(default_factory=list)
    layouts: dict[str, dict[str, int]] = field(default_factory=dict)
    constants: dict[str, int] = field(default_factory=dict)


def function_declarations(cdef: str) -> list[str]:
    """The function prototypes of a cdef text, verbatim, for redeclaration in C."""
    text = re.sub(r"/\*.*?\*/", "", cdef, flags=re.S)
    text = re.sub(r"^\s*#.*$", "", text, flags=re.M)
    while True:  # drop struct/union/enum bodies, innermost first
        stripped = re.sub(r"\{[^{}]*\}", "", text)
        if stripped == text:
            break
        text = stripped
    decls = (" ".join(d.split()) for d in text.split(";"))
    return [d + ";" for d in decls if "(" in d and not d.startswith("typedef")]


def _function_name(decl: str) -> str:
    m = re.search(r"(\w+)\s*\(", decl)
    assert m is not None
    return m[1]


def check(generation: str, include_dir: Path, lib_dir: Path, tmpdir: Path) -> Report:
    """Compile and compare ``generation`` against the headers; raises :class:`CdefDrift`."""
    return check_texts(generation, by_name(generation).cdef_text(), include_dir, lib_dir, tmpdir)


def check_texts(
    generation: str, texts: list[str], include_dir: Path, lib_dir: Path, tmpdir: Path
) -> Report:
    """:func:`check` for declaration texts given in load order."""
    import cffi

    decls = [d for text in texts for d in function_declarations(text)]
    api, abi = cffi.FFI(), cffi.FFI()
    for text in texts:
        api.cdef(text)
        abi.cdef(text)
    source = "".join(f"#include <{h}>\n" for h in HEADERS)
    source += "/* strict redeclarations: gcc rejects any incompatible type */\n"
    source += "\n".join(decls) + "\n"
    digest = hashlib.sha1("".join(texts).encode()).hexdigest()[:10]
    module = f"_xlpy_cdefcheck_{digest}"  # one module per text: tests compile variants
    api.set_source(
        module,
        source,
        include_dirs=[str(include_dir)],
        library_dirs=[str(lib_dir)],
        libraries=["xenguest", "xenctrl"],
        extra_compile_args=STRICT_FLAGS,
    )
    try:
        so_path = api.compile(tmpdir=str(tmpdir), verbose=False)
    except Exception as e:  # cffi raises distutils' CompileError/LinkError subclasses
        raise CdefDrift(
            f"{generation} declarations do not compile against {include_dir}: {e}"
        ) from e
    # The module NEEDS libxenguest: load it and its siblings from lib_dir first.
    load_library({ENV_LIBRARY: str(lib_dir / "libxenguest.so")})
    spec = importlib.util.spec_from_file_location(module, so_path)
    assert spec is not None and spec.loader is not None
    compiled: Any = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compiled)
    return _compare(generation, abi, compiled.ffi, compiled.lib, decls)


def _compare(generation: str, abi: Any, api: Any, lib: Any, decls: list[str]) -> Report:
    report = Report(generation)
    problems: list[str] = []
    for decl in decls:
        name = _function_name(decl)
        getattr(lib, name)  # the compiled wrapper exists
        report.functions.append(name)
    for struct in STRUCTS:
        try:
            fields = [name for name, _ in abi.typeof(struct).fields]
            layout = {name: api.offsetof(struct, name) for name in fields}
            layout["sizeof"] = api.sizeof(struct)
        except api.error as e:  # cffi's lazy check: "wrong offset for field …"
            problems.append(f"{struct}: {e}")
            continue
        expected = {name: abi.offsetof(struct, name) for name in fields}
        expected["sizeof"] = abi.sizeof(struct)
        if layout != expected:
            problems.append(f"{struct}: headers give {layout}, declarations give {expected}")
        report.layouts[struct] = layout
    for enum in ENUMS + tuple(e for e in STREAM_ENUMS if _declared(abi, e)):
        for name, value in abi.typeof(enum).relements.items():
            real = getattr(lib, name)
            if real != value:
                problems.append(f"{enum} {name}: headers say {real}, declarations say {value}")
            report.constants[name] = real
        if api.sizeof(enum) != abi.sizeof(enum):
            problems.append(f"sizeof({enum}): headers {api.sizeof(enum)}, ABI {abi.sizeof(enum)}")
    if problems:
        raise CdefDrift(f"{generation} declarations drifted:\n  " + "\n  ".join(problems))
    return report


def _declared(ffi: Any, ctype: str) -> bool:
    import cffi

    try:
        ffi.typeof(ctype)
    except cffi.CDefError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    """``python -m xlpy.binding.cdefcheck``."""
    default_root = os.environ.get("XLPY_XEN_CACHE") or ".cache/xen-4.17"
    p = argparse.ArgumentParser(prog="python -m xlpy.binding.cdefcheck", description=__doc__)
    p.add_argument("--generation", default="4.14-4.21")
    p.add_argument("--xen-root", type=Path, default=Path(default_root))
    args = p.parse_args(argv)
    include_dir = args.xen_root.resolve() / "usr" / "include"
    lib_dir = args.xen_root.resolve() / "usr" / "lib" / "x86_64-linux-gnu"
    if not (include_dir / "xenguest.h").is_file() or not (lib_dir / "libxenguest.so").exists():
        print(f"cdef-check: no libxen-dev headers/libraries under {args.xen_root}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="xlpy-cdefcheck-") as tmp:
        try:
            report = check(args.generation, include_dir, lib_dir, Path(tmp))
        except CdefDrift as e:
            print(f"cdef-check: FAIL: {e}", file=sys.stderr)
            return 1
    print(f"cdef-check: {report.generation} matches {include_dir}")
    print(f"  functions redeclared: {', '.join(report.functions)}")
    for struct, layout in report.layouts.items():
        print(f"  {struct}: {layout}")
    print(f"  constants: {report.constants}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
