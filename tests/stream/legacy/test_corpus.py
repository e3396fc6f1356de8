"""The broken-stream corpus: every file in tests/streams/ fails exactly where expected.

``tests/streams/make_corpus.py`` holds the cases (and regenerates the files);
this checks that the committed files match it and that the reader, through
``inspect``, reports each failure's kind, offset and field.
"""

from __future__ import annotations

import io

import pytest

from tests.helpers.paths import TESTS
from tests.streams.make_corpus import Case, cases
from xlpy.errors import UsageError
from xlpy.stream.legacy.inspect import inspect_stream
from xlpy.stream.source import ByteSource

STREAMS = TESTS / "streams"
CASES = cases()


def test_corpus_files_are_current() -> None:
    on_disk = {p.stem for p in STREAMS.glob("*.bin")}
    assert on_disk == {c.name for c in CASES}, "run tests/streams/make_corpus.py"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_corpus_case(case: Case) -> None:
    data = (STREAMS / f"{case.name}.bin").read_bytes()
    assert data == case.data, "run tests/streams/make_corpus.py"
    assert len(data) < 20 * 1024
    src = ByteSource(io.BytesIO(data))
    if case.kind == "usage":
        with pytest.raises(UsageError, match="--guest"):
            inspect_stream(src, width=case.width, guest=case.guest)
        return
    summary = inspect_stream(src, width=case.width, guest=case.guest)
    err = summary.error
    assert err is not None, "the reader accepted a broken stream"
    assert (err.kind, err.offset, err.field) == (case.kind, case.offset, case.field)
    if case.value is not None:
        assert err.value == case.value
    assert err.record is not None
    assert not summary.complete
