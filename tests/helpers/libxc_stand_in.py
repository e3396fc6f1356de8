"""Shared by the binding, toolstack and ``xlpy.restore`` tests: stream feeding and the
stand-in libxenguest built from a generation's own declaration files.

The stand-in's ``xc_domain_restore`` reads ``io_fd`` to EOF (what a 4.0-4.3.1 libxc does
after the last checkpoint) and writes every argument by name to ``$FAKE_REPORT``, so a
test sees exactly which bytes and values reached libxc.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from xlpy.binding.cdefcheck import function_declarations
from xlpy.binding.generations import Generation

#: A soname each generation's stand-in is built with (4.1 shares 4.0's).
SONAME = {
    "4.0": "4.0",
    "4.1": "4.0",
    "4.2-4.3.1": "4.2",
    "4.3.2-4.4": "4.4",
    "4.5-4.6": "4.5",
    "4.7-4.9": "4.8",
    "4.10-4.13": "4.12",
    "4.14-4.21": "4.19",
    "4.22": "4.22",
}

_COMMON_IMPL = """
xc_interface *xc_interface_open(xentoollog_logger *l, xentoollog_logger *d, unsigned f)
{ return (xc_interface *)calloc(1, 64); }
int xc_interface_close(xc_interface *xch) { free(xch); return 0; }
static xc_error last;
const xc_error *xc_get_last_error(xc_interface *h) { return &last; }
void xc_clear_last_error(xc_interface *h) { }
xentoollog_logger_stdiostream *xtl_createlogger_stdiostream(FILE *f, xentoollog_level l,
    unsigned fl) { return 0; }
void xtl_logger_destroy(struct xentoollog_logger *l) { }
"""
_FD_IMPL = """
int xc_interface_open(void) { return 3; }
int xc_interface_close(int h) { return 0; }
static xc_error last;
const xc_error *xc_get_last_error(void) { return &last; }
void xc_clear_last_error(void) { }
"""
#: The out-pointer parameters, filled with recognisable values.
OUT_PARAMS = ("store_mfn", "console_mfn", "vm_generationid_addr")


def feed(data: bytes) -> int:
    """A pipe's read end with ``data`` written from a thread (pipes, not files)."""
    r, w = os.pipe()

    def send() -> None:
        try:
            os.write(w, data)
        except BrokenPipeError:
            pass
        finally:
            os.close(w)

    threading.Thread(target=send, daemon=True).start()
    return r


def fake_source(gen: Generation) -> str:
    """C source of a stand-in libxenguest with ``gen``'s exact prototype and structs."""
    texts = gen.cdef_text()
    (decl,) = [d for t in texts for d in function_declarations(t) if "xc_domain_restore(" in d]
    body = [
        'FILE *f = fopen(getenv("FAKE_REPORT"), "w"); char buf[4096]; long n, total = 0;',
        "while ((n = read(io_fd, buf, sizeof buf)) > 0) total += n;",
        'fprintf(f, "bytes=%ld\\n", total);',
    ]
    for name in gen.params[1:]:
        if name in OUT_PARAMS:
            body.append(f"*{name} = 0x{OUT_PARAMS.index(name) + 1}0000UL + total;")
        elif name != "callbacks":
            body.append(f'fprintf(f, "{name}=%lld\\n", (long long){name});')
    if "toolstack_restore" in gen.callback_slots:
        guard = ' && !getenv("FAKE_CHECKPOINT")' if "checkpoint" in gen.callback_slots else ""
        body.append(
            f'if (callbacks->toolstack_restore{guard}) fprintf(f, "toolstack_restore=%d\\n",'
            ' callbacks->toolstack_restore(dom, (const uint8_t *)"hi\\0x", 4, callbacks->data));'
        )
    if "checkpoint" in gen.callback_slots:
        guard = ' && getenv("FAKE_CHECKPOINT")' if "toolstack_restore" in gen.callback_slots else ""
        body.append(
            f"if (callbacks->checkpoint{guard}) "
            'fprintf(f, "checkpoint=%d\\n", callbacks->checkpoint(callbacks->data));'
        )
    body += ["fclose(f);", "return 0;"]
    head = "#include <stdio.h>\n#include <stdint.h>\n#include <stdlib.h>\n#include <unistd.h>\n"
    impl = _FD_IMPL if gen.handle_is_fd else _COMMON_IMPL
    return head + "\n".join(texts) + impl + decl[:-1] + "\n{\n" + "\n".join(body) + "\n}\n"


def build_stand_in(gen: Generation, directory: Path, soname: str | None = None) -> Path:
    """Compile ``gen``'s stand-in into ``directory``; skips the test without a compiler."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("NO C COMPILER: cannot build stand-in libraries")
    soname = soname or f"libxenguest.so.{SONAME[gen.name]}"
    (directory / "fake.c").write_text(fake_source(gen))
    cmd = [cc, "-shared", "-fPIC", "-Wall", "-Werror", f"-Wl,-soname,{soname}"]
    subprocess.run([*cmd, "-o", str(directory / soname), str(directory / "fake.c")], check=True)
    return directory / soname


def read_report(path: Path) -> dict[str, int]:
    """The stand-in's ``name=value`` report."""
    return {k: int(v) for k, v in re.findall(r"^(\w+)=(-?\d+)$", path.read_text(), re.M)}
