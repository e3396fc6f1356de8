"""Every generation's declarations against abi.md §1-§2, computed by cffi (no compiler).

The expected values are typed in from the spec's tables, not derived from
``xlpy.binding.generations``, so a slip in either shows up here.
"""

from __future__ import annotations

import re

import pytest

from xlpy.binding.cdefcheck import function_declarations
from xlpy.binding.generations import BY_NAME, GENERATIONS, by_name
from xlpy.binding.loader import build_ffi

RC = "struct restore_callbacks"
_CB47 = {
    "suspend": 0,
    "postcopy": 8,
    "checkpoint": 16,
    "wait_checkpoint": 24,
    "restore_results": 32,
    "data": 40,
}
_CB414 = {
    "static_data_done": 0,
    "suspend": 8,
    "postcopy": 16,
    "checkpoint": 24,
    "wait_checkpoint": 32,
    "restore_results": 40,
    "data": 48,
}
#: abi.md §2 "struct restore_callbacks": size and LP64 offsets.
RESTORE_CALLBACKS = {
    "4.2-4.3.1": (16, {"toolstack_restore": 0, "data": 8}),
    "4.3.2-4.4": (16, {"toolstack_restore": 0, "data": 8}),
    "4.5-4.6": (16, {"toolstack_restore": 0, "checkpoint": 0, "data": 8}),
    "4.7-4.9": (48, _CB47),
    "4.10-4.13": (48, _CB47),
    "4.14-4.21": (56, _CB414),
    "4.22": (56, _CB414),
}
#: abi.md §1a: number of xc_domain_restore arguments and the 1-based position and C type
#: of the stream argument (None where there is none).
PROTOTYPES = {
    "4.0": (10, None, None),
    "4.1": (10, None, None),
    "4.2-4.3.1": (15, None, None),
    "4.3.2-4.4": (16, 14, "int checkpointed_stream"),
    "4.5-4.6": (14, 13, "int checkpointed_stream"),
    "4.7-4.9": (15, 13, "xc_migration_stream_t stream_type"),
    "4.10-4.13": (14, 12, "xc_migration_stream_t stream_type"),
    "4.14-4.21": (12, 10, "xc_stream_type_t stream_type"),
    "4.22": (13, 10, "xc_stream_type_t stream_type"),
}


def test_every_generation_is_tabled() -> None:
    assert set(PROTOTYPES) == set(BY_NAME)
    assert set(RESTORE_CALLBACKS) | {"4.0", "4.1"} == set(BY_NAME)


@pytest.mark.parametrize("name", list(RESTORE_CALLBACKS))
def test_restore_callbacks_layout(name: str) -> None:
    ffi = build_ffi(name)
    size, offsets = RESTORE_CALLBACKS[name]
    assert ffi.sizeof(RC) == size == by_name(name).callbacks_size
    assert {f: ffi.offsetof(RC, f) for f in offsets} == offsets
    slots = [n for n, _ in ffi.typeof(RC).fields if n != "data"]
    if name != "4.5-4.6":  # its slot 0 is a union of two names
        assert tuple(slots) == by_name(name).callback_slots


@pytest.mark.parametrize("name", ["4.0", "4.1"])
def test_no_restore_callbacks_before_4_2(name: str) -> None:
    with pytest.raises(ValueError, match="unknown size"):
        build_ffi(name).sizeof(RC)  # never declared: cffi sees only an opaque name
    assert by_name(name).callback_slots == ()


@pytest.mark.parametrize("name", list(PROTOTYPES))
def test_prototype_arity_and_stream_slot(name: str) -> None:
    gen = by_name(name)
    (decl,) = [
        d for t in gen.cdef_text() for d in function_declarations(t) if "xc_domain_restore(" in d
    ]
    args = [a.strip() for a in decl[decl.index("(") + 1 : decl.rindex(")")].split(",")]
    nargs, position, ctype = PROTOTYPES[name]
    assert len(args) == len(gen.params) == nargs
    assert [a.split()[-1].lstrip("*") for a in args] == list(gen.params)
    if position is None:
        assert gen.stream_param is None
    else:
        assert args[position - 1] == ctype
        assert gen.params.index(gen.stream_param or "") == position - 1


@pytest.mark.parametrize("name", [g.name for g in GENERATIONS if g.name not in ("4.0",)])
def test_stream_enum_values_and_sizes(name: str) -> None:
    ffi = build_ffi(name)
    for enum in ("xc_stream_type_t", "xc_migration_stream_t"):
        if enum not in ffi.list_types()[0]:
            continue
        ctype = ffi.typeof(enum)
        assert ffi.sizeof(ctype) == 4
        assert sorted(ctype.elements) == [0, 1, 2]
    assert ffi.sizeof("xc_error") == 1028


#: abi.md §1/§7: no domid arguments before 4.2, ``domid_t`` (16-bit) in 4.2-4.9,
#: ``uint32_t`` from 4.10 (5b42c82f55).  Every generation is listed (checked below).
DOMID_WIDTH: dict[str, int | None] = {
    "4.0": None,
    "4.1": None,
    "4.2-4.3.1": 2,
    "4.3.2-4.4": 2,
    "4.5-4.6": 2,
    "4.7-4.9": 2,
    "4.10-4.13": 4,
    "4.14-4.21": 4,
    "4.22": 4,
}


def test_domid_width_table_covers_every_generation() -> None:
    assert set(DOMID_WIDTH) == {g.name for g in GENERATIONS}


@pytest.mark.parametrize("name", list(DOMID_WIDTH))
def test_domid_width(name: str) -> None:
    gen = by_name(name)
    (decl,) = [
        d for t in gen.cdef_text() for d in function_declarations(t) if "xc_domain_restore(" in d
    ]
    ffi = build_ffi(name)
    width = DOMID_WIDTH[name]
    for param in ("store_domid", "console_domid"):
        m = re.search(rf"(\w+)\s+{param}\b", decl)
        if width is None:
            assert m is None and param not in gen.params, (name, param)
            continue
        assert m is not None, (name, param)
        # The declared type as cffi resolves it (a typedef drift changes this too).
        assert ffi.sizeof(m[1]) == width, (name, param, m[1])
        assert (param in gen.domid16) == (width == 2), (name, param)
