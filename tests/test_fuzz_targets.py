"""Every fuzz target (``tests/fuzz/fuzz_*.py``, what ``make fuzz`` runs) over its seeds,
without atheris: no target rots, and each still reaches the code it fuzzes."""

from __future__ import annotations

import importlib

import pytest

from tests.fuzz import harness
from tests.helpers.paths import TESTS
from xlpy.errors import StreamMalformed, XlpyError

TARGETS = sorted(p.stem for p in (TESTS / "fuzz").glob("fuzz_*.py"))


def test_every_part_is_a_target() -> None:
    assert TARGETS == [
        "fuzz_convert",
        "fuzz_reader",
        "fuzz_receiver",
        "fuzz_receiver_v2",
        "fuzz_v2_reader",
        "fuzz_v2_verify",
        "fuzz_xenopsd",
    ]


@pytest.mark.parametrize("name", TARGETS)
def test_target_runs_its_seeds(name: str) -> None:
    target = importlib.import_module(f"tests.fuzz.{name}")
    seeds = target.seeds()
    assert seeds and all(seeds)
    body = target.one_input.__wrapped__  # the target under harness.stream_errors_allowed
    through = 0
    for seed in seeds:
        try:
            body(seed)  # anything but an XlpyError fails the test: a crash
        except XlpyError:
            continue
        through += 1
    assert through, "every seed fails with a stream error: the target fuzzes nothing"


def test_the_crash_rule() -> None:
    def body(data: bytes) -> None:
        if data == b"bad":
            raise StreamMalformed("a verdict")
        if data == b"bug":
            raise IndexError("a crash")

    one_input = harness.stream_errors_allowed(body)
    one_input(b"bad")
    with pytest.raises(IndexError):
        one_input(b"bug")
